"""The vLLM predictor replica (``engine: vllm``): vLLM's async engine behind the same endpoints as the HF replica.

There is no ``@serve.batch`` window here: every request goes straight into vLLM's running batch (continuous
batching), so a request that arrives mid-generation joins at the next decoding step instead of waiting for the
current batch to end. Label scores come from prompt log-probabilities (one short request per label continuation,
whose image and prompt come from the prefix cache) or are off (``label_scores: false``: null in the response).
vLLM is imported only when this replica starts; the rest of the app imports without it.

Example (``app.engine: vllm`` in serving/config.yaml, or)::

    ecgvlm serve --model random:../shared/models/SmolVLM-256M-Instruct --app.engine vllm
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid

from ray import serve

from serving.config import AppConfig

log = logging.getLogger("ray.serve")


def _page(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


@serve.deployment(name="Predictor")
class VLLMReplica:
    """One ``AsyncLLM`` per replica; ``diagnose`` and ``chat`` take one request each (vLLM batches them)."""

    def __init__(self, config: dict):
        from vlm.vllm_engine import END_OF_UTTERANCE, engine_args, require_vllm

        cfg = AppConfig.model_validate(config)
        vllm = require_vllm()  # ImportError that says how to install it
        from transformers import AutoProcessor

        opts = cfg.vllm
        args = engine_args(cfg.model, image_splitting=bool(cfg.image_splitting), dtype=cfg.dtype,
                           max_num_seqs=opts.max_num_seqs, max_model_len=opts.max_model_len, **opts.engine_kwargs)
        if cfg.longest_edge is not None:
            args["mm_processor_kwargs"]["size"] = {"longest_edge": int(cfg.longest_edge)}
        self._vllm = vllm
        self.processor = AutoProcessor.from_pretrained(args["model"])
        self.tokenizer = tok = self.processor.tokenizer
        self.engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**args))
        self.name = cfg.served_id()
        self.label_scores, self.max_positions = opts.label_scores, opts.max_model_len
        self.max_num_seqs = opts.max_num_seqs
        eou = tok.convert_tokens_to_ids(END_OF_UTTERANCE)
        self.stop_ids = sorted({i for i in (eou, tok.eos_token_id) if i is not None and i != tok.unk_token_id})
        self.scoring = "prompt log-probabilities" if self.label_scores else "off"
        log.info("ecgvlm vLLM predictor %s: continuous batching (max_num_seqs %d), label scores %s",
                 self.name, opts.max_num_seqs, self.scoring)

    def info(self) -> dict:
        return {"model": self.name, "engine": "vllm", "batching": "continuous", "label_scoring": self.scoring,
                "max_num_seqs": self.max_num_seqs}

    async def _generate(self, request: dict, params) -> object:
        final = None
        async for out in self.engine.generate(request, params, request_id=uuid.uuid4().hex):
            final = out
        return final

    def _encode(self, image: bytes, question: str, budget: int, history=None, system=None) -> tuple[dict, int]:
        from vlm.vllm_engine import build_request

        request = build_request(self.processor, _page(image), question, history, system=system)
        n = len(self.tokenizer(request["prompt"], add_special_tokens=False)["input_ids"])
        if n + budget > self.max_positions:
            raise ValueError(f"prompt too long: {n} text tokens + {budget} > {self.max_positions}")
        return request, n

    async def _answer(self, request: dict, budget: int) -> tuple[str, int, bool, int]:
        """(text, completion tokens, cut at the budget, prompt tokens with the image's)."""
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=budget, stop_token_ids=self.stop_ids,
                                           skip_special_tokens=True)
        out = await self._generate(request, params)
        gen = out.outputs[0]
        return gen.text.strip(), len(gen.token_ids), gen.finish_reason == "length", len(out.prompt_token_ids)

    async def _scores(self, request: dict, answer: str, labels: list[str]) -> dict:
        from vlm.predict import label_candidates, noisy_or
        from vlm.vllm_engine import continuation_request, tail_logprob

        cands = label_candidates([answer], labels, self._continuation)
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = await asyncio.gather(*(self._generate(continuation_request(request, self.tokenizer.decode(ids)),
                                                     params) for _, _, ids, _ in cands))
        logps = [tail_logprob(o.prompt_logprobs, o.prompt_token_ids, n) for o, (_, _, _, n) in zip(outs, cands)]
        return noisy_or(cands, logps, labels, 1)[0]

    def _continuation(self, prefix: str, label: str) -> tuple[list[int], int]:
        tok = self.tokenizer
        head = tok(" " + prefix, add_special_tokens=False)["input_ids"] if prefix else []
        full = tok(" " + (prefix + "; " if prefix else "") + label, add_special_tokens=False)["input_ids"]
        return (full, len(full)) if full[: len(head)] != head else (full, len(full) - len(head))

    async def diagnose(self, row: dict) -> dict:
        """A sample row (``id``, ``task``, ``image`` bytes, ``question``) -> a prediction-row dict, as the HF
        replica's (an ``error`` naming the record instead of raising)."""
        from ecgtasks import MULTILABEL, get_task

        start = time.perf_counter()
        out = {"id": row["id"], "task": row["task"], "model": self.name, "batch_size": 1, "prediction": "",
               "label_scores": None, "error": None, "prompt_tokens": None, "truncated": None,
               "label_scoring": self.scoring}
        try:
            task = get_task(row["task"])
            request, _ = self._encode(row["image"], row["question"], task.max_new_tokens)
        except Exception as err:  # noqa: BLE001 - reported to that client as a 4xx
            return {**out, "error": f"record {row['id']}: {err}"}
        answer, _, cut, prompt_tokens = await self._answer(request, task.max_new_tokens)
        out.update(prediction=answer, truncated=cut, prompt_tokens=prompt_tokens)
        if task.kind == MULTILABEL and task.labels and self.label_scores:
            scores = await self._scores(request, answer, list(task.labels))
            out["label_scores"] = json.dumps({k: round(v, 6) for k, v in scores.items()})
        out["latency_ms"] = (time.perf_counter() - start) * 1000.0
        return out

    async def chat(self, job: dict):
        """A chat job (serving/chat.py ``parse_chat``) -> its events (``{"delta"}`` ..., ``{"end"}``, or
        ``{"error"}``), from vLLM's async generator as it decodes; cancelling this generator (the client went
        away) aborts the request in vLLM."""
        from serving.chat import TextStream

        try:
            request, _ = self._encode(job["image"], job["question"], job["max_new_tokens"],
                                      job.get("history") or None, job.get("system"))
        except Exception as err:  # noqa: BLE001 - reported to that client as a 4xx
            yield {"error": str(err)}
            return
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"],
                                           stop_token_ids=self.stop_ids, skip_special_tokens=True)
        text, final = TextStream(), None
        async for out in self.engine.generate(request, params, request_id=uuid.uuid4().hex):
            final = out  # cumulative: the whole text so far
            if not out.finished:
                delta = text.update(out.outputs[0].text)
                if delta:
                    yield {"delta": delta}
        gen = final.outputs[0]
        end = {"text": gen.text.strip(), "finish_reason": "length" if gen.finish_reason == "length" else "stop",
               "prompt_tokens": len(final.prompt_token_ids), "completion_tokens": len(gen.token_ids)}
        last = text.finish(gen.text)
        yield {"delta": last, "end": end} if last else {"end": end}
