"""Load a model and its processor from a preset name, a Hugging Face id, a local folder or ``random:PATH``.

Example::

    import vlm
    loaded = vlm.load("tiny")                                   # offline, seeded, 0.9 M parameters
    loaded = vlm.load("random:../shared/models/SmolVLM-256M-Instruct", image_splitting=False)
    loaded = vlm.load("runs/x/export")                          # a folder written by vlm.export
    loaded = vlm.load("tiny", adapter="runs/x/adapter")         # a LoRA adapter (peft) on top
    loaded = vlm.load("tiny:qwen2_vl")                          # a tiny random model of another family
    page = loaded.prepare_image(pil_page)                       # the model's own image preprocessing
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

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
    flatten: bool = False  # ecg_gray: divide by the local paper level first (photos: shadows, uneven light)

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.kind == "identity":
            return image if image.mode == "RGB" else image.convert("RGB")
        if self.kind != "ecg_gray":
            raise ValueError(f"ImagePrep: unknown kind {self.kind!r}")
        gray = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        level = np.asarray(gray, dtype=np.float32)  # (size, size), 0 = black ink .. 255 = white paper
        if self.flatten:
            # Flat-field: divide each pixel by the paper's own level around it, so shadows, uneven light and tinted
            # paper stretch like a scan. The paper level is a grey closing (a max filter wider than a trace, then a
            # min filter as wide): traces and grid lines vanish from it, while a wide dark region (the table around a
            # photographed page) keeps its own level and so turns white instead of leaving a dark band at the edge.
            k = max(3, (self.size // 64) | 1)  # 7 px at 448: wider than a trace, narrower than a lead's row
            closed = _rank_filter(_rank_filter(level, k, np.maximum), k, np.minimum)
            paper = Image.fromarray(closed.astype(np.uint8), mode="L").filter(ImageFilter.BoxBlur(2))
            level = 255.0 * level / np.maximum(np.asarray(paper, dtype=np.float32), 1.0)
        lo = float(np.percentile(level, 1))  # darkest trace ink
        background = float(np.percentile(level, 50))  # most of a page is paper
        hi = lo + self.white_fraction * (background - lo)
        if hi - lo < 1.0:  # blank or flat image: nothing to stretch
            return gray.convert("RGB")
        stretched = np.clip((level - lo) / (hi - lo), 0.0, 1.0) * 255.0
        return Image.fromarray(stretched.round().astype(np.uint8), mode="L").convert("RGB")


def _rank_filter(a: np.ndarray, k: int, op) -> np.ndarray:
    """A k x k max (``op=np.maximum``) or min (``np.minimum``) filter of a 2-D array, edges repeated: two 1-D passes
    of k - 1 elementwise ops (PIL's MaxFilter takes k * k per pixel: a 448 px page's preparation took 80 ms with it,
    17 ms with this)."""
    r = k // 2
    rows = np.pad(a, [(r, r), (0, 0)], mode="edge")
    out = rows[: a.shape[0]].copy()
    for i in range(1, k):
        op(out, rows[i:i + a.shape[0]], out=out)
    cols = np.pad(out, [(0, 0), (r, r)], mode="edge")
    out = cols[:, : a.shape[1]].copy()
    for i in range(1, k):
        op(out, cols[:, i:i + a.shape[1]], out=out)
    return out


@dataclass(frozen=True)
class ImageSettings:
    """How the processor cuts a page into vision tiles: the one image contract of training, evaluation and serving.

    ``splitting``: SmolVLM's image splitting (a 1100 x 850 page resized to ``longest_edge`` 2048 px becomes 16 tiles
    of ``tile`` = 512 px plus a global view: 17 tiles, 1,088 image tokens; off: 1 tile, 64 tokens).
    ``longest_edge``: px the page is resized to first. None leaves a setting as the processor has it.
    Example: ``ImageSettings.of(processor).describe()`` -> ``"splitting on, pages resized to 2048 px, 512 px tiles"``.
    """

    splitting: bool | None = None
    longest_edge: int | None = None
    tile: int | None = None

    @classmethod
    def of(cls, processor) -> "ImageSettings":
        ip = getattr(processor, "image_processor", None)
        size = dict(getattr(ip, "size", None) or {})
        tile = dict(getattr(ip, "max_image_size", None) or {})
        return cls(getattr(ip, "do_image_splitting", None), size.get("longest_edge"), tile.get("longest_edge"))

    @classmethod
    def from_dict(cls, data: dict | None) -> "ImageSettings":
        return cls(**{k: v for k, v in (data or {}).items() if k in ("splitting", "longest_edge", "tile")})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def apply(self, processor) -> None:
        """Set the given fields on ``processor``'s image processor (None fields are left as they are).

        Only SmolVLM-style processors (Idefics3: image splitting, longest edge, tile size) have these settings;
        other families' processors are left as they are (their sizes mean other things, e.g. Qwen's pixel counts).
        """
        ip = getattr(processor, "image_processor", None)
        if ip is None or not hasattr(ip, "max_image_size"):
            return
        if self.splitting is not None:
            ip.do_image_splitting = bool(self.splitting)
        if self.longest_edge is not None:
            ip.size = {"longest_edge": int(self.longest_edge)}
        if self.tile is not None:
            ip.max_image_size = {"longest_edge": int(self.tile)}

    def describe(self) -> str:
        parts = [f"splitting {'on' if self.splitting else 'off'}"]
        if self.longest_edge:
            parts.append(f"pages resized to {self.longest_edge} px")
        if self.tile:
            parts.append(f"{self.tile} px tiles")
        return ", ".join(parts)


@dataclass
class Loaded:
    """A model ready to run: ``model`` (eval mode, on ``device``; None from :func:`load_processor`), its
    ``processor`` and the image recipe (``prep`` before the processor, ``images`` inside it)."""

    model: Any
    processor: Any
    name: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    prep: ImagePrep = field(default_factory=ImagePrep)
    spec: TinySpec | None = None  # the tiny preset's sizes, when the model came from it
    adapter: str | None = None
    images_from: str = "the processor's own config"  # where the image settings came from (printed by the jobs)
    family: str = "idefics3"  # the model family (config.model_type's adapter in vlm/families/)

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The model's own preprocessing of a page (identity for pretrained models)."""
        return self.prep(image)

    @property
    def images(self) -> ImageSettings:
        return ImageSettings.of(self.processor)

    def describe_images(self) -> str:
        """One line for logs: ``"images: splitting on, pages resized to 2048 px, 512 px tiles (from ...)"``."""
        return f"images: {self.images.describe()} ({self.images_from})"

    def sidecar(self) -> dict:
        """What vlm.export writes to ``ecgvlm.json`` so a reload prepares and tiles images the same way."""
        return {
            "format": 2,
            "source": self.name,
            "adapter": self.adapter,
            "prep": dataclasses.asdict(self.prep),
            "images": self.images.to_dict(),
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


@dataclass(frozen=True)
class _Sidecar:
    prep: ImagePrep = field(default_factory=ImagePrep)
    spec: TinySpec | None = None
    adapter: str | None = None
    images: ImageSettings | None = None  # None: an export written before the image contract was recorded


def _read_sidecar(folder: Path) -> _Sidecar:
    path = folder / SIDECAR
    if not path.exists():
        return _Sidecar()
    data = json.loads(path.read_text())
    spec = TinySpec.from_dict(data["tiny_spec"]) if data.get("tiny_spec") else None
    images = ImageSettings.from_dict(data["images"]) if data.get("images") else None
    return _Sidecar(ImagePrep(**data.get("prep", {})), spec, data.get("adapter"), images)


def _tiny_spec(tiny: TinySpec | dict | None) -> TinySpec:
    if isinstance(tiny, TinySpec):
        return tiny
    defaults = TinySpec().to_dict()
    unknown = set(tiny or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown tiny override(s) {sorted(unknown)}; TinySpec has {sorted(defaults)}")
    return TinySpec.from_dict({**defaults, **(tiny or {})})


def _localise(uri: str, *, config_only: bool = False) -> str:
    # s3:// models and adapters are copied to a local folder once (HF loaders read local files);
    # config_only skips the weights (a processor needs the small files only)
    from ecg import storage

    if not storage.is_s3(uri):
        return uri
    return storage.download_dir(uri, skip_suffixes=(".safetensors", ".bin") if config_only else ())


def _with_overrides(config, overrides: dict | None):
    """Apply nested ``overrides`` to a transformers config (``{"text_config": {"num_hidden_layers": 2}}``)."""
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"config override {key!r}: {type(config).__name__} has no such field")
        if isinstance(value, dict) and hasattr(getattr(config, key), "to_dict"):
            _with_overrides(getattr(config, key), value)
        else:
            setattr(config, key, value)
    return config


ATTENTION = "sdpa"  # torch's fused attention, on CPU as on GPU (flash kernels in bf16 and fp32 alike)


def _from_hf(source: str, dtype, device):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, attn_implementation=ATTENTION)
    except ValueError:  # a model family without SDPA support: its own default
        return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)


