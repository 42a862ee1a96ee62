"""Load a model and its processor from a preset name, a Hugging Face id, a local folder or ``random:PATH``.

Example::

    import vlm
    loaded = vlm.load("tiny")                                   # offline, seeded, 0.9 M parameters
    loaded = vlm.load("random:../shared/models/SmolVLM-256M-Instruct", image_splitting=False)
    loaded = vlm.load("runs/x/export")                          # a folder written by vlm.export
    loaded = vlm.load("tiny", adapter="runs/x/adapter")         # a LoRA adapter (peft) on top
    page = loaded.prepare_image(pil_page)                       # the model's own image preprocessing
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm.tiny import TinySpec

SIDECAR = "ecgvlm.json"  # written by vlm.export next to the HF files: the preprocessing recipe


@dataclass(frozen=True)
class ImagePrep:
    """The image preprocessing a model was trained with, applied before the HF processor.

    ``kind="identity"``: pretrained models keep their own processor normalisation.
    ``kind="ecg_gray"``: FINDINGS.md's recipe for from-scratch models: grayscale, resize to ``size`` x ``size``,
    contrast stretch so the grid turns white and traces stay dark, back to RGB.
    """

    kind: str = "identity"
    size: int = 224  # px, square side (ecg_gray)
    white_fraction: float = 0.5  # ecg_gray: levels above lo + f * (background - lo) become white

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.kind == "identity":
            return image if image.mode == "RGB" else image.convert("RGB")
        if self.kind != "ecg_gray":
            raise ValueError(f"ImagePrep: unknown kind {self.kind!r}")
        gray = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        level = np.asarray(gray, dtype=np.float32)  # (size, size), 0 = black ink .. 255 = white paper
        lo = float(np.percentile(level, 1))  # darkest trace ink
        background = float(np.percentile(level, 50))  # most of a page is paper
        hi = lo + self.white_fraction * (background - lo)
        if hi - lo < 1.0:  # blank or flat image: nothing to stretch
            return gray.convert("RGB")
        stretched = np.clip((level - lo) / (hi - lo), 0.0, 1.0) * 255.0
        return Image.fromarray(stretched.round().astype(np.uint8), mode="L").convert("RGB")


@dataclass
class Loaded:
    """A model ready to run: ``model`` (eval mode, on ``device``), its ``processor`` and the image recipe."""

    model: Any
    processor: Any
    name: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    prep: ImagePrep = field(default_factory=ImagePrep)
    spec: TinySpec | None = None  # the tiny preset's sizes, when the model came from it
    adapter: str | None = None

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The model's own preprocessing of a page (identity for pretrained models)."""
        return self.prep(image)

    def sidecar(self) -> dict:
        """What vlm.export writes to ``ecgvlm.json`` so a reload prepares images the same way."""
        return {
            "format": 1,
            "source": self.name,
            "adapter": self.adapter,
            "prep": dataclasses.asdict(self.prep),
            "tiny_spec": self.spec.to_dict() if self.spec else None,
        }


def resolve_device_dtype(device="auto", dtype="auto"):
    """``auto`` -> CUDA + bfloat16 when a GPU is there, else CPU + float32. ``dtype`` may be a name.

    bfloat16 on a CPU is opt-in (``dtype="bfloat16"``): on a CPU with native bf16 (AVX-512 BF16 or AMX) the 256 M
    SmolVLM runs several times faster (benchmarks/stages.py), but answers and label probabilities are then those of
    a bf16 model, and an ``auto`` that chose by CPU type would make one export score differently on different nodes
    of a cluster; on CPUs without bf16 instructions it is emulated and slower. The tiny preset trains in float32.
    Example: ``resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)``.
    """
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dt = getattr(torch, dtype.replace("torch.", ""))
    else:
        dt = dtype
    return dev, dt


def _configure_images(processor, image_splitting: bool | None, longest_edge: int | None) -> None:
    # Both decide the cost: a 2200x1700 page is 17 tiles with splitting (SmolVLM), 1 without.
    ip = processor.image_processor
    if image_splitting is not None:
        ip.do_image_splitting = bool(image_splitting)
    if longest_edge is not None:
        ip.size = {"longest_edge": int(longest_edge)}


