"""Training batches: sample rows -> encoded examples (loss on the assistant's answer only) -> padded model batches.

The loop that consumes them is vlm/finetune.py. Encoding needs the processor only (``vlm.load_processor``), so
a CPU stage can run it beside the training workers; each image is decoded once.

Example::

    loaded = vlm.load_processor("tiny")                       # or vlm.load(...): only .processor/.prep are used
    encoded = encode_rows(loaded, rows_df)                    # per-row arrays; an "error" per row that failed
    batch = Collator.for_loaded(loaded)(encoded)              # tensors for model(**batch).loss
    # batch["labels"]: -100 everywhere except the tokens of " SB; 1dAVb<end_of_utterance>"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from ecgtasks.conversation import followups as row_followups
from vlm.families import IDEFICS3, Family, family_of_processor
from vlm.prompt import answer_text, chat_prompt, encode, row_history

IGNORE = -100  # the label value torch's cross-entropy skips
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")
ENCODED_KEYS = (*SEQUENCE_KEYS, "pixels", "pixel_mask", "error")


def decode_image(row_id, data):
    """PNG/JPEG bytes -> RGB PIL image (``ecg.images.decode_image``); a ValueError that names the row."""
    from ecg.images import decode_image as decode

    return decode(data, f"row {row_id}")


def collate(loaded, images, questions, answers, histories=None, followups=None) -> dict[str, torch.Tensor]:
    """Processor batch (right padded) of prompt + answer, with ``labels`` masking all but the answer.

    Kept: the answer tokens and the closing end-of-turn token (SmolVLM's ``<end_of_utterance>``, Qwen's
    ``<|im_end|>``, LLaVA's ``</s>``: without loss on it generation never stops, FINDINGS.md). Masked to -100: the
    prompt (earlier turns of ``histories`` included), the image tokens and the padding. ``followups``: per row,
    ``[(question, reply), ...]`` asked after the answer (``ecgtasks.conversation.followups``) or None; each reply
    is kept too, its question masked. Images go through ``loaded.prepare_image`` first. Tensors stay on the CPU.
    """
    n = len(images)
    histories = histories if histories is not None else [None] * n
    followups = followups if followups is not None else [None] * n
    if not (n == len(questions) == len(answers) == len(histories) == len(followups)):
        raise ValueError(f"collate: {n} images, {len(questions)} questions, {len(answers)} answers")
    processor = loaded.processor
    pages = [loaded.prepare_image(im) for im in images]
    texts, segments = [], []  # per row: the text, and its last pieces as (text, kept) from the first answer on
    for q, a, h, f in zip(questions, answers, histories, followups):
        reply = answer_text(a, processor)
        text, pieces = chat_prompt(processor, q, h) + reply, [(reply, True)]
        turns = [turn.as_history() for turn in h or []]
        turns += [{"role": "user", "text": q}, {"role": "assistant", "text": a}]
        for fq, fa in f or []:
            asked, reply = chat_prompt(processor, fq, turns), answer_text(fa, processor)
            if not asked.startswith(text):
                raise ValueError(f"collate: follow-up {fq!r}: the chat template does not extend the row's text")
            pieces += [(asked[len(text):], False), (reply, True)]
            text = asked + reply
            turns += [{"role": "user", "text": fq}, {"role": "assistant", "text": fa}]
        texts.append(text)
        segments.append(pieces)
    batch = dict(encode(processor, pages, texts, padding_side="right"))
    tok = processor.tokenizer
    labels = batch["input_ids"].clone()  # (batch, tokens)
    labels[batch["attention_mask"] == 0] = IGNORE
    for i, pieces in enumerate(segments):
        end = int(batch["attention_mask"][i].sum())  # right padding: the pieces are the last real tokens
        for piece, kept in reversed(pieces):
            ids = tok(piece, add_special_tokens=False)["input_ids"]
            start = end - len(ids)
            if batch["input_ids"][i, start:end].tolist() != ids:  # tokenizer merged across the boundary
                raise ValueError(f"collate: row {i}: {piece!r} does not tokenize the same inside the prompt")
            if not kept:
                labels[i, start:end] = IGNORE
            end = start
        labels[i, :end] = IGNORE
    batch["labels"] = labels
    return batch


# ---------------------------------------------------------------- encoded rows
def _pixel_codec(processor) -> tuple[float, np.ndarray, np.ndarray] | None:
    """``(rescale, mean, std)`` that map uint8 pixels to the processor's ``pixel_values``, if it rescales+normalizes."""
    ip = getattr(processor, "image_processor", None)
    if ip is None or not getattr(ip, "do_rescale", False) or not getattr(ip, "do_normalize", False):
        return None
    mean = np.asarray(ip.image_mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(ip.image_std, np.float32).reshape(3, 1, 1)
    return float(ip.rescale_factor), mean, std


def _compact_pixels(pv: np.ndarray, codec) -> np.ndarray:
    """(tiles, 3, H, W) normalised float32 -> uint8 (one channel for gray pages) when exactly invertible."""
    if codec is None:
        return pv
    rescale, mean, std = codec
    u8 = np.clip(np.rint((pv * std + mean) / rescale), 0, 255).astype(np.uint8)
    if np.abs((u8.astype(np.float32) * rescale - mean) / std - pv).max() >= 1e-3:
        return pv
    return np.ascontiguousarray(u8[:, :1]) if (u8[:, :1] == u8).all() else u8  # a gray page copied to RGB


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def encode_rows(loaded, batch, *, followups: bool = False) -> dict[str, np.ndarray]:
    """Sample rows -> encoded training examples, one per row; a row that fails keeps its place with ``error``.

    ``batch``: pandas DataFrame or dict of columns with ``id``, ``image`` (PNG/JPEG bytes), ``question``,
    ``answer`` and optionally ``meta`` (JSON; ``meta["history"]``: earlier turns of a multi-turn record;
    ``meta["followups"]``: questions asked after the answer, with their replies, trained on when ``followups``).
    ``loaded``: a :class:`vlm.Loaded` (``vlm.load_processor`` is enough). Each image is decoded once.
    Returns per-row object arrays: ``input_ids``/``attention_mask``/``labels`` (int64 vectors, unpadded),
    ``pixels`` (tiles, C, H, W) as uint8 when the processor's normalisation is invertible (4x smaller, 12x for
    gray pages; :class:`Collator` restores the exact float values) else float32, ``pixel_mask`` (tiles, H, W)
    bit-packed along W, and ``error`` ("", or a message naming the row: its tensors are empty).
    Example: ``encode_rows(loaded, df)["labels"][0]`` -> ``array([-100, ..., 17, 2])``.
    """
    n = len(batch["image"])
    ids = list(batch["id"]) if "id" in batch else list(range(n))
    metas = list(batch["meta"]) if "meta" in batch else [None] * n
    codec = _pixel_codec(loaded.processor)
    family = family_of_processor(loaded.processor)  # how this model family lays out a row's images
    keys = (*ENCODED_KEYS, *family.extra_keys)
    out = {key: [] for key in keys}
    for rid, data, question, answer, meta in zip(ids, batch["image"], batch["question"], batch["answer"], metas):
        try:
            asked = [row_followups(meta) if followups else None]
            enc = collate(loaded, [decode_image(rid, data)], [question], [answer], [row_history(meta)], asked)
            error = ""
        except Exception as e:  # one bad row (image, prompt, tokenizer) must not end the epoch
            enc, error = None, str(e) if str(rid) in str(e) else f"row {rid}: {e}"
        if not error:
            for key in SEQUENCE_KEYS:
                out[key].append(enc[key][0].numpy().astype(np.int64))
            arrays = family.row_arrays(enc, lambda pv: _compact_pixels(pv, codec))
        else:
            for key in SEQUENCE_KEYS:
                out[key].append(np.zeros(0, np.int64))
            arrays = family.empty_arrays()
        for key, value in arrays.items():
            out[key].append(value)
        out["error"].append(error)
    result = {key: _object_array(out[key]) for key in keys if key != "error"}
    result["error"] = np.asarray(out["error"], dtype=object)  # "" (not None: one Arrow type in every block)
    return result


def encoded_nbytes(encoded: dict[str, np.ndarray]) -> int:
    """Bytes the encoded rows hold (what caching them in the object store would take)."""
    keys = [key for key in encoded if key != "error"]
    return int(sum(getattr(x, "nbytes", 0) for key in keys for x in encoded[key]))


def _column(rows, key) -> list:
    value = rows[key]
    return list(value) if not isinstance(value, list) else value


@dataclass
class Collator:
    """Encoded rows (from :func:`encode_rows`, through Ray Data or in memory) -> a right-padded model batch.

    Rows with an ``error`` are left out and counted in ``failed`` (and the first few named on stderr); image
    stacks are padded to the batch's most tiles (a padding tile's mask is all zero, so Idefics3 skips it).
    Example: ``Collator.for_loaded(loaded)(rows)["input_ids"].shape`` -> ``(B, T)``.
    """

    pad_id: int
    codec: tuple | None = None
    failed: int = 0
    family: Family = IDEFICS3  # the model family's image inputs (vlm/families/)
    image_token_id: int | None = None

    @classmethod
    def for_loaded(cls, loaded) -> "Collator":
        tok = getattr(loaded.processor, "tokenizer", loaded.processor)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(pad_id=int(pad), codec=_pixel_codec(loaded.processor),
                   family=family_of_processor(loaded.processor),
                   image_token_id=getattr(loaded.processor, "image_token_id", None))  # fmt: skip

    def __call__(self, rows: dict) -> dict[str, torch.Tensor]:
        errors = _column(rows, "error") if "error" in rows else [""] * len(rows["input_ids"])
        keep = [i for i, e in enumerate(errors) if not isinstance(e, str) or not e]  # "" or None: encoded
        for i in sorted(set(range(len(errors))) - set(keep)):
            self.failed += 1
            if self.failed <= 5:
                import sys

                print(f"train: skipping a row that failed to encode: {errors[i]}", file=sys.stderr, flush=True)
        seqs = {key: [np.asarray(_column(rows, key)[i], dtype=np.int64) for i in keep] for key in SEQUENCE_KEYS}
        n, width = len(keep), max((len(s) for s in seqs["input_ids"]), default=0)
        out = {}
        for key, value in {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE}.items():
            t = torch.full((n, width), value, dtype=torch.long)
            for i, seq in enumerate(seqs[key]):
                t[i, : len(seq)] = torch.from_numpy(seq)
            out[key] = t
        pixels = [self._restore(np.asarray(_column(rows, "pixels")[i])) for i in keep]  # each (tiles, 3, H, W)
        out.update(self.family.collate_images(pixels, rows, keep, out["input_ids"], self.image_token_id))
        return out

    def _restore(self, pixels: np.ndarray) -> torch.Tensor:
        """(tiles, C, H, W) cached pixels -> (tiles, 3, H, W) float32 exactly as the processor made them."""
        t = torch.from_numpy(np.ascontiguousarray(pixels))
        if t.dtype != torch.uint8:  # kept as float32 (Qwen's flattened patches, or not exactly invertible)
            return t.float()
        rescale, mean, std = self.codec
        t = t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
        return (t.float() * rescale - torch.from_numpy(mean)) / torch.from_numpy(std)


def iter_cached(cached: dict[str, np.ndarray], *, batch_size: int, seed: int, collate: Collator,
                rank: int = 0, world: int = 1) -> Iterable[dict[str, torch.Tensor]]:
    """Shuffled batches over in-memory encoded rows (this rank's equal share); the plain-process path."""
    n = len(cached["input_ids"])
    order = np.random.default_rng(seed).permutation(n)
    per_rank = n // world
    order = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        yield collate({k: v[idx] for k, v in cached.items()})