def _from_config(folder: str, dtype, device, seed: int = 0, overrides: dict | None = None):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if not (Path(folder) / "config.json").exists():
        raise FileNotFoundError(f"random:{folder}: no config.json in that folder")
    config = _with_overrides(AutoConfig.from_pretrained(folder), overrides)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same random weights every time: comparable benchmark runs
    try:
        with torch.device(device):  # "meta" builds the architecture without memory (parameter counts)
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=ATTENTION)
    finally:
        torch.random.set_rng_state(state)
    return model


@dataclass(frozen=True)
class _Source:
    """Where a model's files are: ``kind`` tiny / random / folder / hub, and what its folder's sidecar says."""

    kind: str  # tiny / tiny_family / random / folder / hub
    path: str  # the local folder, the config folder (random), the hub id or the tiny family's name
    sidecar: _Sidecar = field(default_factory=_Sidecar)
    spec: TinySpec | None = None


def _source(model: str, tiny, overrides) -> _Source:
    if model.startswith("tiny:"):
        from vlm.tiny_families import FAMILIES

        name = model[len("tiny:"):]
        if name not in FAMILIES:
            raise ValueError(f"model {model!r}: no such tiny family; choose tiny (SmolVLM) or one of "
                             f"{', '.join('tiny:' + f for f in FAMILIES)}")  # fmt: skip
        if tiny or overrides:
            raise ValueError(f"model {model!r}: tiny families take no tiny=... or config overrides")
        return _Source("tiny_family", name)
    if model == "tiny":
        if overrides:
            raise ValueError("config overrides are for random:PATH models; 'tiny' takes tiny=... (TinySpec) overrides")
        return _Source("tiny", model, spec=_tiny_spec(tiny))
    if tiny:
        raise ValueError(f"tiny overrides given but model is {model!r}, not 'tiny'")
    if model.startswith("random:"):
        return _Source("random", model[len("random:"):])
    if overrides:
        raise ValueError(f"config overrides given but model is {model!r}, not random:PATH")
    folder = Path(model)
    if folder.is_dir():
        sidecar = _read_sidecar(folder)
        return _Source("folder", model, sidecar, sidecar.spec)
    if model.startswith((".", "/")) or model.count("/") != 1:
        raise FileNotFoundError(f"model {model!r}: not a preset ('tiny', 'random:PATH'), folder or HF id")
    return _Source("hub", model)