def _read_sidecar(folder: Path) -> tuple[ImagePrep, TinySpec | None, str | None]:
    path = folder / SIDECAR
    if not path.exists():
        return ImagePrep(), None, None
    data = json.loads(path.read_text())
    spec = TinySpec.from_dict(data["tiny_spec"]) if data.get("tiny_spec") else None
    return ImagePrep(**data.get("prep", {})), spec, data.get("adapter")


def _tiny_spec(tiny: TinySpec | dict | None) -> TinySpec:
    if isinstance(tiny, TinySpec):
        return tiny
    defaults = TinySpec().to_dict()
    unknown = set(tiny or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown tiny override(s) {sorted(unknown)}; TinySpec has {sorted(defaults)}")
    return TinySpec.from_dict({**defaults, **(tiny or {})})


def _localise(uri: str) -> str:
    # s3:// models and adapters are copied to a local folder once (HF loaders read local files)
    from ecg import storage

    return storage.download_dir(uri) if storage.is_s3(uri) else uri


ATTENTION = "sdpa"  # torch's fused attention, on CPU as on GPU (flash kernels in bf16 and fp32 alike)


def _from_hf(source: str, dtype, device):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(source)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, attn_implementation=ATTENTION)
    except ValueError:  # a model family without SDPA support: its own default
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    return model, processor


def _from_config(folder: str, dtype, device, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if not (Path(folder) / "config.json").exists():
        raise FileNotFoundError(f"random:{folder}: no config.json in that folder")
    config = AutoConfig.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same random weights every time: comparable benchmark runs
    try:
        with torch.device(device):  # "meta" builds the architecture without memory (parameter counts)
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=ATTENTION)
    finally:
        torch.random.set_rng_state(state)
    return model, processor


def load(
    model: str,
    *,
    adapter: str | None = None,
    device="auto",
    dtype="auto",
    image_splitting: bool | None = None,
    longest_edge: int | None = None,
    tiny: TinySpec | dict | None = None,
) -> Loaded:
    """Load ``model`` ("tiny", a HF id, a local folder, or "random:PATH") and an optional LoRA ``adapter``.

    ``image_splitting``/``longest_edge`` override the processor (None keeps its own default: off for tiny, on
    for SmolVLM). ``tiny``: a :class:`TinySpec` or a dict of overrides of its defaults (model "tiny" only).
    Returns a :class:`Loaded` in eval mode on ``device`` with ``dtype``.
    """
    dev, dt = resolve_device_dtype(device, dtype)
    name = model  # an s3:// model keeps its URI as its name; the files are read from a local copy
    model, adapter = _localise(model), _localise(adapter) if adapter else adapter
    spec, prep = None, ImagePrep()
    if model == "tiny":
        from vlm.tiny import build

        spec = _tiny_spec(tiny)
        net, processor = build(spec)
        prep = ImagePrep("ecg_gray", spec.image_size, spec.white_fraction)
    elif tiny:
        raise ValueError(f"tiny overrides given but model is {model!r}, not 'tiny'")
    elif model.startswith("random:"):
        net, processor = _from_config(model[len("random:") :], dt, dev)
    else:
        folder = Path(model)
        if folder.is_dir():
            prep, spec, saved_adapter = _read_sidecar(folder)
            if saved_adapter and not adapter:  # an export written with merge_adapter=False
                adapter = str(folder / saved_adapter)
        elif model.startswith((".", "/")) or model.count("/") != 1:
            raise FileNotFoundError(f"model {model!r}: not a preset ('tiny', 'random:PATH'), folder or HF id")
        net, processor = _from_hf(model, dt, dev)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"adapter {adapter!r}: no adapter_config.json in that folder")
        net = PeftModel.from_pretrained(net, adapter)
    _configure_images(processor, image_splitting, longest_edge)
    processor.tokenizer.padding_side = "left"
    net = net.to(device=dev, dtype=dt).eval()
    return Loaded(net, processor, name, dev, dt, prep, spec, adapter)
