"""Any OpenAI-compatible chat-completions endpoint as a model: the batch stage that ``ecgvlm evaluate --model
openai:NAME --api-base URL`` maps over sample rows (OpenAI, Gemini's and Anthropic's compatible endpoints, vLLM or
SGLang serving an open model, or ``ecgvlm serve``). No Ray here: Ray Data builds one :class:`EndpointStage` per
actor and calls it on pandas batches.

Each row becomes one request: the question without its ``<image>`` placeholder, and the page as a ``data:`` URL
(PNG or JPEG bytes as stored, ``"detail": "low"`` by default, as PULSE's GPT-4o harness sends it), greedy
(temperature 0), ``max_tokens`` = the task's budget. Requests go out on ``concurrency`` threads under
requests/min and tokens/min limits; 429, 5xx, timeouts, connection errors, malformed JSON and an empty choice
list are retried with exponential backoff (a ``Retry-After`` / ``retry-after-ms`` header is honoured and pauses
every thread); a record that still fails becomes one error row naming the cause. Every answer is cached on the
object store under a key of (endpoint, model, messages with the image's SHA-256, decoding settings), so a rerun
or a resume sends no request already answered.

Example::

    stage = EndpointStage({"model": "gpt-4o", "api_base": "https://api.openai.com/v1", "cache": "s3://b/cache"},
                          api_key=os.environ["OPENAI_API_KEY"], budgets={"code15": 1024})
    rows = stage(samples_df)      # PREDICTION_COLUMNS + requests, retries, cache_hit, sent_prompt_tokens, ...
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecg.rows import USAGE_COLUMNS
from vlm.throttle import RateLimiter, ResponseCache, cache_key, retry_after_s  # noqa: F401 - part of this API

PREFIX = "openai:"
IMAGE_TOKENS_LOW = 85  # OpenAI's count for a "detail": "low" image: the tokens/min estimate before a request
RETRIABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointSettings(BaseModel):
    """How to talk to an OpenAI-compatible endpoint: the settings ``ecgvlm evaluate --model openai:NAME`` shows as
    flat flags (``--concurrency 16``) and :class:`EndpointConfig` holds; one definition for both."""

    model_config = ConfigDict(extra="forbid")

    cache: str | None = Field(None, description="openai:NAME: response cache folder or s3:// URI (evaluate: default "
                                                "<out>/cache)")
    concurrency: int = Field(8, ge=1, description="openai:NAME: requests in flight at once")
    requests_per_min: float | None = Field(None, gt=0, description="openai:NAME: request limit, requests/min")
    tokens_per_min: float | None = Field(None, gt=0, description="openai:NAME: token limit (prompt + max_tokens), "
                                                                 "tokens/min")
    retries: int = Field(4, ge=0, description="openai:NAME: retries per record (429/5xx/timeouts/bad replies)")
    timeout_s: float = Field(120.0, gt=0, description="openai:NAME: timeout of one request, s")
    backoff_s: float = Field(1.0, ge=0, description="openai:NAME: first retry wait without Retry-After, s (doubles, "
                                                    "+-25% jitter)")
    image_detail: str | None = Field("low", description="openai:NAME: image_url detail: low (as PULSE sends GPT-4o), "
                                                         "high, auto, or None (omitted)")


class EndpointConfig(EndpointSettings):
    """One OpenAI-compatible endpoint (its model name and URL; no cache when ``cache`` is None), how to talk to it."""

    model: str = Field(..., description="model name at the endpoint (NAME of --model openai:NAME)")
    api_base: str = Field(..., description="base URL of the chat-completions API, e.g. http://127.0.0.1:8000/v1")
    max_backoff_s: float = Field(60.0, ge=0, description="longest wait between retries without Retry-After, s")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: greedy, as ECGBench)")


def endpoint_name(model: str) -> str | None:
    """``"openai:gpt-4o"`` -> ``"gpt-4o"``; None for any other model spec (an in-process model)."""
    return model[len(PREFIX):] if model.startswith(PREFIX) else None


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    raise ValueError("image is neither PNG nor JPEG")


def build_messages(question: str, image: bytes, *, detail: str | None, history=None) -> tuple[list[dict], list[dict]]:
    """(messages to send, the same with the image replaced by its SHA-256: the cache key's form). The turns are
    the in-process model's (``vlm.prompt.chat_messages``: earlier turns of a multi-turn record from ``history``,
    the image first in the first user turn, no ``<image>`` placeholder)."""
    from vlm.prompt import chat_messages

    url = f"data:{_mime(image)};base64," + base64.b64encode(image).decode()
    part = {"url": url, **({"detail": detail} if detail else {})}
    keyed = {"sha256": hashlib.sha256(image).hexdigest(), **({"detail": detail} if detail else {})}
    turns = chat_messages(question or "", history)

    def with_image(img: dict) -> list[dict]:
        return [{"role": m["role"], "content": [{"type": "image_url", "image_url": img} if p["type"] == "image"
                                                else p for p in m["content"]]} for m in turns]

    return with_image(part), with_image(keyed)


class Failure(Exception):
    """A failed attempt: ``cause`` for the error row, ``retriable``, and the server's ``wait`` if it gave one."""

    def __init__(self, cause: str, *, retriable: bool, wait: float | None = None):
        super().__init__(cause)
        self.cause, self.retriable, self.wait = cause, retriable, wait