def _family(src: _Source, name: str):
    """The model family's adapter, before any weights are read (an unsupported type fails here)."""
    from vlm.families import family_of_config, get_family

    if src.kind in ("tiny", "tiny_family"):
        return get_family("idefics3" if src.kind == "tiny" else src.path)
    if src.kind == "random" and not (Path(src.path) / "config.json").exists():
        raise FileNotFoundError(f"random:{src.path}: no config.json in that folder")
    return family_of_config(src.path, model=name)


def _processor(src: _Source, image_splitting: bool | None, longest_edge: int | None, family=None):
    """``(processor, prep, images_from)`` for ``src``, with the image contract applied: the export's recorded
    settings, then the caller's overrides (None keeps the recorded or the processor's own setting)."""
    if src.kind == "tiny":
        from vlm.tiny import build_processor

        processor = build_processor(src.spec)
        prep = ImagePrep("ecg_gray", src.spec.image_size, src.spec.white_fraction, src.spec.flatten)
    elif src.kind == "tiny_family":
        from vlm.tiny_families import build_processor as build_family_processor

        processor, prep = build_family_processor(src.path), ImagePrep()
    elif family is not None and hasattr(family, "load_processor"):
        processor, prep = family.load_processor(src.path), src.sidecar.prep  # e.g. Qwen without a video processor
    else:
        from transformers import AutoProcessor

        processor, prep = AutoProcessor.from_pretrained(src.path), src.sidecar.prep
    images_from = "the processor's own config"
    if src.sidecar.images is not None:
        src.sidecar.images.apply(processor)
        images_from = "as trained, from the model's ecgvlm.json"
    if image_splitting is not None or longest_edge is not None:
        ImageSettings(image_splitting, longest_edge).apply(processor)
        images_from = "set by the caller" if src.sidecar.images is None else "set by the caller over the trained ones"
    processor.tokenizer.padding_side = "left"
    return processor, prep, images_from


