"""The Hugging Face engine's stages: vision tower, prompt prefill, greedy decoding, label continuations.

Pure functions of a model and processor tensors, so that generation and label scoring share the expensive
parts: the vision tower runs once per image (every tile of a batch together), the prompt runs once per row, and
its KV cache serves both the greedy answer and every scored label continuation. ``vlm.Predictor`` composes them.

Example::

    feats = image_features(model, rows)                               # [(image tokens, hidden)] per row
    prompt = prefill(model, rows, feats, image_token_id=49190, pad_id=2)
    tokens = greedy(model, prompt, max_new_tokens=8, stop_ids=[49279], pad_id=2)   # [[ids], ...] per row
    logps = continuation_logprobs(model, prompt, [(0, [330, 29], 1)], pad_id=2)    # log P(scored tokens)

``rows`` are :meth:`vlm.Predictor.encode_one` outputs: ``input_ids`` (1, T) and the family's image tensors (for
Idefics3 ``pixel_values`` (1, tiles, 3, H, W) and ``pixel_attention_mask`` (1, tiles, H, W); vlm/families/ says
what each other family carries). What differs between model families (the vision call, the prompt's positions) is
asked of the model's adapter, :func:`vlm.families.family_of`.
"""

from __future__ import annotations

import copy
import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Prompt:
    """A prefilled, left-padded batch: everything decoding and label scoring need from the prompt."""

    cache: Any  # the prompt's KV cache (rows, heads, W, head dim per layer); never written to after prefill
    mask: torch.Tensor  # (rows, W) long, 1 on real tokens, 0 on left padding
    lengths: torch.Tensor  # (rows,) long, real tokens per row
    first_logits: torch.Tensor  # (rows, vocab) float32 logits of the answer's first token
    next_positions: torch.Tensor | None = None  # (rows,) long, the answer's first position id; None: ``lengths``
    # (Qwen's multimodal RoPE numbers an image by its grid, so its text goes on from there, not from the length)

    @property
    def starts(self) -> torch.Tensor:
        """(rows,) long: the position id of each row's first new token."""
        return self.lengths if self.next_positions is None else self.next_positions

    @property
    def first_logp(self) -> torch.Tensor:
        return torch.log_softmax(self.first_logits, dim=-1)  # (rows, vocab)


@contextmanager
def timed(timings: dict | None, stage: str, device):
    """Add the seconds spent in the block to ``timings[stage]`` (waits for the GPU on CUDA); no-op for None."""
    if timings is None:
        yield
        return
    sync = torch.cuda.synchronize if getattr(device, "type", "") == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        sync()
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper


def cache_keyword(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(_base(model).forward).parameters else "past_key_values"


def _model_device_dtype(model):
    p = next(_base(model).parameters())
    return p.device, p.dtype


@torch.inference_mode()
def image_features(model, rows: list[dict], *, tiles_per_call: int = 32) -> list[torch.Tensor]:
    """The connector's output per row, ``(image tokens, text hidden)``, in prompt order: the vision tower once per
    image, every row's images together (``tiles_per_call`` tiles a call where the family tiles pages, a bound on
    activation memory: a split SmolVLM page is 17 tiles of 512 x 512 px)."""
    from vlm.families import family_of

    return family_of(model).image_features(model, rows, tiles_per_call=tiles_per_call)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both (rows, longest) long, rows right-aligned. Example: [[5, 6], [7]] ->
    ids [[5, 6], [pad, 7]], mask [[1, 1], [0, 1]]."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq) :] = 1
    return ids, mask


@torch.inference_mode()
def prefill(model, rows: list[dict], features: list[torch.Tensor], *, image_token_id: int, pad_id: int) -> Prompt:
    """Run the prompts (left padded, image tokens replaced by ``features``) once; keep their cache."""
    from vlm.families import family_of

    device, _ = _model_device_dtype(model)
    ids, mask = left_pad([r["input_ids"][0].tolist() for r in rows], pad_id)
    ids, mask = ids.to(device), mask.to(device)  # (B, W)
    embeds = model.get_input_embeddings()(ids)  # (B, W, hidden)
    embeds[ids == image_token_id] = torch.cat(features).to(embeds.device, embeds.dtype)
    # as generate() numbers left-padded rows: (B, W), or (3, B, W) for multimodal RoPE
    positions, starts = family_of(model).positions(model, rows, ids, mask)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                **_keep_last(model))  # fmt: skip
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return Prompt(cache=cache, mask=mask, lengths=mask.sum(-1), first_logits=out.logits[:, -1].float(),
                  next_positions=starts)  # fmt: skip


