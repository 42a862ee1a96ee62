"""The two graphs a compiled CPU runtime runs for an Idefics3 / SmolVLM model, as plain torch modules over the HF
model's own weights: the vision tower with its connector, and the Llama decoder with an explicit KV cache.

They are written so that ``openvino.convert_model`` and ``torch.onnx.export`` trace them without surprises: no
Python branch on a tensor value, no cache object, no mask builder. What HF computes in Python around them (the
patch positions of a padded tile, the patch mask) is done here in torch before the call (:func:`vision_inputs`).
In float32 torch they give HF's own numbers (tests/test_cpu_engine.py compares them).

Example::

    vis, dec = VisionGraph(model), DecoderGraph(model)
    pixels, pos, bias = vision_inputs(model.config, pixel_values, pixel_attention_mask)   # (N,3,H,W), (N,P), (N,1,1,P)
    feats = vis(pixels, pos, bias)                                                          # (N, 64, 576)
    hidden, *new_kv = dec(embeds, mask, positions, *past)    # past: 2 x layers tensors (B, kv heads, W, head dim)
"""

from __future__ import annotations

import torch
from torch import nn


def _inner(model):
    """The ``Idefics3Model`` inside a ``Idefics3ForConditionalGeneration`` (or a peft wrapper of one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base


def vision_inputs(config, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None):
    """``(pixels (N, 3, H, W) float32, position ids (N, P) long, attention bias (N, 1, 1, P) float32)`` for tiles
    ``pixel_values`` (N, 3, H, W) and their pixel mask (N, H, W): the patch mask and the bucketed patch positions of
    ``Idefics3VisionEmbeddings`` (a padded global view keeps its real area's positions). P = (H / patch) * (W / patch).
    Example: one full 512 px tile at patch 16 -> positions 0..1023, bias all 0."""
    vc = config.vision_config
    patch, side = vc.patch_size, vc.image_size // vc.patch_size
    n, _, h, w = pixel_values.shape
    if pixel_attention_mask is None:
        pixel_attention_mask = torch.ones((n, h, w), dtype=torch.bool)
    sub = pixel_attention_mask.unfold(1, patch, patch).unfold(2, patch, patch)  # (N, H/p, W/p, p, p)
    patch_mask = sub.sum(dim=(-1, -2)) > 0  # (N, H/p, W/p)
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    rows, cols = patch_mask[:, :, 0].sum(1), patch_mask[:, 0, :].sum(1)  # (N,) real patches down / across
    frac_h = torch.clamp(torch.arange(patch_mask.shape[1], dtype=torch.float32)[None] * (1.0 / rows)[:, None],
                         max=1.0 - 1e-6)  # fmt: skip
    frac_w = torch.clamp(torch.arange(patch_mask.shape[2], dtype=torch.float32)[None] * (1.0 / cols)[:, None],
                         max=1.0 - 1e-6)  # fmt: skip
    ids = torch.bucketize(frac_h, boundaries, right=True)[:, :, None] * side + torch.bucketize(
        frac_w, boundaries, right=True)[:, None, :]  # fmt: skip
    flat = patch_mask.reshape(n, -1)
    positions = torch.where(flat, ids.reshape(n, -1), torch.zeros_like(flat, dtype=torch.long))
    bias = torch.zeros(flat.shape, dtype=torch.float32).masked_fill(~flat, torch.finfo(torch.float32).min)
    return pixel_values.float(), positions, bias[:, None, None, :]


class VisionGraph(nn.Module):
    """SigLIP patches + positions, the encoder layers, the post layer norm and the pixel-shuffle connector:
    ``(pixels (N, 3, H, W), positions (N, P), bias (N, 1, 1, P)) -> features (N, tokens per tile, text hidden)``."""

    def __init__(self, model):
        super().__init__()
        inner, _ = _inner(model)
        vm = inner.vision_model
        self.patch, self.pos = vm.embeddings.patch_embedding, vm.embeddings.position_embedding
        self.layers, self.norm, self.connector = vm.encoder.layers, vm.post_layernorm, inner.connector

    def forward(self, pixels, positions, bias):
        hidden = self.patch(pixels).flatten(2).transpose(1, 2) + self.pos(positions)  # (N, P, vision hidden)
        for layer in self.layers:
            out = layer(hidden, bias)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.connector(self.norm(hidden))


class DecoderGraph(nn.Module):
    """The Llama decoder over new tokens after a KV cache, final norm included, LM head excluded.

    ``(embeds (B, T, hidden), mask (B, W + T) long, positions (B, T) long, k_0, v_0, ..., k_L-1, v_L-1 each
    (B, kv heads, W, head dim)) -> (hidden (B, T, hidden), new k_0, new v_0, ...)`` where the new keys and values
    are the T new tokens' only (the caller appends them). Causal over the new tokens, padding from ``mask``.
    """

    def __init__(self, model):
        super().__init__()
        inner, _ = _inner(model)
        tm = inner.text_model
        self.layers, self.norm, self.rotary = tm.layers, tm.norm, tm.rotary_emb
        cfg = tm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, embeds, mask, positions, *past):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        b, t, _ = embeds.shape
        total = mask.shape[1]
        # query i sits at column total - t + i; it sees real columns up to itself
        cols = torch.arange(total)[None, :]
        rows = torch.arange(t)[:, None] + (total - t)
        allowed = (cols <= rows)[None] & (mask[:, None, :] > 0)  # (B, T, W + T)
        bias = torch.zeros(allowed.shape, dtype=embeds.dtype).masked_fill(~allowed, torch.finfo(embeds.dtype).min)
        bias = bias[:, None]  # (B, 1, T, W + T)
        cos, sin = self.rotary(embeds, positions)
        hidden, new = embeds, []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            new += [k, v]
            keys, values = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)
            rep = self.heads // self.kv_heads
            keys = keys.repeat_interleave(rep, dim=1)  # (B, heads, W + T, head dim)
            values = values.repeat_interleave(rep, dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return (self.norm(hidden), *new)


def decoder_example(model, batch: int = 2, new: int = 3, past: int = 4):
    """Example inputs of :class:`DecoderGraph` (tracing): random embeds, a full mask, positions after ``past``."""
    g = DecoderGraph(model)
    hidden = _inner(model)[0].text_model.config.hidden_size
    kv = [torch.zeros(batch, g.kv_heads, past, g.head_dim) for _ in range(2 * len(g.layers))]
    positions = torch.arange(past, past + new)[None].repeat(batch, 1)
    return (torch.randn(batch, new, hidden), torch.ones(batch, past + new, dtype=torch.long), positions, *kv)


def vision_example(model, tiles: int = 2):
    """Example inputs of :class:`VisionGraph`: ``tiles`` full tiles of the model's image size."""
    vc = _inner(model)[0].config.vision_config
    pixels = torch.randn(tiles, 3, vc.image_size, vc.image_size)
    return vision_inputs(_inner(model)[0].config, pixels, None)