def load_processor(model: str, *, image_splitting: bool | None = None, longest_edge: int | None = None,
                   tiny: TinySpec | dict | None = None) -> Loaded:
    """The processor and image recipe of ``model`` without its weights (``Loaded.model`` is None): what a CPU
    stage needs to encode training rows exactly as :func:`load` would. Same arguments as :func:`load`.

    Example: ``load_processor("runs/x/export").images.splitting`` -> what that model was trained with.
    """
    name = model
    model = _localise(model, config_only=True)
    src = _source(model, tiny, None)
    family = _family(src, name)
    processor, prep, images_from = _processor(src, image_splitting, longest_edge, family)
    return Loaded(None, processor, name, None, None, prep, src.spec, None, images_from, family.name)


def load(
    model: str,
    *,
    adapter: str | None = None,
    device="auto",
    dtype="auto",
    image_splitting: bool | None = None,
    longest_edge: int | None = None,
    tiny: TinySpec | dict | None = None,
    config_overrides: dict | None = None,
) -> Loaded:
    """Load ``model`` ("tiny", "tiny:FAMILY", a HF id, a local folder, or "random:PATH") and an optional LoRA
    ``adapter``. Idefics3 (SmolVLM), Idefics2, Qwen2-VL, Qwen2.5-VL, LLaVA-1.5 and LLaVA-NeXT models load
    (vlm/families/); another ``config.model_type`` is an error before any weights are read.

    ``image_splitting``/``longest_edge``: None keeps the image contract the model was trained with (an export's
    ``ecgvlm.json``), else its processor's own default (off for tiny, on for SmolVLM); a value overrides it.
    ``tiny``: a :class:`TinySpec` or a dict of overrides of its defaults (model "tiny" only).
    ``config_overrides``: nested config fields for ``random:PATH`` (a scaled-down real architecture:
    ``{"vision_config": {"num_hidden_layers": 2}, "text_config": {"num_hidden_layers": 2}}``).
    Returns a :class:`Loaded` in eval mode on ``device`` with ``dtype``.
    """
    dev, dt = resolve_device_dtype(device, dtype)
    name = model  # an s3:// model keeps its URI as its name; the files are read from a local copy
    model, adapter = _localise(model), _localise(adapter) if adapter else adapter
    src = _source(model, tiny, config_overrides)
    family = _family(src, name)  # before any weights: an unsupported model type fails here
    processor, prep, images_from = _processor(src, image_splitting, longest_edge, family)
    if src.kind == "tiny":
        from vlm.tiny import build

        net, _ = build(src.spec, processor)
    elif src.kind == "tiny_family":
        from vlm.tiny_families import build as build_family

        net, _ = build_family(src.path, processor)
    elif src.kind == "random":
        net = _from_config(src.path, dt, dev, overrides=config_overrides)
    else:
        if src.sidecar.adapter and not adapter:  # an export written with merge_adapter=False
            adapter = str(Path(src.path) / src.sidecar.adapter)
        net = _from_hf(src.path, dt, dev)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"adapter {adapter!r}: no adapter_config.json in that folder")
        net = PeftModel.from_pretrained(net, adapter)
    net = net.to(device=dev, dtype=dt).eval()
    return Loaded(net, processor, name, dev, dt, prep, src.spec, adapter, images_from, family.name)


def check_model(model: str, adapter: str | None = None) -> None:
    """Raise ``ValueError`` (one line) when ``model`` or ``adapter`` can be seen to be unusable without loading
    anything: an unknown ``tiny:FAMILY``, a folder that does not exist or holds no ``config.json``, a hub id that is
    not in the local cache while ``HF_HUB_OFFLINE`` is set. ``openai:NAME`` is not checked here.

    Example: ``check_model("/wrong")`` -> ``ValueError("--model /wrong: no such folder; ...")``.
    """
    import os

    from ecg import storage

    if model.startswith("openai:") or model == "tiny":
        pass
    elif model.startswith("tiny:"):
        _source(model, None, None)  # names the tiny families
    elif storage.is_s3(model) or model.startswith("random:"):
        folder = model[len("random:"):] if model.startswith("random:") else model
        if not storage.exists(storage.join(folder, "config.json")):
            raise ValueError(f"--model {model}: no config.json in {folder}")
    elif Path(model).expanduser().is_dir():
        if not (Path(model).expanduser() / "config.json").exists():
            raise ValueError(f"--model {model}: a folder without config.json (give an export of ecgvlm train, a saved "
                             "model, or random:FOLDER for a config folder)")
    elif model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ValueError(f"--model {model}: no such folder; a model is tiny, tiny:FAMILY, a Hugging Face id, "
                         "a folder, random:FOLDER or openai:NAME")
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ValueError(f"--model {model}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set "
                             "(unset it to download, or give a folder)")
    if adapter and not storage.exists(adapter):
        raise ValueError(f"--adapter {adapter}: no such folder")