def _keep_last(model) -> dict:
    # only the last position goes through the LM head: (B, W, vocab) logits would be ~1 GB for split SmolVLM pages
    params = inspect.signature(_base(model).forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50 / older
        if name in params:
            return {name: 1}
    return {}


def select_rows(cache, index: torch.Tensor):
    """A new cache holding rows ``index`` of ``cache`` (repeats allowed); ``cache`` itself is left as it was."""
    try:  # transformers >= 5: build from the selected tensors (no copy of the unselected rows)
        return type(cache)(ddp_cache_data=[(k[index], v[index]) for k, v, *_ in cache])
    except TypeError:
        out = copy.deepcopy(cache)
        out.batch_select_indices(index)
        return out


@torch.inference_mode()
def greedy(model, prompt: Prompt, *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
           min_new_tokens: int = 0) -> list[list[int]]:  # fmt: skip
    """Greedy answers after ``prompt``: per row the new token ids up to (not including) the first stop id.

    The same tokens as ``model.generate(do_sample=False)`` (the tests check it); ``min_new_tokens`` forbids
    the stop ids before that many tokens (benchmarks use it so random weights decode a fixed length).
    """
    rows = prompt.mask.shape[0]
    out = [token for token, _ in greedy_steps(model, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                              pad_id=pad_id, min_new_tokens=min_new_tokens)]
    if not out:
        return [[] for _ in range(rows)]
    tokens = torch.stack(out, dim=1).tolist()  # (B, steps)
    stop_set = set(stop_ids)
    return [seq[: next((i for i, t in enumerate(seq) if t in stop_set), len(seq))] for seq in tokens]


@torch.inference_mode()
def greedy_steps(model, prompt: Prompt, *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 min_new_tokens: int = 0, budgets: list[int] | None = None, stopped=None):
    """The greedy decoding loop, one step at a time: yields ``(token, done)`` per step, both (B,) tensors:
    the token each row produced (``pad_id`` for a row already done) and whether the row is done after it (a stop
    id, its budget, or ``stopped(row)``). Streaming reads it step by step; :func:`greedy` collects it.

    ``budgets``: per-row new-token budgets (default ``max_new_tokens`` for all); ``stopped``: a callable
    ``row -> bool`` asked between steps (a client that went away), whose rows end without more tokens.
    Example: ``for token, done in greedy_steps(model, prompt, max_new_tokens=8, stop_ids=[2], pad_id=2): ...``
    """
    device = prompt.mask.device
    rows = prompt.mask.shape[0]
    if max_new_tokens <= 0:
        return
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    limit = torch.tensor(budgets if budgets is not None else [max_new_tokens] * rows, device=device)  # (B,)
    cache, key = select_rows(prompt.cache, torch.arange(rows, device=device)), cache_keyword(model)
    mask, logits = prompt.mask, prompt.first_logits  # (B, vocab) float32
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if step < min_new_tokens and len(stop_ids):
            logits = logits.index_fill(-1, stops, float("-inf"))
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))  # (B,)
        done = done | torch.isin(token, stops) | (limit <= step + 1)
        if stopped is not None:
            done = done | torch.tensor([bool(stopped(r)) for r in range(rows)], device=device)
        yield token, done
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=-1)
        positions = (prompt.starts + step)[:, None]  # (B, 1): a text token, one position
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                       **{key: cache}).logits[:, -1].float()  # (B, vocab); fmt: skip


@torch.inference_mode()
def continuation_logprobs(model, prompt: Prompt, conts: list[tuple[int, list[int], int]], *, pad_id: int,
                          batch: int = 32, max_cached_tokens: int = 65536) -> list[float]:  # fmt: skip
    """log P(the last ``n`` of ``ids`` | row's prompt, the ids before them), per ``(row, ids, n)``.

    Continuations of all rows are scored together on copies of their rows' prompt cache, right padded after
    it, at most ``batch`` at a time and fewer for long prompts (``max_cached_tokens`` prompt positions a chunk).
    """
    if not conts:
        return []
    device = prompt.mask.device
    key = cache_keyword(model)
    width_prompt = prompt.mask.shape[1]
    step = max(1, min(batch, max_cached_tokens // width_prompt))
    first_logp = prompt.first_logp
    scores: list[float] = []
    for start in range(0, len(conts), step):
        chunk = conts[start : start + step]
        index = torch.tensor([r for r, _, _ in chunk], dtype=torch.long, device=device)
        width = max(len(ids) for _, ids, _ in chunk)
        cont = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, (_, ids, _) in enumerate(chunk):  # right padding after the shared prompt
            cont[k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            cont_mask[k, : len(ids)] = 1
        cont, cont_mask = cont.to(device), cont_mask.to(device)
        mask = torch.cat([prompt.mask[index], cont_mask], dim=-1)  # (chunk, W + width)
        positions = prompt.starts[index, None] + torch.arange(width, device=device)  # (chunk, width)
        logits = model(input_ids=cont, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{key: select_rows(prompt.cache, index)}).logits  # (chunk, width, vocab); fmt: skip
        logp = torch.log_softmax(logits.float(), dim=-1)
        # token 0 is predicted by the prompt's last position; token m > 0 by continuation position m - 1
        first = first_logp[index].gather(-1, cont[:, :1]).squeeze(-1)  # (chunk,)
        rest = logp[:, :-1].gather(-1, cont[:, 1:, None]).squeeze(-1) if width > 1 else logp[:, :0, 0]
        token_lp = torch.cat([first[:, None], rest], dim=1).cpu()  # (chunk, width)
        for k, (_, ids, n) in enumerate(chunk):
            scores.append(float(token_lp[k, len(ids) - n : len(ids)].sum()))
    return scores
