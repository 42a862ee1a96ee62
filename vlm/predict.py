"""Batched greedy generation and label scoring: the one model interface of evaluation, validation and serving.

Example::

    from vlm import Predictor
    p = Predictor("tiny")
    p.generate([page], ["<image>\\nWhich rhythm?"], max_new_tokens=8)          # ['SB']
    p.score_labels([page], [question], ["SB", "ST", "NORM"])                    # [{'SB': 0.91, 'ST': 0.04, ...}]
"""

from __future__ import annotations

import math

import torch

from vlm import engine
from vlm.load import Loaded, load
from vlm.families import family_of, family_of_processor
from vlm.prompt import chat_prompt, encode


def label_candidates(answers: list[str], labels: list[str], continuation) -> list[tuple[int, str, list[int], int]]:
    """The continuations that :meth:`Predictor.score_labels` scores: ``(row, label, ids, scored tokens)`` for every
    row, slot (after "Assistant:", then after each label the answer said, in order) and label.
    ``continuation(prefix, label) -> (ids, n)`` tokenizes one. Example: answers ``["SB"]``, labels ``["SB", "ST"]``
    -> rows 0 and slots " SB", " ST", " SB; SB", " SB; ST"."""
    first = {lab: continuation("", lab) for lab in labels}
    cands = []
    for i, answer in enumerate(answers):
        said = [p.strip() for p in answer.split(";") if p.strip() in first]
        for j in range(len(said) + 1):
            prefix = "; ".join(said[:j])
            for lab in labels:
                ids, n = continuation(prefix, lab) if j else first[lab]
                cands.append((i, lab, ids, n))
    return cands


def noisy_or(cands, logps: list[float], labels: list[str], rows: int) -> list[dict]:
    """P(L) = 1 - prod over slots (1 - p_slot(L)) per row, from :func:`label_candidates` and their log-probs."""
    miss = [{lab: 1.0 for lab in labels} for _ in range(rows)]  # prod_j (1 - p_j(L))
    for (i, lab, _, _), lp in zip(cands, logps):
        miss[i][lab] *= 1.0 - math.exp(lp)
    return [{lab: float(min(1.0, max(0.0, 1.0 - m[lab]))) for lab in labels} for m in miss]


