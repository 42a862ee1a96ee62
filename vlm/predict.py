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

from vlm.load import Loaded, load
from vlm.prompt import END_OF_UTTERANCE, budget_cut, chat_prompt, encode


class Predictor:
    """A loaded model plus its prompt format; images are PIL pages, questions in ECGBench form.

    ``model``/``adapter``/``device``/``dtype``/``image_splitting``/``longest_edge``: as :func:`vlm.load` (None:
    the image settings the model was trained with, from its export, else its processor's own; a SmolVLM page is
    1,139 prompt tokens with splitting, 79 without). ``max_prompt_tokens``: rows
    with a longer prompt fail (default: the model's positions minus the answer budget). ``score_batch``:
    sequences per forward pass in label scoring. ``label_scores``: whether predict_rows scores labels.
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
    ):
        loaded = load(
            model, adapter=adapter, device=device, dtype=dtype, image_splitting=image_splitting,
            longest_edge=longest_edge,
        )  # fmt: skip
        self._init(loaded, max_prompt_tokens=max_prompt_tokens, score_batch=score_batch)
        self.label_scores = label_scores

    @classmethod
    def from_loaded(cls, loaded: Loaded, *, max_prompt_tokens: int | None = None, score_batch: int = 32):
        """Wrap a model already in memory (training's validation uses the model it is training)."""
        self = cls.__new__(cls)
        self._init(loaded, max_prompt_tokens=max_prompt_tokens, score_batch=score_batch)
        return self

    def _init(self, loaded: Loaded, *, max_prompt_tokens, score_batch) -> None:
        self.loaded = loaded
        # predict_rows adds label_scores for multi-label tasks; scoring costs about (labels x (answer labels + 1))
        # prompt passes per row, so a CPU run of a large model may turn it off
        self.label_scores = True
        self.name = loaded.name if not loaded.adapter else f"{loaded.name}+{loaded.adapter}"
        tok = loaded.processor.tokenizer
        self.tokenizer = tok
        config = getattr(loaded.model, "config", None)
        text_config = getattr(config, "text_config", config)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.max_prompt_tokens = max_prompt_tokens
        self.score_batch = score_batch  # sequences per forward pass in score_labels
        eou = tok.convert_tokens_to_ids(END_OF_UTTERANCE)
        self.stop_ids = sorted({i for i in (eou, tok.eos_token_id) if i is not None and i != tok.unk_token_id})
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]

    # ---- encoding, one row at a time so a bad row fails alone -------------------------------------------
    def encode_one(self, image, question: str, *, max_new_tokens: int = 0, history=None) -> dict:
        """Processor output for one row (tensors with a batch dim of 1); ValueError if the prompt is too long.
        ``history``: earlier turns of a multi-turn record (``vlm.prompt.chat_messages``)."""
        page = self.loaded.prepare_image(image)
        batch = encode(self.loaded.processor, [page], [chat_prompt(self.loaded.processor, question, history)])
        n = batch["input_ids"].shape[1]
        limit = self.max_prompt_tokens or self.max_positions - max_new_tokens
        if n > limit:
            raise ValueError(f"prompt too long: {n} tokens > limit {limit} (max positions {self.max_positions})")
        return dict(batch)

    def _stack(self, rows: list[dict], extra: list[list[int]] | None = None) -> dict:
        """Left-pad token rows (plus optional continuation ids each) and pad image stacks to one batch."""
        extra = extra or [[] for _ in rows]
        ids = [r["input_ids"][0].tolist() + e for r, e in zip(rows, extra)]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, width - len(seq) :] = torch.tensor(seq)
            attention[i, width - len(seq) :] = 1
        out = {"input_ids": input_ids, "attention_mask": attention}
        tiles = max(r["pixel_values"].shape[1] for r in rows)  # images (tiles) per row differ with splitting
        shape = rows[0]["pixel_values"].shape[2:]  # (3, H, W)
        pixels = torch.zeros((len(rows), tiles, *shape), dtype=rows[0]["pixel_values"].dtype)
        masks = torch.zeros((len(rows), tiles, *shape[1:]), dtype=torch.long)
        for i, r in enumerate(rows):
            n = r["pixel_values"].shape[1]
            pixels[i, :n] = r["pixel_values"][0]
            masks[i, :n] = r["pixel_attention_mask"][0] if "pixel_attention_mask" in r else 1
        out.update(pixel_values=pixels, pixel_attention_mask=masks)
        return out

    def _to_device(self, batch: dict) -> dict:
        dev, dt = self.loaded.device, self.loaded.dtype
        return {k: v.to(dev, dtype=dt) if k == "pixel_values" else v.to(dev) for k, v in batch.items()}

    # ---- generation ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_encoded(self, rows: list[dict], *, max_new_tokens: int) -> list[str]:
        """Greedy answers for rows from :meth:`encode_one`, in one batch; only the new tokens, stripped."""
        if not rows:
            return []
        batch = self._to_device(self._stack(rows))
        out = self.loaded.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
        )  # fmt: skip
        new = out[:, batch["input_ids"].shape[1] :]  # (batch, new tokens)
        self.last_cut = budget_cut(new, self.stop_ids)  # per row: the budget ended it (predict_rows reports it)
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def generate(self, images, questions: list[str], *, max_new_tokens: int) -> list[str]:
        """Batched greedy answers (left padding) to one question per image; raises on a bad row."""
        if len(images) != len(questions):
            raise ValueError(f"generate: {len(images)} images but {len(questions)} questions")
        rows = [self.encode_one(im, q, max_new_tokens=max_new_tokens) for im, q in zip(images, questions)]
        return self.generate_encoded(rows, max_new_tokens=max_new_tokens)

    # ---- label scoring ---------------------------------------------------------------------------------
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
        run once per row; the rows x slots x labels continuations are scored in batches on the prompt's shared
        KV cache. For labels whose tokens are a
        prefix of another label's, P(L) also counts the longer label (no end-of-label check).
        """
        rows = [self.encode_one(im, q) for im, q in zip(images, questions)]
        return self.score_encoded(rows, list(labels), answers=answers)

    @torch.inference_mode()
    def score_encoded(self, rows: list[dict], labels: list[str], *, answers: list[str] | None = None) -> list[dict]:
        """:meth:`score_labels` for rows from :meth:`encode_one`; ``answers``: the model's own greedy answers
        if already generated (predict_rows passes them), else generated here."""
        if not rows:
            return []
        if answers is None:
            # room for every label once: " L;" tokens each, plus the end token
            budget = 4 + sum(len(self.tokenizer(f" {lab};", add_special_tokens=False)["input_ids"]) for lab in labels)
            answers = self.generate_encoded(rows, max_new_tokens=budget)
        label_ids = {lab: self._continuation("", lab) for lab in labels}
        cands = []  # (row index, label, continuation ids, number of label tokens at the end)
        for i, answer in enumerate(answers):
            said = [p.strip() for p in answer.split(";") if p.strip() in label_ids]
            for j in range(len(said) + 1):
                prefix = "; ".join(said[:j])
                for lab in labels:
                    ids, n = self._continuation(prefix, lab) if j else label_ids[lab]
                    cands.append((i, lab, ids, n))
        features = self._image_features(rows)
        miss = [{lab: 1.0 for lab in labels} for _ in rows]  # prod_j (1 - p_j(L))
        for (i, lab, _, _), lp in zip(cands, self._candidate_logprobs(rows, features, cands)):
            miss[i][lab] *= 1.0 - math.exp(lp)
        return [{lab: float(min(1.0, max(0.0, 1.0 - m[lab]))) for lab in labels} for m in miss]

    def _candidate_logprobs(self, rows, features, cands, *, shared_prompt: bool = True) -> list[float]:
        """log P(scored tokens) per candidate. The prompt is run once per row and its KV cache shared by the
        row's candidates (about labels x slots times less compute); if this transformers version's cache API
        does not fit, every candidate runs the whole prompt (same numbers, slower)."""
        if shared_prompt:
            try:
                out = []
                for i, row in enumerate(rows):
                    mine = [(ids, n) for r, _, ids, n in cands if r == i]
                    out.append(iter(self._row_logprobs_cached(row, features[i], mine)))
                return [next(out[i]) for i, *_ in cands]
            except (TypeError, AttributeError, ValueError, NotImplementedError):
                pass
        result = []
        for start in range(0, len(cands), self.score_batch):
            result += self._label_logprobs(rows, features, cands[start : start + self.score_batch])
        return result

    def _row_logprobs_cached(self, row: dict, features: torch.Tensor, conts: list) -> list[float]:
        """One row: prefill its prompt once, then score continuations ``(ids, n)`` on copies of the cache."""
        import copy
        import inspect

        model, dev = self.loaded.model, self.loaded.device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
        cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        ids = row["input_ids"].to(dev)  # (1, T)
        embeds = model.get_input_embeddings()(ids)  # (1, T, hidden)
        embeds[ids == self.loaded.processor.image_token_id] = features.to(embeds.dtype)
        prefill = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = getattr(prefill, "cache", None) or getattr(prefill, "past_key_values", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise NotImplementedError("no reusable KV cache")
        first = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)  # (vocab,): the answer's first token
        t, scores = ids.shape[1], []
        for start in range(0, len(conts), self.score_batch):
            chunk = conts[start : start + self.score_batch]
            width = max(len(c) for c, _ in chunk)
            cont = torch.full((len(chunk), width), self.pad_id, dtype=torch.long, device=dev)
            mask = torch.zeros((len(chunk), t + width), dtype=torch.long, device=dev)
            mask[:, :t] = 1
            for k, (c, _) in enumerate(chunk):  # right padding after the shared prompt
                cont[k, : len(c)] = torch.tensor(c, device=dev)
                mask[k, t : t + len(c)] = 1
            shared = copy.deepcopy(cache)  # the forward appends to the cache in place
            shared.batch_repeat_interleave(len(chunk))
            positions = torch.arange(t, t + width, device=dev).expand(len(chunk), -1)
            logits = model(input_ids=cont, attention_mask=mask, position_ids=positions, use_cache=True,
                           **{cache_kw: shared}).logits.float()  # (chunk, width, vocab); fmt: skip
            logp = torch.log_softmax(logits, dim=-1)
            for k, (c, n) in enumerate(chunk):
                # token 0 comes from the prefill's last position; token m>0 from continuation position m-1
                lps = [float(first[c[0]])] + [float(logp[k, m - 1, c[m]]) for m in range(1, len(c))]
                scores.append(sum(lps[len(c) - n :]))
        return scores

    def _continuation(self, prefix: str, label: str) -> tuple[list[int], int]:
        """Token ids of " prefix; label" (or " label" with no prefix) to follow "Assistant:", and how many of the
        last ones are scored: the label's, plus the separator's after a prefix (P(the answer goes on with L))."""
        tok = self.tokenizer
        head = tok(" " + prefix, add_special_tokens=False)["input_ids"] if prefix else []
        full = tok(" " + (prefix + "; " if prefix else "") + label, add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head:  # tokenizer merged across the boundary: score the whole tail
            return full, len(full)
        return full, len(full) - len(head)

    def _image_features(self, rows: list[dict]) -> list[torch.Tensor]:
        """Per row: the connector's output for its image tokens, (image tokens, text hidden)."""
        model = self.loaded.model
        out = []
        for r in rows:
            r = self._to_device({k: r[k] for k in ("pixel_values", "pixel_attention_mask") if k in r})
            feats = model.get_image_features(**r)
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 wraps it in an output object
            if isinstance(feats, (list, tuple)):
                feats = torch.cat(list(feats), dim=0)
            out.append(feats.reshape(-1, feats.shape[-1]))
        return out

    def _label_logprobs(self, rows, features, chunk) -> list[float]:
        """log P(label tokens | prompt + prefix) for each candidate of ``chunk``, in one forward pass."""
        model = self.loaded.model
        batch = self._stack([rows[i] for i, *_ in chunk], extra=[ids for _, _, ids, _ in chunk])
        ids = batch["input_ids"].to(self.loaded.device)  # (B, T), left padded
        mask = batch["attention_mask"].to(self.loaded.device)
        embeds = model.get_input_embeddings()(ids)  # (B, T, hidden)
        image_slots = ids == self.loaded.processor.image_token_id
        embeds[image_slots] = torch.cat([features[i] for i, *_ in chunk]).to(embeds.dtype)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does for left padding
        keep = max(n for *_, n in chunk) + 1  # left padding: every row's scored tokens are its last ones
        # only the last `keep` positions go through the LM head: (B, T, vocab) logits would be ~1 GB for SmolVLM
        logits = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits[:, -keep:].float()  # (B, keep, vocab)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, keep-1, vocab): position t predicts token t+1
        target = ids[:, -(keep - 1) :]  # (B, keep-1)
        token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, keep-1) log-probs
        return [float(token_lp[b, token_lp.shape[1] - n :].sum()) for b, (_, _, _, n) in enumerate(chunk)]
