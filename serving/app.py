"""The Ray Serve application: a FastAPI ingress in front of batched predictor replicas.

``Ingress`` parses and validates uploads (serving/inputs.py, serving/chat.py), renders signals with the
batch job's renderer, and calls ``Predictor``, whose replicas hold one ``vlm.Predictor`` and run
``vlm.predict_rows``, the function the batch evaluation runs, on dynamic batches (``@serve.batch``).

Endpoints (all JSON; errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status):

- ``POST /v1/diagnose``: multipart form, one ECG image (PNG/JPEG) or signal file (CSV, .npy, WFDB .hea + .dat,
  CODE-15 HDF5 + ``index``), optional ``task``, ``question``, ``sampling_rate`` (Hz), ``leads`` (comma list).
- ``POST /v1/chat/completions``: the OpenAI chat-completions shape, the image as a ``data:`` URI.
- ``GET /healthz``, ``GET /v1/models``, ``GET /v1/tasks``.

Start: ``serve run serving/config.yaml`` or ``ecgvlm serve --model tiny --port 8000``; in Python::

    serve.run(build_app({"model": "tiny", "batching": {"enabled": False}}))
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in the signatures of the
# ingress methods (Serve rebuilds them, and string annotations then turn into query parameters).
import asyncio
import json
import logging
import time
import uuid
from functools import partial

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.answers import parse_labels
from serving.chat import completion, error_body, parse_chat
from serving.config import AppConfig
from serving.inputs import FIELDS, InputError, Limits, parse_upload

log = logging.getLogger("ray.serve")


@serve.deployment(name="Predictor")
class Predictor:
    """One model per replica; ``diagnose`` and ``chat`` collect concurrent requests into one model call."""

    def __init__(self, config: dict):
        import vlm

        cfg = AppConfig.model_validate(config)
        if cfg.predictor.torch_threads:
            import torch

            torch.set_num_threads(cfg.predictor.torch_threads)
        from vlm.cpu_engine import choose_engine, cpu_predictor

        engine, why = choose_engine(cfg.engine, model=cfg.model, device=cfg.device, num_gpus=cfg.predictor.num_gpus)
        log.info("ecgvlm predictor engine %s (%s)", engine, why)
        make = (partial(cpu_predictor, engine=engine, threads=cfg.predictor.torch_threads) if engine != "hf"
                else vlm.Predictor)  # fmt: skip
        self.predictor = make(cfg.model, adapter=cfg.adapter, device=cfg.device, dtype=cfg.dtype,
                              image_splitting=cfg.image_splitting, longest_edge=cfg.longest_edge)
        self.name, self.engine = cfg.model_id or self.predictor.name, engine
        log.info("ecgvlm predictor %s: %s", self.name, self.predictor.loaded.describe_images())
        self.batching = cfg.batching.effective()
        for method in (self.diagnose, self.chat):  # the decorator's sizes are placeholders; config decides
            method.set_max_batch_size(self.batching[0])
            method.set_batch_wait_timeout_s(self.batching[1])

    def info(self) -> dict:
        images = self.predictor.loaded
        return {"model": self.name, "engine": self.engine, "max_batch_size": self.batching[0],
                "batch_wait_timeout_s": self.batching[1],
                "images": {**images.images.to_dict(), "from": images.images_from}}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def diagnose(self, rows: list[dict]) -> list[dict]:
        """Sample rows (``id``, ``task``, ``image`` bytes, ``question``) -> prediction-row dicts."""
        # computed on the event loop, on purpose: in a thread, the model's Python-heavy loop holds the GIL and
        # the next requests trickle into the batch queue (measured: mean batch 2.5 of 16 waiting clients);
        # blocking here, they pile up in Ray's queue and all join the next batch at once
        return self._predict_rows(rows)

    def _predict_rows(self, rows: list[dict]) -> list[dict]:
        import pandas as pd
        import vlm

        frame = pd.DataFrame([{**row, "answer": ""} for row in rows])
        out = vlm.predict_rows(self.predictor, frame)
        out = out.assign(model=self.name, batch_size=len(rows))
        return out.to_dict("records")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def chat(self, requests: list[dict]) -> list[dict]:
        """``{"image", "question", "max_new_tokens"}`` -> ``{"content", "prompt_tokens", "completion_tokens"}``."""
        return self._chat(requests)  # on the event loop, as diagnose

    def _chat(self, requests: list[dict]) -> list[dict]:
        import io

        from PIL import Image

        budget = max(r["max_new_tokens"] for r in requests)  # one call; each answer is cut to its own budget
        out: list[dict] = [{} for _ in requests]
        good, encoded = [], []
        for i, r in enumerate(requests):  # a request that cannot be encoded fails alone, not its batch
            try:
                image = Image.open(io.BytesIO(r["image"])).convert("RGB")
                encoded.append(self.predictor.encode_one(image, r["question"], max_new_tokens=budget))
                good.append(i)
            except Exception as err:  # noqa: BLE001 - reported to that client as a 4xx
                out[i] = {"error": str(err)}
        answers = self.predictor.generate_encoded(encoded, max_new_tokens=budget)
        cut = list(getattr(self.predictor, "last_cut", None) or [None] * len(answers))  # no stop token generated
        tok = self.predictor.tokenizer
        for i, row, answer, ended in zip(good, encoded, answers, cut):
            ids = tok(answer, add_special_tokens=False)["input_ids"]
            if len(ids) > requests[i]["max_new_tokens"]:
                ids = ids[: requests[i]["max_new_tokens"]]
                answer = tok.decode(ids, skip_special_tokens=True).strip()
                ended = True
            out[i] = {"content": answer, "prompt_tokens": int(row["input_ids"].shape[1]),
                      "completion_tokens": len(ids), "truncated": ended}
        return out


api = FastAPI(title="ecgvlm", description="ECG diagnosis with a small vision-language model")


def _error(err: InputError) -> JSONResponse:
    return JSONResponse(error_body(str(err), status=err.status, field=err.field), status_code=err.status)


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    """A bug or a dead replica: still an OpenAI-shaped error body, and the replica keeps serving."""
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}", status=500), status_code=500)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) a declared or actual size over ``limit`` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InputError(f"upload of {declared} bytes is over the limit of {limit} bytes", status=413, field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked upload with no Content-Length: stop reading at the cap
            raise InputError(f"upload is over the limit of {limit} bytes", status=413, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, body: bytes, limits: Limits) -> tuple[list[tuple[str, bytes]], dict]:
    """(files, text fields) of a multipart body; a raw image/signal body with fields in the query also works."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):  # curl --data-binary @ecg.png
        query = dict(request.query_params)
        name = query.pop("filename", "")  # ?filename=ecg.csv names a raw upload; every other key is a form field
        return ([(name, body)] if body else []), query

    async def replay():  # the body is read already (with the cap): hand it to the multipart parser again
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_files, max_fields=len(FIELDS))
    except Exception as err:  # MultiPartException / HTTPException: a malformed or too-many-parts form
        raise InputError(f"malformed multipart form: {getattr(err, 'detail', err)}", status=400, field="body")
    files, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        else:
            files.append((value.filename or key, await value.read()))
    return files, fields