class Predictor:
    """A loaded model plus its prompt format; images are PIL pages, questions in ECGBench form.

    ``model``/``adapter``/``device``/``dtype``/``image_splitting``/``longest_edge``: as :func:`vlm.load` (None:
    the image settings the model was trained with, from its export, else its processor's own; a SmolVLM page is
    1,139 prompt tokens with splitting, 79 without). ``max_prompt_tokens``: rows
    with a longer prompt fail (default: the model's positions minus the answer budget). ``score_batch``:
    sequences per forward pass in label scoring. ``vision_batch``: image tiles per vision-tower call (all tiles
    of a batch go through together, this many at a time). ``label_scores``: whether predict_rows scores labels.
    """

    def __init__(
        self,
        model: str,
        *,
        adapter: str | None = None,
        device="auto",
        dtype="auto",
        image_splitting: bool | None = None,
        longest_edge: int | None = None,
        max_prompt_tokens: int | None = None,
        score_batch: int = 32,
        label_scores: bool = True,
        vision_batch: int = 32,
    ):
        loaded = load(
            model, adapter=adapter, device=device, dtype=dtype, image_splitting=image_splitting,
            longest_edge=longest_edge,
        )  # fmt: skip
        self._init(loaded, max_prompt_tokens=max_prompt_tokens, score_batch=score_batch, vision_batch=vision_batch)
        self.label_scores = label_scores and self.family.label_scoring

    @classmethod
    def from_loaded(cls, loaded: Loaded, *, max_prompt_tokens: int | None = None, score_batch: int = 32,
                    vision_batch: int = 32):  # fmt: skip
        """Wrap a model already in memory (training's validation uses the model it is training)."""
        self = cls.__new__(cls)
        self._init(loaded, max_prompt_tokens=max_prompt_tokens, score_batch=score_batch, vision_batch=vision_batch)
        return self

    def _init(self, loaded: Loaded, *, max_prompt_tokens, score_batch, vision_batch=32) -> None:
        self.loaded = loaded
        # predict_rows adds label_scores for multi-label tasks; scoring costs about (labels x (answer labels + 1))
        # short continuations per row on the prompt's cache (no second vision or prompt pass)
        self.vision_batch = vision_batch
        self.name = loaded.name if not loaded.adapter else f"{loaded.name}+{loaded.adapter}"
        tok = loaded.processor.tokenizer
        self.tokenizer = tok
        config = getattr(loaded.model, "config", None)
        text_config = getattr(config, "text_config", config)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.max_prompt_tokens = max_prompt_tokens
        self.score_batch = score_batch  # sequences per forward pass in score_labels
        # the model family's prompt format: its end-of-turn tokens, what precedes an answer (vlm/families/)
        self.family = family_of(loaded.model) if loaded.model is not None else family_of_processor(loaded.processor)
        self.stop_ids = self.family.stop_ids(tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        self.label_scores = self.family.label_scoring
        if not self.family.label_scoring:
            import sys

            print(f"{self.name}: label scoring is not supported for {self.family.title} models; label_scores stay "
                  "null and answers are scored from their text", file=sys.stderr, flush=True)  # fmt: skip

    # ---- encoding, one row at a time so a bad row fails alone -------------------------------------------
    def encode_one(self, image, question: str, *, max_new_tokens: int = 0, history=None,
                   system: str | None = None) -> dict:
        """Processor output for one row (tensors with a batch dim of 1); ValueError if the prompt is too long.
        ``history``: earlier turns of a multi-turn record, ``system``: a system message (``vlm.prompt.chat_messages``)."""
        page = self.loaded.prepare_image(image)
        text = chat_prompt(self.loaded.processor, question, history, system)
        batch = encode(self.loaded.processor, [page], [text])
        n = batch["input_ids"].shape[1]
        limit = self.max_prompt_tokens or self.max_positions - max_new_tokens
        if n > limit:
            raise ValueError(f"prompt too long: {n} tokens > limit {limit} (max positions {self.max_positions})")
        return dict(batch)

    @staticmethod
    def prompt_tokens(encoded: dict) -> int:
        """Prompt tokens of a row from :meth:`encode_one`, image tokens included."""
        return int(encoded["input_ids"].shape[1])

    # ---- generation and label scoring: one vision pass per image, one prompt pass per row ---------------
    @torch.inference_mode()
    def run_encoded(self, rows: list[dict], *, max_new_tokens: int, labels: list[str] | None = None,
                    answers: list[str] | None = None, min_new_tokens: int = 0,
                    timings: dict | None = None) -> tuple[list[str], list[dict] | None]:  # fmt: skip
        """Greedy answers (unless ``answers`` are given) and, with ``labels``, label probabilities, for rows
        from :meth:`encode_one`, in one batch: the vision tower runs once per image and the prompt once per
        row, shared by generation and every scored continuation (see :meth:`score_labels`).

        ``timings``: a dict to which the seconds of each stage are added (``vision``, ``prefill``, ``decode``,
        ``labels``); ``min_new_tokens``: no stop before that many tokens (fixed-length benchmarks).
        """
        if not rows:
            return [], ([] if labels is not None else None)
        model, dev, image_token = self.loaded.model, self.loaded.device, self.loaded.processor.image_token_id
        with engine.timed(timings, "vision", dev):
            features = engine.image_features(model, rows, tiles_per_call=self.vision_batch)
        with engine.timed(timings, "prefill", dev):
            prompt = engine.prefill(model, rows, features, image_token_id=image_token, pad_id=self.pad_id)
        if answers is None:
            with engine.timed(timings, "decode", dev):
                tokens = engine.greedy(model, prompt, max_new_tokens=max_new_tokens, stop_ids=self.stop_ids,
                                       pad_id=self.pad_id, min_new_tokens=min_new_tokens)  # fmt: skip
                answers = [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            # per row: the budget ended it, not a stop token (greedy drops the stop; predict_rows reports it)
            self.last_cut = [len(t) >= max_new_tokens for t in tokens]
        if labels is None:
            return answers, None
        with engine.timed(timings, "labels", dev):
            scores = self._label_probabilities(prompt, list(labels), answers)
        return answers, scores

    @torch.inference_mode()
    def stream_encoded(self, rows: list[dict], *, budgets: list[int], stopped=None):
        """Greedy answers for rows from :meth:`encode_one`, one decoding step at a time (streaming): yields per
        step one entry per row, ``(token id or None, finish or None)``; ``finish`` is "stop" (the model ended its
        answer; the stop token itself is not given), "length" (the row's budget in ``budgets``, new tokens) or
        "cancelled" (``stopped(row)`` turned true); a row already finished gets None. The same tokens as
        :meth:`generate_encoded`. Example: ``for step in p.stream_encoded([p.encode_one(im, "Rhythm?")],
        budgets=[8]): token, finish = step[0]``."""
        model, image_token = self.loaded.model, self.loaded.processor.image_token_id
        features = engine.image_features(model, rows, tiles_per_call=self.vision_batch)
        prompt = engine.prefill(model, rows, features, image_token_id=image_token, pad_id=self.pad_id)
        finished, stop_set = [False] * len(rows), set(self.stop_ids)
        for token, done in engine.greedy_steps(model, prompt, max_new_tokens=max(budgets), stop_ids=self.stop_ids,
                                               pad_id=self.pad_id, budgets=budgets, stopped=stopped):
            step = []
            for r, (t, d) in enumerate(zip(token.tolist(), done.tolist())):
                if finished[r]:
                    step.append(None)
                    continue
                finished[r] = bool(d)
                if t in stop_set:
                    step.append((None, "stop"))
                elif d and stopped is not None and stopped(r):
                    step.append((None, "cancelled"))
                else:
                    step.append((t, "length" if d else None))
            yield step

    def generate_encoded(self, rows: list[dict], *, max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        """Greedy answers for rows from :meth:`encode_one`, in one batch; only the new tokens, stripped."""
        return self.run_encoded(rows, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)[0]

    def generate(self, images, questions: list[str], *, max_new_tokens: int) -> list[str]:
        """Batched greedy answers (left padding) to one question per image; raises on a bad row."""
        if len(images) != len(questions):
            raise ValueError(f"generate: {len(images)} images but {len(questions)} questions")
        rows = [self.encode_one(im, q, max_new_tokens=max_new_tokens) for im, q in zip(images, questions)]
        return self.generate_encoded(rows, max_new_tokens=max_new_tokens)

    def score_labels(self, images, questions, labels, *, answers: list[str] | None = None) -> list[dict]:
        """P(label is in the answer) per row and label, from the model's own log-likelihood.

        Method ("slot noisy-OR"): the answer is a list of labels joined by "; ". Take the model's own greedy
        answer (or ``answers``), keep its labels g1..gk in order, and look at the k+1 places where a label may
        start: after "Assistant:", after "g1", ..., after "g1; ...; gk". At slot 0 the model gives
        p_0(L) = P(the answer starts with L | prompt); at slot j > 0, p_j(L) = P("; L" | prompt, "g1; ...; gj"),
        i.e. the separator is scored too, so the slot after the model's last label counts only as much as the
        model wanted to go on instead of ending. Token probabilities are multiplied (exact for multi-token
        labels). Then P(L) = 1 - prod_j (1 - p_j(L)) (noisy-OR): a co-occurring label that the canonical order
        puts second still scores high, unlike P(answer starts with L) alone. The vision tower and the prompt
        run once per row, for the answer and the scores alike; the rows x slots x labels continuations are
        scored in batches on the prompt's KV cache. For labels whose tokens are a prefix of another label's,
        P(L) also counts the longer label (no end-of-label check).
        """
        rows = [self.encode_one(im, q) for im, q in zip(images, questions)]
        return self.score_encoded(rows, list(labels), answers=answers)

    def score_encoded(self, rows: list[dict], labels: list[str], *, answers: list[str] | None = None) -> list[dict]:
        """:meth:`score_labels` for rows from :meth:`encode_one`; ``answers``: the model's own greedy answers
        if already generated, else generated here (on the same prompt pass)."""
        # room for every label once: " L;" tokens each, plus the end token
        budget = 4 + sum(len(self.tokenizer(f" {lab};", add_special_tokens=False)["input_ids"]) for lab in labels)
        return self.run_encoded(rows, max_new_tokens=budget, labels=list(labels), answers=answers)[1]

    def _label_probabilities(self, prompt, labels: list[str], answers: list[str]) -> list[dict]:
        cands = label_candidates(answers, labels, self._continuation)
        logps = engine.continuation_logprobs(self.loaded.model, prompt, [(i, ids, n) for i, _, ids, n in cands],
                                             pad_id=self.pad_id, batch=self.score_batch)  # fmt: skip
        return noisy_or(cands, logps, labels, len(answers))

    def _continuation(self, prefix: str, label: str) -> tuple[list[int], int]:
        """Token ids of " prefix; label" (or " label" with no prefix) to follow "Assistant:", and how many of the
        last ones are scored: the label's, plus the separator's after a prefix (P(the answer goes on with L))."""
        tok, lead = self.tokenizer, self.family.answer_prefix  # " " after "Assistant:"; "" after Qwen's "assistant\n"
        head = tok(lead + prefix, add_special_tokens=False)["input_ids"] if prefix else []
        full = tok(lead + (prefix + "; " if prefix else "") + label, add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head:  # tokenizer merged across the boundary: score the whole tail
            return full, len(full)
        return full, len(full) - len(head)
