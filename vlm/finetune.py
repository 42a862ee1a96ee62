"""The fine-tuning loop: trainable-parameter setup, schedule, steps, checkpoints, validation.

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

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch

from vlm.training import Collator, decode_image, encode_rows, iter_cached  # noqa: F401  (the data side)

# Text-model attention projections: ``...text_model...`` in Idefics3 / SmolVLM and Idefics2, ``...language_model...``
# in Qwen2-VL, Qwen2.5-VL and LLaVA (the vision towers' are under vision_model / visual / vision_tower).
TEXT_ATTENTION = r".*(text_model|language_model).*\.(q_proj|k_proj|v_proj|o_proj)"
VISION_MODULES = ("vision_model", "visual.", "vision_tower")  # name parts of the vision towers' parameters


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
        if any(part in name for part in VISION_MODULES) and "lora_" not in name:
            p.requires_grad_(not freeze_vision)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"no trainable parameters (mode={mode}, targets={lora_targets!r})")
    return model


def load_for_training(model: str, *, tiny: dict | None = None, device="cpu", dtype="float32",
                      image_splitting: bool | None = None, longest_edge: int | None = None,
                      config_overrides: dict | None = None):
    """``vlm.load`` for training: float32 master weights (bf16 comes from autocast); ``tiny`` overrides for the
    tiny preset (e.g. ``{"image_size": 448, "patch_size": 32}``), ``config_overrides`` for ``random:PATH``, and
    the image settings the model is trained with (vlm.export records all of them)."""
    import vlm

    return vlm.load(model, device=device, dtype=dtype, tiny=tiny, image_splitting=image_splitting,
                    longest_edge=longest_edge, config_overrides=config_overrides)


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (less memory, about a third more compute).

    Non-reentrant checkpointing, plus the input-grad hook for adapters: with a frozen base (LoRA) no input of a
    checkpointed block requires grad, and reentrant checkpointing would then pass no gradient to the adapters.
    """
    base = unwrap(model)
    inner = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft wrapper
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers 5 name
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(inner, "enable_input_require_grads"):
        inner.enable_input_require_grads()
    inner.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def unwrap(model):
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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
    bf16: bool = False  # bf16 autocast (GPU, or a CPU with native bf16: autocast_bf16)
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
    logged: Callable[[LoopState], None] | None = None  # rank 0, after each logged step (``state.losses[-1]``)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device():
    """The device a collective's tensors must live on: the current CUDA device under NCCL, else the CPU (gloo)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(value: float, op: str) -> float:
    """All-reduce one number across ranks (``"min"``, ``"max"``, ``"sum"``); identity in one process."""
    import torch.distributed as dist

    if _world()[1] == 1:
        return value
    # float64 for exact sums of sample counts; NCCL reduces float64 on CUDA tensors as gloo does on CPU ones
    t = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return float(t.item())


def _progress(state: LoopState, s: LoopSettings) -> float:
    parts = [0.0]
    if s.max_steps:
        parts.append(state.step / s.max_steps)
    if s.max_minutes:
        parts.append(state.elapsed_s / (60.0 * s.max_minutes))
    return _reduce(max(parts), "max")  # every rank must agree on the schedule and on stopping


def autocast_bf16(setting: bool | str | None, use_gpu: bool) -> bool:
    """Whether training autocasts to bf16: ``None`` with a GPU; ``"auto"`` also on a CPU that computes bf16 natively
    (AVX-512 BF16 or AMX; on two such cores the tiny model's plain loop stepped 13% faster; docs/training.md);
    a bool as given. Example: ``autocast_bf16(None, False) is False``."""
    if setting == "auto":
        from vlm.cpu_engine import native_bf16

        return use_gpu or native_bf16()
    return use_gpu if setting is None else bool(setting)


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
                while b is not None and len(b["input_ids"]) == 0:  # every row of it failed to encode
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
                    if hooks.logged:
                        hooks.logged(state)
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


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's ``state_dict`` as ``({"state.<param>.<key>": tensor}, json-able rest)``: per-parameter
    tensors (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``) for safetensors, the param groups and any
    non-tensor state for JSON. :func:`optimizer_state` is the inverse."""
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The ``state_dict`` that :func:`optimizer_tensors` flattened (tuples such as ``betas`` restored)."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in rest.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(directory: str, model, optimizer, state: LoopState) -> str:
    """Write ``trainable.safetensors``, ``optimizer.safetensors`` + ``optimizer.json`` and ``state.json`` into
    ``directory`` (tensors and JSON only: loading a checkpoint runs no pickled code); returns it."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    weights = {k: v.contiguous() for k, v in trainable_state(model).items()}
    save_file(weights, os.path.join(directory, "trainable.safetensors"))
    tensors, rest = optimizer_tensors(optimizer)
    save_file(tensors, os.path.join(directory, "optimizer.safetensors"))
    with open(os.path.join(directory, "optimizer.json"), "w") as f:
        json.dump(rest, f)
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump(asdict(state), f)
    return directory


def load_checkpoint(directory: str, model, optimizer=None) -> LoopState:
    """Restore what :func:`save_checkpoint` wrote; returns the saved :class:`LoopState`."""
    from safetensors.torch import load_file

    path = os.path.join(directory, "trainable.safetensors")
    if not os.path.exists(path):
        old = " (trainable.pt: a pickled checkpoint of an earlier version, not loaded)" if os.path.exists(
            os.path.join(directory, "trainable.pt")) else ""
        raise FileNotFoundError(f"checkpoint {directory}: no trainable.safetensors{old}")
    missing, unexpected = unwrap(model).load_state_dict(load_file(path), strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {directory}: parameters the model does not have: {unexpected[:5]}")
    if optimizer is not None:
        with open(os.path.join(directory, "optimizer.json")) as f:
            rest = json.load(f)
        optimizer.load_state_dict(optimizer_state(load_file(os.path.join(directory, "optimizer.safetensors")), rest))
    with open(os.path.join(directory, "state.json")) as f:
        data = json.load(f)
    data["losses"] = [tuple(x) for x in data.get("losses", [])]
    return LoopState(**data)

