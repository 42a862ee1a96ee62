"""The Hugging Face predictor replica (``engine: hf``): one ``vlm.Predictor`` per replica, requests batched.

``diagnose`` runs ``vlm.predict_rows``, the function the batch evaluation runs, on dynamic batches
(``@serve.batch``). ``chat`` is a generator of events, one decoding step at a time, through the model's own
greedy loop (``vlm.Predictor.stream_encoded``); concurrent chats share one batched loop, and a client that goes
away ends its row at the next step. Streamed and non-streamed chats both read it (serving/chat.py).

Events: ``{"delta": "text"}`` as tokens arrive, then ``{"end": {"text", "finish_reason", "prompt_tokens",
"completion_tokens"}}``; or ``{"error": message}`` for a request the model cannot read.
"""

from __future__ import annotations

import asyncio
import io
import logging
from functools import partial

from ray import serve

from serving import metrics
from serving.chat import TextStream
from serving.config import AppConfig

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
        self.name, self.engine = cfg.served_id(self.predictor.name), engine
        log.info("ecgvlm predictor %s: %s", self.name, self.predictor.loaded.describe_images())
        self.batching = cfg.batching.effective()
        for method in (self.diagnose, self._chat_steps):  # the decorator's sizes are placeholders; config decides
            method.set_max_batch_size(self.batching[0])
            method.set_batch_wait_timeout_s(self.batching[1])
        self.metrics = metrics.ReplicaMetrics()

    def info(self) -> dict:
        images = self.predictor.loaded
        return {"model": self.name, "engine": self.engine, "max_batch_size": self.batching[0],
                "batch_wait_timeout_s": self.batching[1],
                "images": {**images.images.to_dict(), "from": images.images_from}}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def diagnose(self, rows: list[dict]) -> list[dict]:
        """Sample rows (``id``, ``task``, ``image`` bytes, ``question``, optional ``meta``) -> prediction rows."""
        # computed on the event loop, on purpose: in a thread, the model's Python-heavy loop holds the GIL and
        # the next requests trickle into the batch queue (measured: mean batch 2.5 of 16 waiting clients);
        # blocking here, they pile up in Ray's queue and all join the next batch at once
        self.metrics.queued([r.pop("received", None) for r in rows], "diagnose")
        return self._predict_rows(rows)

    def _predict_rows(self, rows: list[dict]) -> list[dict]:
        import pandas as pd
        import vlm

        frame = pd.DataFrame([{**row, "answer": ""} for row in rows])
        out = vlm.predict_rows(self.predictor, frame)
        out = out.assign(model=self.name, batch_size=len(rows))
        return out.to_dict("records")

    async def chat(self, job: dict):
        """A chat job (serving/chat.py ``parse_chat``) -> its events, as the model produces them."""
        state = {"gone": False}
        try:
            async for event in self._chat_steps({**job, "state": state}):
                if event is not None:
                    yield event
        finally:  # normal end, or the caller was cancelled (the client disconnected): its row stops
            state["gone"] = True

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _chat_steps(self, jobs: list[dict]):
        """Concurrent chat jobs in one greedy loop: per step, one event (or None: nothing new) per job."""
        self.metrics.queued([job.get("received") for job in jobs])
        events, good, encoded = [None] * len(jobs), [], []
        for i, job in enumerate(jobs):  # a job that cannot be encoded fails alone, not its batch
            try:
                encoded.append(self._encode(job))
                good.append(i)
            except Exception as err:  # noqa: BLE001 - reported to that client as a 4xx
                events[i] = {"error": str(err)}
        yield events
        if not good:
            return
        state = [jobs[i]["state"] for i in good]
        texts, ids = [TextStream() for _ in good], [[] for _ in good]
        steps = self.predictor.stream_encoded(encoded, budgets=[jobs[i]["max_new_tokens"] for i in good],
                                              stopped=lambda r: state[r]["gone"])
        done = [False] * len(jobs)
        for i in set(range(len(jobs))) - set(good):
            done[i] = True
        for step in steps:
            events = [StopIteration if d else None for d in done]
            for r, entry in enumerate(step):
                if entry is None:
                    continue
                i, (token, finish) = good[r], entry
                if token is not None:
                    ids[r].append(token)
                text = self.predictor.tokenizer.decode(ids[r], skip_special_tokens=True)
                if finish is None:
                    delta = texts[r].update(text)
                    events[i] = {"delta": delta} if delta else None
                    continue
                done[i] = True
                self.metrics.generated(len(ids[r]))
                last = texts[r].finish(text)
                end = {"text": text.strip(), "finish_reason": "length" if finish == "length" else "stop",
                       "prompt_tokens": self.predictor.prompt_tokens(encoded[r]), "completion_tokens": len(ids[r])}
                events[i] = {"delta": last, "end": end} if last else {"end": end}
                if finish == "cancelled":
                    log.info("chat %s: client went away after %d tokens; its generation stopped",
                             jobs[i].get("request_id", "?"), len(ids[r]))
            yield events
            await asyncio.sleep(0)  # let cancellations and the chunks already yielded go out between steps

    def _encode(self, job: dict) -> dict:
        from PIL import Image

        image = Image.open(io.BytesIO(job["image"])).convert("RGB")
        return self.predictor.encode_one(image, job["question"], max_new_tokens=job["max_new_tokens"],
                                         history=job.get("history") or None, system=job.get("system"))

