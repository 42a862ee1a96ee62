"""LLaVA-1.5 and LLaVA-NeXT (llava-hf format): a CLIP-style tower, a projector, a Llama / Mistral / Vicuna decoder.

LLaVA-1.5: one square view per page, ``pixel_values`` (1, 3, H, W); the tower's hidden states of
``vision_feature_layer`` without the class token become the image tokens. LLaVA-NeXT ("anyres"): the page is cut
into the best-fitting grid of ``image_grid_pinpoints`` plus a base view, ``pixel_values`` (1, views, 3, H, W) with
``image_sizes`` (1, 2) = the page's (height, width); the tiles' features are unpadded to the page's aspect and a
newline embedding ends each feature row. Positions are ordinary (one per token). The answer follows the
generation prompt ("ASSISTANT:" or "[/INST]") after a space and ends with the tokenizer's eos (``</s>``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlm.families.base import Family, _column, model_device_dtype, pooled


def _strategy(model) -> dict:
    config = getattr(model, "config", None)
    return {"vision_feature_layer": getattr(config, "vision_feature_layer", -2),
            "vision_feature_select_strategy": getattr(config, "vision_feature_select_strategy", "default")}


@dataclass(frozen=True)
class Llava(Family):
    name: str = "llava"
    title: str = "LLaVA-1.5"
    model_types: tuple[str, ...] = ("llava",)
    end_tokens: tuple[str, ...] = ()  # the tokenizer's eos

    def nudge_blank(self) -> bool:
        return False

    def image_features(self, model, rows: list[dict], *, tiles_per_call: int = 32) -> list[torch.Tensor]:
        """Every row's view through the tower together, ``tiles_per_call`` at a time."""
        device, dtype = model_device_dtype(model)
        pixels = torch.cat([r["pixel_values"] for r in rows])  # (rows, 3, H, W)
        out = []
        for s in range(0, len(pixels), tiles_per_call):
            feats = pooled(model.get_image_features(pixel_values=pixels[s : s + tiles_per_call].to(device, dtype),
                                                    **_strategy(model)))  # fmt: skip
            out += list(feats)  # per image (tokens, hidden)
        return out

    # ---- training: one view per row, restored to (3, H, W) -------------------------------------------------
    def row_arrays(self, enc: dict, compact) -> dict[str, np.ndarray]:
        pv = enc["pixel_values"].float().numpy()  # (1, 3, H, W): one view
        return {"pixels": compact(pv), "pixel_mask": np.zeros((0,), np.uint8)}

    def collate_images(self, pixels, rows, keep, input_ids, image_token_id):
        return {"pixel_values": torch.cat(pixels) if pixels else torch.zeros((0, 3, 1, 1))}  # (B, 3, H, W)


@dataclass(frozen=True)
class LlavaNext(Llava):
    name: str = "llava_next"
    title: str = "LLaVA-NeXT"
    model_types: tuple[str, ...] = ("llava_next",)
    extra_keys: tuple[str, ...] = ("image_size",)

    def image_features(self, model, rows: list[dict], *, tiles_per_call: int = 32) -> list[torch.Tensor]:
        """All rows' views in one call (the model splits them back by ``image_sizes`` and packs each page)."""
        device, dtype = model_device_dtype(model)
        sizes = torch.cat([r["image_sizes"] for r in rows])  # (rows, 2): (height, width) px
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = model.config
        views = [image_size_to_num_patches(s, config.image_grid_pinpoints, config.vision_config.image_size)
                 for s in sizes.tolist()]  # fmt: skip
        pixels = torch.cat([r["pixel_values"][0, :v] for r, v in zip(rows, views)])  # (views, 3, H, W)
        feats = pooled(model.get_image_features(pixel_values=pixels.to(device, dtype), image_sizes=sizes.to(device),
                                                **_strategy(model)))  # fmt: skip
        return list(feats)  # per page (base + unpadded tiles + newlines, hidden)

    def row_arrays(self, enc: dict, compact) -> dict[str, np.ndarray]:
        pv = enc["pixel_values"][0].float().numpy()  # (views, 3, H, W)
        size = enc["image_sizes"].numpy().astype(np.int64).reshape(-1)  # (2,): the page's (height, width)
        return {"pixels": compact(pv), "pixel_mask": np.zeros((0,), np.uint8), "image_size": size}

    def empty_arrays(self) -> dict[str, np.ndarray]:
        return {**super().empty_arrays(), "image_size": np.zeros((0,), np.int64)}

    def collate_images(self, pixels, rows, keep, input_ids, image_token_id):
        n, views = len(pixels), max((p.shape[0] for p in pixels), default=0)
        h, w = (pixels[0].shape[2:] if pixels else (0, 0))
        pv = torch.zeros((n, views, 3, h, w), dtype=torch.float32)  # (B, views, 3, H, W); the model reads
        for i, p in enumerate(pixels):  # each row's first views, as many as its image size gives
            pv[i, : p.shape[0]] = p
        sizes = [np.asarray(_column(rows, "image_size")[i], dtype=np.int64) for i in keep]
        return {"pixel_values": pv, "image_sizes": torch.from_numpy(np.stack(sizes)) if sizes else
                torch.zeros((0, 2), dtype=torch.long)}  # fmt: skip


LLAVA = Llava()
LLAVA_NEXT = LlavaNext()