def classify(err: Exception) -> Failure:
    """An exception of the ``openai`` client (or of reading its answer) as a :class:`Failure`."""
    import openai

    if isinstance(err, Failure):
        return err
    if isinstance(err, openai.APITimeoutError):
        return Failure("timeout", retriable=True)
    if isinstance(err, openai.APIConnectionError):
        return Failure(f"connection error: {err}", retriable=True)
    if isinstance(err, openai.APIStatusError):
        message = getattr(err, "message", str(err))
        return Failure(f"HTTP {err.status_code}: {message}"[:300], retriable=err.status_code in RETRIABLE_STATUS,
                       wait=retry_after_s(err.response.headers))
    if isinstance(err, (ValueError, openai.APIResponseValidationError)):  # JSONDecodeError is a ValueError
        return Failure(f"malformed response: {err}"[:300], retriable=True)
    return Failure(f"{type(err).__name__}: {err}"[:300], retriable=False)


def estimate_tokens(messages: list[dict]) -> int:
    """Prompt tokens of ``messages`` before sending, for the tokens/min limit: 4 characters a token, 85 an image."""
    n = 0
    for m in messages:
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"] or []
        n += sum(len(p.get("text", "")) // 4 + 1 if p["type"] == "text" else IMAGE_TOKENS_LOW for p in parts)
    return n


class ChatClient:
    """The requests side shared by the endpoint stage and the judge: an ``openai`` client with no retries of its
    own, our retries and limits (see the module docstring), and the response cache.

    :meth:`answer` fills the counts of ``out`` (``requests``, ``retries``, ``cache_hit``, tokens) and returns the
    answer record ``{"content", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", ...}``, or None
    with ``out["error"]`` naming the record, the endpoint and the cause.
    """

    def __init__(self, config: dict | EndpointConfig, *, api_key: str, sleep=time.sleep):
        try:
            import openai
        except ImportError:
            raise ImportError("--model openai:NAME needs the openai client: pip install 'ecgvlm[endpoints]'") from None

        self.cfg = config if isinstance(config, EndpointConfig) else EndpointConfig.model_validate(config)
        # our own retries (counted, Retry-After honoured without the client's 60 s cap), so the client makes none
        self.client = openai.OpenAI(base_url=self.cfg.api_base, api_key=api_key or "unused", max_retries=0,
                                    timeout=self.cfg.timeout_s)
        self.cache = ResponseCache(self.cfg.cache)
        self.limiter = RateLimiter(self.cfg.requests_per_min, self.cfg.tokens_per_min, sleep=sleep)
        self.sleep = sleep

    def answer(self, rid: str, messages: list, keyed: list, decoding: dict, out: dict) -> dict | None:
        """The cached answer to ``messages`` (``keyed``: their cache-key form), else a fresh one, cached."""
        key = cache_key(self.cfg.api_base, self.cfg.model, keyed, decoding)
        hit = self.cache.get(key)
        if hit is not None:
            out["cache_hit"] = True
            return hit
        record = self._ask(rid, messages, decoding, out)
        if record is not None:
            self.cache.put(key, record)
        return record

    def _ask(self, rid: str, messages: list, decoding: dict, out: dict) -> dict | None:
        """Send with retries; the answer record, or None with ``out["error"]`` set."""
        estimate = estimate_tokens(messages) + decoding["max_tokens"]
        start = time.perf_counter()
        for attempt in range(self.cfg.retries + 1):
            self.limiter.acquire(estimate)
            out["requests"] += 1
            try:
                record = self._send(messages, decoding)
                used = record["prompt_tokens"] + record["completion_tokens"]
                self.limiter.settle(estimate, used or estimate)
                out["sent_prompt_tokens"] += record["prompt_tokens"]
                out["sent_completion_tokens"] += record["completion_tokens"]
                record["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 2)
                return record
            except Exception as err:  # noqa: BLE001 - every failure is classified, retried or reported
                failure = classify(err)
            if not failure.retriable or attempt == self.cfg.retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                out["error"] = f"record {rid}: endpoint {self.cfg.api_base} failed after {tries}: {failure.cause}"
                out["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 2)
                return None
            out["retries"] += 1
            if failure.wait is not None:
                self.limiter.pause(failure.wait)  # every thread waits: the server asked for it
                self.sleep(failure.wait)
            else:
                backoff = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2**attempt)
                self.sleep(backoff * random.uniform(0.75, 1.25))
        return None  # not reached

    def _send(self, messages: list, decoding: dict) -> dict:
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.cfg.model, messages=messages, **decoding)
        reply = raw.parse()  # raises ValueError on a body that is not JSON
        if not reply.choices:
            raise Failure("empty choice list", retriable=True)
        choice = reply.choices[0]
        content = choice.message.content if choice.message is not None else None
        if content is None:
            raise Failure("choice without message content", retriable=True)
        usage = reply.usage
        return {"content": content.strip(), "finish_reason": choice.finish_reason,
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
                "model": reply.model, "created": int(time.time())}


class EndpointStage:
    """Sample rows (``id``, ``task``, ``image``, ``question``, ``answer``) -> prediction rows, one request per row.

    Writes the ecg/rows.py PREDICTION_COLUMNS (``label_scores`` null: an endpoint gives text only; ``truncated``
    true where ``finish_reason`` is ``length``) plus per-row counts the driver sums for ``run.json``:
    ``requests`` (sent this run), ``retries``, ``cache_hit``, ``sent_prompt_tokens`` and ``sent_completion_tokens``
    (of requests sent this run; 0 on a cache hit). ``prompt_tokens`` is the answer's own prompt size as the
    endpoint counted it (cached answers keep theirs; null if the endpoint gives no usage). ``budgets``: max_tokens per task name (default: the task's own).
    """

    def __init__(self, config: dict | EndpointConfig, *, api_key: str, budgets: dict[str, int] | None = None,
                 sleep=time.sleep):
        self.chat = ChatClient(config, api_key=api_key, sleep=sleep)
        self.cfg = self.chat.cfg
        self.budgets = dict(budgets or {})
        self.name = PREFIX + self.cfg.model
        self.pool = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="endpoint")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ecg.rows import PREDICTION_COLUMNS, require_columns

        require_columns(batch.columns, ("id", "task", "image", "question", "answer"), "endpoint stage")
        columns = ["id", "task", "image", "question", "answer"] + (["meta"] if "meta" in batch.columns else [])
        rows = batch[columns].to_dict("records")
        out = list(self.pool.map(self.one, rows))
        return pd.DataFrame(out, columns=list(PREDICTION_COLUMNS) + list(USAGE_COLUMNS))

    def budget(self, task: str) -> int:
        if task in self.budgets:
            return int(self.budgets[task])
        from metrics.tasks import get_task

        return get_task(task).max_new_tokens

    def one(self, row: dict) -> dict:
        """One sample row -> one prediction row (never raises: a failure is the row's ``error``)."""
        rid = str(row["id"])
        out = {"id": rid, "task": row["task"], "question": row["question"], "answer": row["answer"],
               "prediction": "", "label_scores": None, "model": self.name, "error": None, "latency_ms": 0.0,
               "prompt_tokens": None, "truncated": None, "requests": 0, "retries": 0, "cache_hit": False,
               "sent_prompt_tokens": 0, "sent_completion_tokens": 0}
        try:
            if not row["image"]:
                raise Failure("empty image", retriable=False)
            budget = self.budget(str(row["task"]))
            from vlm.prompt import row_history

            messages, keyed = build_messages(row["question"], row["image"], detail=self.cfg.image_detail,
                                             history=row_history(row.get("meta")))
        except (Failure, KeyError, ValueError) as err:
            out["error"] = f"record {rid}: {err.args[0] if err.args else err}"
            return out
        decoding = {"max_tokens": budget, "temperature": self.cfg.temperature}
        hit = self.chat.answer(rid, messages, keyed, decoding, out)
        if hit is None:
            return out
        out.update(prediction=hit["content"], truncated=hit["finish_reason"] == "length",
                   latency_ms=hit["latency_ms"], prompt_tokens=hit.get("prompt_tokens") or None)
        return out