def _float(value) -> float | None:
    return None if value is None or value != value else round(float(value), 2)  # NaN -> None


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, predictor: DeploymentHandle, config: dict):
        self.cfg = AppConfig.model_validate(config)
        self.predictor = predictor
        self.started = int(time.time())
        self._model: str | None = self.cfg.model_id

    async def model_id(self) -> str:
        if self._model is None:
            self._model = (await self.predictor.info.remote())["model"]
        return self._model

    @api.get("/healthz")
    async def healthz(self):
        """200 with the model id once a predictor replica answers; 503 otherwise."""
        try:
            info = await asyncio.wait_for(self.predictor.info.remote(), timeout=10)
        except Exception as err:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse(error_body(f"predictor unavailable: {err}", status=503), status_code=503)
        return {"status": "ok", **info}

    @api.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": await self.model_id(), "object": "model",
                                            "created": self.started, "owned_by": "ecgvlm"}]}

    @api.get("/v1/tasks")
    async def tasks(self):
        from ecgtasks import all_tasks

        data = [{"name": t.name, "kind": t.kind, "labels": list(t.labels), "aliases": list(t.aliases),
                 "question": t.question, "max_new_tokens": t.max_new_tokens, "version": t.version}
                for t in all_tasks()]
        return {"object": "list", "default": self.cfg.default_task, "data": data}

    @api.post("/v1/diagnose")
    async def diagnose(self, request: Request):
        """Multipart upload -> ``{answer, labels, label_scores, model, task, input, latency_ms, ...}``."""
        start = time.perf_counter()
        limits = self.cfg.limits
        try:
            body = await read_capped(request, limits.max_upload_bytes)
            files, fields = await read_form(request, body, limits)
            upload = await asyncio.to_thread(parse_upload, files, fields, limits,
                                             default_task=self.cfg.default_task)
        except InputError as err:
            return _error(err)
        row = {"id": f"req-{uuid.uuid4().hex[:12]}", "task": upload.task, "image": upload.image,
               "question": upload.question}
        out = await self.predictor.diagnose.remote(row)
        if out.get("error"):
            return _error(InputError(f"the model could not read this input: {out['error']}", status=422,
                                     field="file"))
        scores = out.get("label_scores")
        return {
            "id": row["id"], "model": out["model"], "task": upload.task, "answer": out["prediction"],
            "labels": parse_labels(upload.task, upload.question, out["prediction"]),
            "label_scores": json.loads(scores) if isinstance(scores, str) else scores,
            "input": {"kind": upload.kind, **upload.meta},
            "batch_size": int(out.get("batch_size", 1)),
            "label_scoring": out.get("label_scoring", "label probabilities" if scores is not None else "off"),
            "prompt_tokens": int(out["prompt_tokens"]) if out.get("prompt_tokens") is not None else None,
            "model_latency_ms": _float(out.get("latency_ms")),
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        """The OpenAI chat-completions request -> a ``chat.completion`` object (see serving/chat.py)."""
        from ecgtasks import get_task

        limits, task = self.cfg.limits, get_task(self.cfg.default_task)
        try:
            body = await read_capped(request, limits.max_upload_bytes)
            try:
                payload = json.loads(body or b"null")
            except ValueError as err:
                raise InputError(f"body is not JSON: {err}", status=400, field="body") from None
            if not isinstance(payload, dict):
                raise InputError("body must be a JSON object (an OpenAI chat request)", status=400, field="body")
            served = await self.model_id()
            req = await asyncio.to_thread(parse_chat, payload, limits, served=served,
                                          default_question=task.question, default_tokens=task.max_new_tokens)
        except InputError as err:
            return _error(err)
        out = await self.predictor.chat.remote(req)
        if out.get("error"):
            return _error(InputError(f"the model could not read this request: {out['error']}", status=400,
                                     field="messages"))
        return completion(out["content"], model=served, prompt_tokens=out["prompt_tokens"],
                          completion_tokens=out["completion_tokens"], max_new_tokens=req["max_new_tokens"],
                          truncated=out.get("truncated"))


def build_app(args: dict | AppConfig | None = None):
    """The application ``serve run serving/config.yaml`` (and ``ecgvlm serve``) deploys, from its ``args``."""
    cfg = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    scale = cfg.predictor
    if cfg.engine == "vllm":  # vLLM is imported in the replica only: this module imports without it
        from serving.vllm_replica import VLLMReplica

        deployment, ongoing = VLLMReplica, max(scale.max_ongoing_requests, cfg.vllm.max_num_seqs)
    else:
        deployment, ongoing = Predictor, max(scale.max_ongoing_requests, cfg.batching.max_batch_size)
    predictor = deployment.options(
        ray_actor_options={"num_cpus": scale.num_cpus, "num_gpus": scale.num_gpus},
        autoscaling_config=scale.autoscaling(),
        max_ongoing_requests=ongoing,
    ).bind(cfg.model_dump())
    return Ingress.options(
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    ).bind(predictor, cfg.model_dump())
