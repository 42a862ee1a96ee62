"""What every model family shares, and the Idefics3 / SmolVLM (and Idefics2) adapter that the others vary.

An adapter owns what differs between open VLM families and nothing else: the processor outputs a row carries
(pixel tensors, grids, sizes), how the vision tower is called, the positions of the prompt's tokens, how the
assistant's answer is written after the generation prompt and which tokens end it, and how encoded training rows
become a model batch. Generation, label scoring and training (vlm/engine.py, vlm/predict.py, vlm/training.py) are
written once over it.

Example::

    fam = family_of(model)                                   # from model.config.model_type
    fam.answer_text("SB; 1dAVb", tokenizer)                  # ' SB; 1dAVb<end_of_utterance>'
    feats = fam.image_features(model, rows, tiles_per_call=32)   # [(image tokens, hidden)] per row
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IDEFICS_END = "<end_of_utterance>"


def base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper


def model_device_dtype(model):
    p = next(base_model(model).parameters())
    return p.device, p.dtype


def pooled(out) -> list[torch.Tensor] | torch.Tensor:
    """``get_image_features``' result: transformers 5 wraps it in an output object (``pooler_output``)."""
    return getattr(out, "pooler_output", out)


@dataclass(frozen=True)
class Family:
    """The Idefics3 / SmolVLM adapter; other families subclass it and override what differs.

    ``model_types``: ``config.model_type`` values it serves. ``answer_prefix``: what the chat template puts between
    the generation prompt and the answer (" " after "Assistant:"). ``end_tokens``: the end-of-turn tokens (None:
    the tokenizer's eos). ``label_scoring``: whether label probabilities are computed (else ``label_scores`` is
    null and answers are scored from text).
    """

    name: str = "idefics3"
    title: str = "Idefics3 / SmolVLM"
    model_types: tuple[str, ...] = ("idefics3",)
    answer_prefix: str = " "
    end_tokens: tuple[str, ...] = (IDEFICS_END,)
    label_scoring: bool = True

    # ---- prompt format -------------------------------------------------------------------------------------
    def end_token(self, tokenizer) -> str:
        """The token that closes the assistant's turn in training (the first of ``end_tokens``, else eos)."""
        vocab = tokenizer.get_vocab()
        for token in self.end_tokens:
            if token in vocab:
                return token
        return tokenizer.eos_token

    def stop_ids(self, tokenizer) -> list[int]:
        """Token ids that end generation: the end-of-turn tokens the tokenizer knows, and its eos."""
        vocab = tokenizer.get_vocab()
        ids = {vocab[t] for t in self.end_tokens if t in vocab} | {tokenizer.eos_token_id}
        return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)

    def answer_text(self, answer: str, tokenizer) -> str:
        """The assistant's reply as it follows the generation prompt: the prefix, the answer, the end token."""
        return f"{self.answer_prefix}{answer.strip()}{self.end_token(tokenizer)}"

    def nudge_blank(self) -> bool:
        """Idefics drops an all-zero tile as padding: a blank page must be nudged off zero (vlm.prompt.encode)."""
        return True

    # ---- inference ----------------------------------------------------------------------------------------
    def image_features(self, model, rows: list[dict], *, tiles_per_call: int = 32) -> list[torch.Tensor]:
        """The connector's output per row, ``(tiles x image tokens per tile, text hidden)``, in prompt order.

        All tiles of all rows go through the vision tower together, ``tiles_per_call`` at a time (a bound on
        activation memory: a split SmolVLM page is 17 tiles of 512 x 512 px).
        """
        device, dtype = model_device_dtype(model)
        counts = [r["pixel_values"].shape[1] for r in rows]
        pixels = [r["pixel_values"][0] for r in rows]  # each (tiles, 3, H, W)
        masks = [r["pixel_attention_mask"][0] if "pixel_attention_mask" in r
                 else torch.ones(r["pixel_values"].shape[1:2] + r["pixel_values"].shape[3:], dtype=torch.long)
                 for r in rows]  # each (tiles, H, W); fmt: skip
        if len({p.shape[-2:] for p in pixels}) > 1:  # Idefics2 keeps each page's aspect: pad as its processor does
            pixels, masks = _pad_bottom_right(pixels, masks)
        pixels, masks = torch.cat(pixels), torch.cat(masks)  # (tiles, 3, H, W), (tiles, H, W)
        per_tile = []
        for s in range(0, len(pixels), tiles_per_call):
            chunk = pixels[s : s + tiles_per_call]
            out = model.get_image_features(pixel_values=chunk[None].to(device, dtype),
                                           pixel_attention_mask=masks[s : s + tiles_per_call][None].to(device))
            out = pooled(out)
            if isinstance(out, (list, tuple)):
                out = torch.cat(list(out), dim=0)
            per_tile.append(out.reshape(len(chunk), -1, out.shape[-1]))  # (tiles, tokens per tile, hidden)
        feats = torch.cat(per_tile)
        return [f.reshape(-1, f.shape[-1]) for f in feats.split(counts)]

    def positions(self, model, rows: list[dict], ids: torch.Tensor, mask: torch.Tensor):
        """``(position ids for the prefill, next position per row)``; ids / mask (B, W) left padded.

        One position per token, counted over the real tokens as ``generate()`` numbers left-padded rows; the next
        token of row b is at ``mask[b].sum()`` (returned as None: the prompt's lengths).
        """
        return (mask.cumsum(-1) - 1).clamp(min=0), None

    # ---- training -----------------------------------------------------------------------------------------
    def row_arrays(self, enc: dict, compact) -> dict[str, np.ndarray]:
        """One encoded row's image arrays (``enc``: the processor batch of that row): ``pixels`` (tiles, C, H, W)
        compacted by ``compact`` (uint8 where exact) and ``pixel_mask`` (tiles, H, ceil(W / 8)) bit-packed."""
        pv = enc["pixel_values"][0].float().numpy()  # (tiles, 3, H, W), normalised
        mask = enc.get("pixel_attention_mask")
        mask = mask[0].numpy().astype(bool) if mask is not None else np.ones((pv.shape[0], *pv.shape[2:]), bool)
        return {"pixels": compact(pv), "pixel_mask": np.packbits(mask, axis=-1)}

    extra_keys: tuple[str, ...] = ()  # per-row arrays beyond pixels / pixel_mask (grids, image sizes)

    def empty_arrays(self) -> dict[str, np.ndarray]:
        """The image arrays of a row that failed to encode."""
        return {"pixels": np.zeros((0, 1, 1, 1), np.uint8), "pixel_mask": np.zeros((0, 1, 1), np.uint8)}

    def collate_images(self, pixels: list[torch.Tensor], rows: dict, keep: list[int], input_ids: torch.Tensor,
                       image_token_id: int | None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Model inputs for the images of a batch: Idefics stacks are padded to the batch's most tiles (a padding
        tile's mask is all zero, so the model skips it). ``pixels``: per kept row (tiles, 3, H, W) float32."""
        masks = [np.asarray(_column(rows, "pixel_mask")[i]) for i in keep]  # each (tiles, H, W / 8) packed
        n, tiles = len(pixels), max((p.shape[0] for p in pixels), default=0)
        h, w = max((p.shape[2] for p in pixels), default=0), max((p.shape[3] for p in pixels), default=0)
        pv = torch.zeros((n, tiles, 3, h, w), dtype=torch.float32)  # (B, tiles, 3, H, W), padded bottom / right
        pam = torch.zeros((n, tiles, h, w), dtype=torch.bool)  # (B, tiles, H, W)
        for i, (p, m) in enumerate(zip(pixels, masks)):
            t, _, ph, pw = p.shape
            pv[i, :t, :, :ph, :pw] = p
            pam[i, :t, :ph, :pw] = torch.from_numpy(np.unpackbits(m, axis=-1, count=pw).astype(bool))
        return {"pixel_values": pv, "pixel_attention_mask": pam}


def _column(rows, key) -> list:
    value = rows[key]
    return list(value) if not isinstance(value, list) else value


def _pad_bottom_right(pixels: list[torch.Tensor], masks: list[torch.Tensor]):
    """Tiles of different sizes -> one size, zero pixels and a zero mask on the padding (Idefics2's batching)."""
    h, w = max(p.shape[-2] for p in pixels), max(p.shape[-1] for p in pixels)
    padded_pixels, padded_masks = [], []
    for p, m in zip(pixels, masks):
        pp = p.new_zeros((p.shape[0], p.shape[1], h, w))  # (tiles, 3, H, W)
        pm = m.new_zeros((m.shape[0], h, w))  # (tiles, H, W)
        pp[..., : p.shape[-2], : p.shape[-1]] = p
        pm[..., : m.shape[-2], : m.shape[-1]] = m
        padded_pixels.append(pp)
        padded_masks.append(pm)
    return padded_pixels, padded_masks
