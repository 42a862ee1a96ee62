"""Data-driven start for a from-scratch vision tower: the patch embedding set to the pages' whitened principal patches.

A from-scratch model (the ``tiny`` preset) starts with random patch filters: most of the 96 directions they
project a 32 x 32 patch onto carry background and grid, and the first few hundred steps sit at the label prior
before the traces begin to count. Setting the filters to the top principal components of the training pages'
patches, scaled to unit variance (PCA whitening, as fast small-image training recipes do for their first layer),
starts every image token on the directions the traces actually vary in. The filters keep training afterwards.

Example::

    from vlm.patch_init import whiten_patch_embedding
    stats = whiten_patch_embedding(model, pixel_values)    # (N, 3, H, W) or (B, tiles, 3, H, W), normalized
    stats["explained"]                                     # share of the patch variance the filters keep, e.g. 0.83
"""

from __future__ import annotations

import torch


def patch_embedding(model) -> torch.nn.Conv2d:
    """The vision tower's patch embedding (a Conv2d with kernel = stride = patch size) of an Idefics3 model."""
    for name, module in model.named_modules():
        if name.endswith("vision_model.embeddings.patch_embedding") and isinstance(module, torch.nn.Conv2d):
            return module
    raise ValueError("patch filters: the model has no vision_model.embeddings.patch_embedding Conv2d (a SmolVLM / "
                     "Idefics3 vision tower)")


@torch.no_grad()
def pca_filters(pixel_values: torch.Tensor, shape: tuple[int, ...], *, eps: float = 1e-2,
                max_patches: int = 50_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(weight, bias, stats)`` for a patch embedding of ``shape`` ``(out, in, k, k)``: the whitened top principal
    components of ``pixel_values``' patches.

    ``pixel_values``: normalized images as the model takes them, ``(N, C, H, W)`` or ``(B, tiles, C, H, W)``
    (all-zero padding tiles are left out). Gray pages copied to RGB are analysed on one channel and the filters
    split equally over the three, so the embedding of a gray page is exactly the one-channel projection. The bias
    centres each component on the patches' mean. ``eps`` (relative to the largest eigenvalue) keeps the weakest
    components from being blown up. Filters past the number of patch dimensions stay zero.
    """
    out_ch, in_ch, k, _ = shape
    x = pixel_values.reshape(-1, *pixel_values.shape[-3:]).float()
    x = x[x.flatten(1).abs().amax(1) > 0]  # padding tiles (all zero) say nothing about pages
    if len(x) == 0:
        raise ValueError("patch filters: no non-empty images to learn patches from")
    gray = bool((x == x[:, :1]).all())
    channels = 1 if gray else in_ch
    patches = torch.nn.functional.unfold(x[:, :channels], kernel_size=k, stride=k)  # (N, c*k*k, L)
    patches = patches.transpose(1, 2).reshape(-1, channels * k * k)
    if len(patches) > max_patches:
        g = torch.Generator().manual_seed(seed)
        patches = patches[torch.randperm(len(patches), generator=g)[:max_patches]]
    mean = patches.mean(0)
    centred = (patches - mean).double()
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / max(1, len(centred) - 1))  # ascending
    n = min(out_ch, len(eigvals))
    top_vals, top_vecs = eigvals.flip(0)[:n].clamp_min(0), eigvecs.flip(1)[:, :n]
    filters = (top_vecs / torch.sqrt(top_vals + eps * float(top_vals[0]))).T.float()  # (n, c*k*k), unit variance
    weight, bias = torch.zeros(shape), torch.zeros(out_ch)
    if gray:
        weight[:n] = (filters / in_ch).reshape(n, 1, k, k).expand(n, in_ch, k, k)
    else:
        weight[:n] = filters.reshape(n, in_ch, k, k)
    bias[:n] = -(filters @ mean)
    explained = float(top_vals.sum() / eigvals.clamp_min(0).sum().clamp_min(1e-12))
    return weight, bias, {"patches": len(patches), "filters": n, "gray": gray, "explained": round(explained, 4)}


@torch.no_grad()
def set_patch_filters(model, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy ``weight`` / ``bias`` (from :func:`pca_filters`) into the model's patch embedding."""
    conv = patch_embedding(model)
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise ValueError(f"patch filters: shape {tuple(weight.shape)} != the model's {tuple(conv.weight.shape)}")
    conv.weight.copy_(torch.as_tensor(weight, dtype=conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.copy_(torch.as_tensor(bias, dtype=conv.bias.dtype))


def whiten_patch_embedding(model, pixel_values: torch.Tensor, **kwargs) -> dict:
    """:func:`pca_filters` of ``pixel_values`` set into ``model``'s patch embedding; returns the stats."""
    weight, bias, stats = pca_filters(pixel_values, tuple(patch_embedding(model).weight.shape), **kwargs)
    set_patch_filters(model, weight, bias)
    return stats
