"""The fine-tuning loop: trainable-parameter setup, cached batches, schedule, steps, checkpoints, validation.

Plain torch, no Ray: the Ray Train worker (``pipelines/train.py``) and a plain-process baseline
(``benchmarks/train.py``) run the same :func:`train_loop`. Distributed data parallel is used when the
caller has wrapped the model in DDP (``ray.train.torch.prepare_model`` does); every collective here is a
no-op in a single process.

Example (one process)::

    loaded = vlm.load("tiny")
    model = configure_trainable(loaded.model, mode="full")
    cached = encode_rows(loaded, rows)                       # once: decode, preprocess, tokenize
    collate = Collator.for_loaded(loaded)
    opt = build_optimizer(model, lr=1e-3)
    batches = lambda epoch: iter_cached(cached, batch_size=16, seed=epoch, collate=collate)
    state = train_loop(model, opt, batches, LoopSettings(max_steps=100))
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

# Text-model attention projections of Idefics3 / SmolVLM (the vision tower's are ``...vision_model...``).
TEXT_ATTENTION = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)"
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


# ---------------------------------------------------------------- trainable parameters
def configure_trainable(model, *, mode: str = "lora", lora_rank: int = 8, lora_alpha: int = 16,
                        lora_dropout: float = 0.05, lora_targets: str | list[str] = TEXT_ATTENTION,
                        freeze_vision: bool = True):
    """Make the right parameters trainable; returns the model (a ``peft`` model for ``mode="lora"``).

    ``mode="full"`` trains every weight (the vision tower too unless ``freeze_vision``);
    ``mode="lora"`` freezes the base and adds rank-``lora_rank`` adapters on ``lora_targets``
    (a regex over module names or a list of names; default: the text model's q/k/v/o projections).
    With ``freeze_vision=False`` under LoRA the vision tower is fully trained beside the adapters.

    Example: ``configure_trainable(loaded.model, mode="lora", lora_rank=16)``.
    """
    if mode not in ("lora", "full"):
        raise ValueError(f"finetune mode must be 'lora' or 'full', got {mode!r}")
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=lora_targets, bias="none")
        model = get_peft_model(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    for name, p in model.named_parameters():
        if "vision_model" in name and "lora_" not in name:
            p.requires_grad_(not freeze_vision)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"no trainable parameters (mode={mode}, targets={lora_targets!r})")
    return model


def load_for_training(model: str, *, tiny: dict | None = None, device="cpu", dtype="float32"):
    """``vlm.load`` for training: float32 master weights (bf16 comes from autocast), and for ``tiny`` optional
    :class:`vlm.tiny.TinySpec` overrides (e.g. ``{"image_size": 448, "patch_size": 32}``) that vlm.export records.
    """
    import vlm
    from vlm.load import ImagePrep, Loaded, resolve_device_dtype
    from vlm.tiny import TinySpec, build

    if model != "tiny" or not tiny:
        if tiny:
            raise ValueError(f"tiny overrides {sorted(tiny)} given but model is {model!r}, not 'tiny'")
        return vlm.load(model, device=device, dtype=dtype)
    spec = TinySpec.from_dict({**TinySpec().to_dict(), **tiny})
    unknown = set(tiny) - set(spec.to_dict())
    if unknown:
        raise ValueError(f"unknown tiny override(s) {sorted(unknown)}; TinySpec has {sorted(spec.to_dict())}")
    dev, dt = resolve_device_dtype(device, dtype)
    net, processor = build(spec)
    processor.tokenizer.padding_side = "left"
    prep = ImagePrep("ecg_gray", spec.image_size, spec.white_fraction)
    return Loaded(net.to(device=dev, dtype=dt).eval(), processor, "tiny", dev, dt, prep, spec)


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def unwrap(model):
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- cached batches
def _pixel_codec(loaded) -> tuple[float, np.ndarray, np.ndarray] | None:
    """``(rescale, mean, std)`` that map uint8 pixels to the processor's ``pixel_values``, if it rescales+normalizes."""
    ip = getattr(loaded.processor, "image_processor", None)
    if ip is None or not getattr(ip, "do_rescale", False) or not getattr(ip, "do_normalize", False):
        return None
    mean = np.asarray(ip.image_mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(ip.image_std, np.float32).reshape(3, 1, 1)
    return float(ip.rescale_factor), mean, std


def encode_rows(loaded, batch) -> dict[str, np.ndarray]:
    """Sample rows -> cached training examples, computed once (the processor dominates a step otherwise).

    ``batch``: pandas DataFrame or dict of columns with ``image`` (PNG/JPEG bytes), ``question``, ``answer``.
    Returns per-row arrays: ``input_ids``/``attention_mask``/``labels`` unpadded (object arrays of int64
    vectors), ``pixels`` (rows, images, 3, H, W) as uint8 when the processor's normalisation is invertible
    (4x smaller; :class:`Collator` restores the exact float values), else float32, and ``pixel_attention_mask``
    when the processor makes one.
    Example: ``encode_rows(loaded, df)["labels"][0]`` -> ``array([-100, ..., 17, 2])``.
    """
    from vlm.training import collate

    cols = {k: list(batch[k]) for k in ("image", "question", "answer")}
    ids = list(batch["id"]) if "id" in batch else list(range(len(cols["image"])))
    images = [decode_image(i, data) for i, data in zip(ids, cols["image"])]
    enc = collate(loaded, images, cols["question"], cols["answer"])  # applies loaded.prepare_image
    keep = enc["attention_mask"].bool()
    out: dict[str, np.ndarray] = {}
    for key in SEQUENCE_KEYS:
        rows = [enc[key][i][keep[i]].numpy().astype(np.int64) for i in range(len(images))]
        out[key] = np.empty(len(rows), dtype=object)
        out[key][:] = rows
    pv = enc["pixel_values"].float().numpy()  # (rows, images, 3, H, W), normalised
    codec = _pixel_codec(loaded)
    if codec is not None:
        rescale, mean, std = codec
        u8 = np.clip(np.rint((pv * std + mean) / rescale), 0, 255).astype(np.uint8)
        if np.abs((u8.astype(np.float32) * rescale - mean) / std - pv).max() < 1e-3:
            pv = u8
            if (u8[:, :, :1] == u8).all():  # a gray page copied to RGB: keep one channel (3x less memory)
                pv = np.ascontiguousarray(u8[:, :, :1])
    out["pixels"] = pv
    if "pixel_attention_mask" in enc:
        out["pixel_attention_mask"] = enc["pixel_attention_mask"].numpy().astype(bool)
    return out


@dataclass
class Collator:
    """Cached rows (from :func:`encode_rows`) -> a right-padded model batch of tensors.

    Example: ``Collator.for_loaded(loaded)(rows)["input_ids"].shape`` -> ``(B, T)``.
    """

    pad_id: int
    codec: tuple | None = None

    @classmethod
    def for_loaded(cls, loaded) -> "Collator":
        tok = getattr(loaded.processor, "tokenizer", loaded.processor)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(pad_id=int(pad), codec=_pixel_codec(loaded))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        n = len(rows["input_ids"])
        width = max(len(x) for x in rows["input_ids"])
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": -100}
        out = {}
        for key, value in fill.items():
            t = torch.full((n, width), value, dtype=torch.long)
            for i, seq in enumerate(rows[key]):
                t[i, : len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
            out[key] = t
        pixels = np.stack(list(rows["pixels"])) if rows["pixels"].dtype == object else rows["pixels"]
        pv = torch.from_numpy(np.ascontiguousarray(pixels))
        if pv.dtype == torch.uint8:
            rescale, mean, std = self.codec
            pv = pv.expand(-1, -1, 3, -1, -1) if pv.shape[2] == 1 else pv  # (B, images, 3, H, W)
            pv = (pv.float() * rescale - torch.from_numpy(mean)) / torch.from_numpy(std)
        out["pixel_values"] = pv.float()
        if "pixel_attention_mask" in rows:
            pam = rows["pixel_attention_mask"]
            pam = np.stack(list(pam)) if pam.dtype == object else pam
            out["pixel_attention_mask"] = torch.from_numpy(np.ascontiguousarray(pam)).bool()
        return out


def iter_cached(cached: dict[str, np.ndarray], *, batch_size: int, seed: int, collate: Collator,
                rank: int = 0, world: int = 1) -> Iterable[dict[str, torch.Tensor]]:
    """Shuffled batches over in-memory cached rows (this rank's equal share); the plain-process path."""
    n = len(cached["input_ids"])
    order = np.random.default_rng(seed).permutation(n)
    per_rank = n // world
    order = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        yield collate({k: v[idx] for k, v in cached.items()})


# ---------------------------------------------------------------- schedule
def lr_factor(progress: float, *, warmup_fraction: float, min_ratio: float = 0.0, cosine: bool = True) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: linear warmup, then cosine decay to ``min_ratio``.

    Progress is a fraction of the run (steps or minutes, whichever is further), so a run bounded by
    time still anneals. Example: ``lr_factor(0.5, warmup_fraction=0.0)`` -> ``0.5``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return progress / warmup_fraction
    if not cosine:
        return 1.0
    tail = (progress - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * tail))


def build_optimizer(model, *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0):
    """AdamW over trainable parameters; no weight decay on biases, norms and embeddings' 1-D weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


# ---------------------------------------------------------------- the loop
@dataclass
class LoopSettings:
    """How long and how to step. A run ends at ``max_steps`` optimizer steps or ``max_minutes``, whichever first."""

    max_steps: int | None = 100
    max_minutes: float | None = None
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    cosine: bool = True
    grad_accum: int = 1  # micro-batches per optimizer step
    clip: float = 1.0  # max gradient norm
    bf16: bool = False  # bf16 autocast (GPU)
    log_every: int = 10  # steps between progress lines
    checkpoint_every: int | None = None  # steps between checkpoints
    validate_every: int | None = None  # steps between validations
    stop_after_steps: int | None = None  # stop as if interrupted after this many steps of this invocation (tests)


@dataclass
class LoopState:
    """What a checkpoint restores: the step counter, time spent, samples seen, the epoch, recent history."""

    step: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    epoch: int = 0
    start_step: int = 0  # the step this invocation started from (> 0 after a resume)
    interrupted: bool = False
    losses: list = field(default_factory=list)  # [(step, mean loss over the log window, elapsed seconds)]
    validations: list = field(default_factory=list)  # [{"step": s, **metrics}]


@dataclass
class Hooks:
    """Callbacks the caller provides; each gets the live :class:`LoopState`."""

    log: Callable[[str], None] = print
    checkpoint: Callable[[LoopState], None] | None = None  # every rank calls it (Ray's report is collective)
    validate: Callable[[LoopState], dict | None] | None = None  # rank 0 computes; others return None


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _reduce(value: float, op: str) -> float:
    """All-reduce one number across ranks (``"min"``, ``"max"``, ``"sum"``); identity in one process."""
    import torch.distributed as dist

    if _world()[1] == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return float(t.item())


def _progress(state: LoopState, s: LoopSettings) -> float:
    parts = [0.0]
    if s.max_steps:
        parts.append(state.step / s.max_steps)
    if s.max_minutes:
        parts.append(state.elapsed_s / (60.0 * s.max_minutes))
    return _reduce(max(parts), "max")  # every rank must agree on the schedule and on stopping


def _micro_step(model, batch: dict, settings: LoopSettings, device) -> float:
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
        loss = model(**batch).loss
    (loss / settings.grad_accum).backward()
    return float(loss.detach())


def train_loop(model, optimizer, batches: Callable[[int], Iterable[dict]], settings: LoopSettings,
               state: LoopState | None = None, hooks: Hooks | None = None) -> LoopState:
    """Run optimizer steps until ``max_steps`` / ``max_minutes`` (or ``stop_after_steps``); returns the state.

    ``batches(epoch)`` yields model batches (dicts of tensors with ``labels``). Under DDP every rank steps
    in lockstep: an epoch ends on all ranks when any rank runs out of batches.
    Example: ``train_loop(model, opt, lambda e: loader, LoopSettings(max_steps=50)).step`` -> ``50``.
    """
    from contextlib import nullcontext

    state = state or LoopState()
    hooks = hooks or Hooks()
    rank, world = _world()
    state.start_step = state.step
    device = next(model.parameters()).device
    base_elapsed, t_start = state.elapsed_s, time.monotonic()
    window, window_t, window_samples = [], time.monotonic(), 0
    progress = progress0 = _progress(state, settings)
    model.train()
    while progress < 1.0 and not state.interrupted:
        iterator, stepped = iter(batches(state.epoch)), False
        while progress < 1.0:
            micro = []
            for _ in range(settings.grad_accum):
                b = next(iterator, None)
                if _reduce(b is not None, "min") < 1:
                    break
                micro.append(b)
            if len(micro) < settings.grad_accum:
                break  # epoch over (a partial accumulation is dropped on every rank alike)
            # the schedule at the step being taken (so warmup's first step is not a wasted lr=0 step)
            step_progress = max(progress, (state.step + 1) / settings.max_steps if settings.max_steps else 0.0)
            lr = settings.lr * lr_factor(step_progress, warmup_fraction=settings.warmup_fraction,
                                         min_ratio=settings.min_lr_ratio, cosine=settings.cosine)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for i, b in enumerate(micro):
                sync = i == len(micro) - 1 or not hasattr(model, "no_sync")
                with nullcontext() if sync else model.no_sync():
                    window.append(_micro_step(model, b, settings, device))
                n = len(b["input_ids"])
                window_samples += n
                state.samples += n * world
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            stepped = True
            state.elapsed_s = base_elapsed + time.monotonic() - t_start
            progress = _progress(state, settings)
            if state.step % settings.log_every == 0 or progress >= 1.0:
                loss = _reduce(sum(window) / len(window), "sum") / world
                rate = _reduce(window_samples / max(1e-9, time.monotonic() - window_t), "sum")
                state.losses.append((state.step, round(loss, 5), round(state.elapsed_s, 3)))
                run_s = time.monotonic() - t_start
                eta = run_s / max(1e-9, progress - progress0) * (1.0 - progress) / 60 if progress < 1 else 0.0
                if rank == 0:
                    hooks.log(f"step {state.step} loss {loss:.4f} lr {lr:.2e} samples/s {rate:.1f} "
                              f"epoch {state.epoch} elapsed {state.elapsed_s / 60:.1f} min eta {eta:.1f} min")
                window, window_t, window_samples = [], time.monotonic(), 0
            if settings.validate_every and hooks.validate and state.step % settings.validate_every == 0:
                run_validation(model, state, hooks)
            if settings.checkpoint_every and hooks.checkpoint and state.step % settings.checkpoint_every == 0:
                hooks.checkpoint(state)
            if settings.stop_after_steps and state.step - state.start_step >= settings.stop_after_steps:
                state.interrupted = True
                break
        if not stepped and progress < 1.0 and not state.interrupted:
            raise RuntimeError(f"epoch {state.epoch} produced no full step: fewer rows than "
                               f"batch_size x grad_accum x workers?")
        if not state.interrupted:
            state.epoch += 1
    return state


def run_validation(model, state: LoopState, hooks: Hooks) -> None:
    """Call ``hooks.validate`` in eval mode and keep its result in ``state.validations``."""
    model.eval()
    try:
        result = hooks.validate(state)
    finally:
        model.train()
    if result is not None:
        state.validations.append({"step": state.step, **result})


# ---------------------------------------------------------------- checkpoints
def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (the LoRA adapter, or every weight for full fine-tuning), on CPU."""
    model = unwrap(model)
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: str, model, optimizer, state: LoopState) -> str:
    """Write ``trainable.pt``, ``optimizer.pt`` and ``state.json`` into ``directory``; returns it."""
    os.makedirs(directory, exist_ok=True)
    torch.save(trainable_state(model), os.path.join(directory, "trainable.pt"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump(asdict(state), f)
    return directory


def load_checkpoint(directory: str, model, optimizer=None) -> LoopState:
    """Restore what :func:`save_checkpoint` wrote; returns the saved :class:`LoopState`."""
    weights = torch.load(os.path.join(directory, "trainable.pt"), map_location="cpu")
    missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {directory}: parameters the model does not have: {unexpected[:5]}")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), map_location="cpu"))
    with open(os.path.join(directory, "state.json")) as f:
        data = json.load(f)
    data["losses"] = [tuple(x) for x in data.get("losses", [])]
    return LoopState(**data)


# ---------------------------------------------------------------- validation
def decode_image(row_id, data):
    """PNG/JPEG bytes -> RGB PIL image; a ValueError that names the row."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:
        raise ValueError(f"row {row_id}: cannot decode image: {e}") from e


class Validator:
    """Held-out sample rows encoded once; each call generates with the live training weights and scores them
    with ``metrics.score_frame`` (ECGBench protocol) through the same ``vlm.Predictor`` evaluation uses.

    Example: ``Validator(loaded, model, val_df)()`` -> ``{"f1": 61.2, "auc": 78.0, "hamming_loss": 9.1, ...}``.
    """

    def __init__(self, loaded, model, rows, *, task: str = "code15", batch_size: int = 32):
        import dataclasses

        import pandas as pd

        from metrics.tasks import get_task
        from vlm.predict import Predictor

        self.frame = pd.DataFrame(rows).reset_index(drop=True)
        self.task, self.batch_size = task, batch_size
        self.max_new_tokens = get_task(task).max_new_tokens
        # the same module object as the one being trained: its weights change in place, no copy
        self.predictor = Predictor.from_loaded(dataclasses.replace(loaded, model=unwrap(model)))  # live weights
        self.encoded = [self.predictor.encode_one(decode_image(i, b), q, max_new_tokens=self.max_new_tokens)
                        for i, b, q in zip(self.frame["id"], self.frame["image"], self.frame["question"])]

    def predictions(self) -> list[str]:
        out: list[str] = []
        for s in range(0, len(self.encoded), self.batch_size):
            out += self.predictor.generate_encoded(self.encoded[s:s + self.batch_size],
                                                   max_new_tokens=self.max_new_tokens)
        return out

    def __call__(self, state: LoopState | None = None) -> dict:
        import pandas as pd

        from metrics import score_frame

        frame = pd.DataFrame({"id": self.frame["id"], "answer": self.frame["answer"], "prediction": self.predictions()})
        scored = score_frame(self.task, frame, protocol="ecgbench")
        out = {k: float(v) for k, v in scored.items()
               if k in ("f1", "auc", "hamming_loss", "anls", "accuracy") and isinstance(v, (int, float))}
        per_class = (scored.get("ecgbench") or {}).get("per_class") or {}
        out.update({f"f1_{c}": float(m["f1"]) for c, m in per_class.items() if "f1" in m})
        return out