def judge_rows(frame: pd.DataFrame, config: dict | EndpointConfig, *, api_key: str, task: str = "ptbxl-report",
               max_tokens: int | None = None, sleep=time.sleep) -> pd.DataFrame:
    """Scores of an LLM judge (metrics/judge.py: the rubric of ``task``, ``ptbxl-report`` or ``arena``) for rows
    with ``id``, ``question``, ``answer`` (the reference) and ``prediction`` (arena turn rows also ``meta``): one
    row per judged record (a report; an arena dialogue) with the rubric's criteria (0-10), ``score`` (0-100),
    ``error``, ``requests``, ``cache_hit``. Temperature 0 and a JSON response format; every reply is cached, so a
    rerun judges only the records not yet judged. A record with nothing to judge (errored or empty predictions) is
    not sent: it scores 0 on every criterion. A reply that is not the rubric's JSON is the record's ``error``.
    """
    from metrics import judge

    rubric = judge.rubric(task)
    chat = ChatClient(config, api_key=api_key, sleep=sleep)
    decoding = {"max_tokens": max_tokens or rubric.max_tokens, "temperature": 0.0,
                "response_format": {"type": "json_object"}}

    def one(item: judge.Item) -> dict:
        out = {"id": item.id, "error": None, "requests": 0, "retries": 0, "cache_hit": False,
               "sent_prompt_tokens": 0, "sent_completion_tokens": 0, **{c: 0.0 for c in rubric.criteria},
               "score": 0.0, **item.extra}
        if item.messages is None:
            return out  # nothing to judge: every criterion 0
        reply = chat.answer(item.id, item.messages, item.messages, decoding, out)
        if reply is None:
            return out  # out["error"] names the cause
        try:
            scores = rubric.parse(reply["content"])
        except ValueError as err:
            out["error"] = f"record {item.id}: {err}"
            return out
        out.update(scores, score=rubric.score(scores))
        return out

    items = rubric.items(frame.to_dict("records"))
    with ThreadPoolExecutor(chat.cfg.concurrency, thread_name_prefix="judge") as pool:
        return pd.DataFrame(list(pool.map(one, items)))
