"""Qwen2-VL and Qwen2.5-VL: flattened patches with a (t, h, w) grid per image, and multimodal RoPE.

A row's ``pixel_values`` is ``(patches, 3 x 2 x 14 x 14)`` (channel x temporal x patch x patch, normalised) with its
``image_grid_thw`` (1, 3); the vision tower merges 2 x 2 patches into one image token. Positions are three rows
(time, height, width): text tokens count up on all three, the image's tokens take their grid coordinates, and
the text after an image continues from the image's largest coordinate (``get_rope_index``), so the next token
of a row is at ``mask.sum() + rope delta``, not at ``mask.sum()``. Decode and continuation tokens are text: one
position each, the same on all three rows. The answer follows ``<|im_start|>assistant\\n`` with no space and ends
with ``<|im_end|>``.

The processors are used without a video processor (which needs torchvision): :class:`ImageQwen2VLProcessor`
is the real ``Qwen2VLProcessor`` for images, saved and reloaded under the real class's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlm.families.base import Family, base_model, model_device_dtype, pooled


def _image_only(cls):
    """``cls`` (a Qwen processor) without its video processor: images and text only, no torchvision."""
    from transformers.processing_utils import ProcessorMixin

    class ImageOnly(cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    # saved under the real class's name (processor_config.json, tokenizer_config.json): where torchvision is
    # installed, the export loads as the ordinary Qwen processor
    ImageOnly.__name__ = cls.__name__
    ImageOnly.__qualname__ = f"ImageOnly{cls.__name__}"
    return ImageOnly


def processor_class(model_type: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    return _image_only(Qwen2VLProcessor if model_type == "qwen2_vl" else Qwen2_5_VLProcessor)


@dataclass(frozen=True)
class Qwen(Family):
    name: str = "qwen2_vl"
    title: str = "Qwen2-VL"
    model_types: tuple[str, ...] = ("qwen2_vl",)
    answer_prefix: str = ""
    end_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    extra_keys: tuple[str, ...] = ("image_grid",)

    def nudge_blank(self) -> bool:
        return False

    def load_processor(self, path: str):
        return processor_class(self.name).from_pretrained(path)

    def image_features(self, model, rows: list[dict], *, tiles_per_call: int = 32) -> list[torch.Tensor]:
        """All rows' patches in one vision call (the tower attends within each image by its grid)."""
        device, dtype = model_device_dtype(model)
        pixels = torch.cat([r["pixel_values"] for r in rows]).to(device, dtype)  # (patches, 3 x 2 x 14 x 14)
        grids = torch.cat([r["image_grid_thw"] for r in rows]).to(device)  # (images, 3)
        feats = pooled(model.get_image_features(pixel_values=pixels, image_grid_thw=grids))
        return list(feats)  # one image per row: (grid t x h x w / 4, hidden)

    def positions(self, model, rows: list[dict], ids: torch.Tensor, mask: torch.Tensor):
        """M-RoPE positions (3, B, W) of the left-padded prompts and each row's next (text) position."""
        grids = torch.cat([r["image_grid_thw"] for r in rows]).to(ids.device)  # (images, 3)
        core = base_model(model).model
        image_token = int(base_model(model).config.image_token_id)
        types = (ids == image_token).int()  # 1 on image tokens: mm_token_type_ids
        positions, deltas = core.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grids,
                                                attention_mask=mask)  # fmt: skip
        return positions, mask.sum(-1) + deltas.view(-1).to(mask.device)

    # ---- training: patches are concatenated across rows; the grid says whose they are ----------------------
    def row_arrays(self, enc: dict, compact) -> dict[str, np.ndarray]:
        pv = enc["pixel_values"].float().numpy()  # (patches, 1176), normalised: kept as float32
        grid = enc["image_grid_thw"].numpy().astype(np.int64).reshape(-1)  # (3,)
        return {"pixels": pv, "pixel_mask": np.zeros((0,), np.uint8), "image_grid": grid}

    def empty_arrays(self) -> dict[str, np.ndarray]:
        return {"pixels": np.zeros((0, 1), np.float32), "pixel_mask": np.zeros((0,), np.uint8),
                "image_grid": np.zeros((0,), np.int64)}  # fmt: skip

    def collate_images(self, pixels, rows, keep, input_ids, image_token_id):
        grids = [np.asarray(rows["image_grid"][i], dtype=np.int64) for i in keep]
        return {
            "pixel_values": torch.cat(pixels) if pixels else torch.zeros((0, 1)),  # (all patches, 1176)
            "image_grid_thw": torch.from_numpy(np.stack(grids)) if grids else torch.zeros((0, 3), dtype=torch.long),
            "mm_token_type_ids": (input_ids == image_token_id).int(),  # (B, T): M-RoPE needs the image spans
        }


QWEN2_VL = Qwen()
QWEN2_5_VL = Qwen(name="qwen2_5_vl", title="Qwen2.5-VL", model_types=("qwen2_5_vl",))
