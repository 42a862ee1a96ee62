"""``vlm.patch_init``: the patch embedding set to the whitened principal patches of real rendered pages (the tiny
model's own image preparation and processor): its outputs on those patches are centred, unit-variance and
uncorrelated; a gray page's filters are split equally over RGB; and only a from-scratch full run may ask for it."""

from __future__ import annotations

import pytest
import torch

from ecg.pages import draw, recipe
from ecg.synth import generate
from vlm import finetune as ft
from vlm.patch_init import patch_embedding, pca_filters, set_patch_filters, whiten_patch_embedding
from vlm.training import Collator, encode_rows


@pytest.fixture(scope="module")
def pixels_and_model():
    import pandas as pd

    from ecg.render import to_bytes
    from ecgtasks import CODE15

    loaded = ft.load_for_training("tiny", tiny={"flatten": True})
    records = list(generate(12, seed=3))
    pages = [draw(r, recipe(preset, i)) for i, (r, preset) in
             enumerate(zip(records, ["clean", "varied", "photo"] * 4))]
    df = pd.DataFrame({"id": [r.id for r in records], "image": [to_bytes(p) for p in pages],
                       "question": CODE15.question, "answer": [CODE15.format_answer(r.labels) for r in records]})
    return Collator.for_loaded(loaded)(encode_rows(loaded, df))["pixel_values"], loaded.model


def test_whitened_filters_decorrelate_the_pages_patches(pixels_and_model):
    pixels, model = pixels_and_model
    before = patch_embedding(model).weight.detach().clone()
    stats = whiten_patch_embedding(model, pixels, eps=1e-4)
    conv = patch_embedding(model)
    assert stats["gray"] and stats["patches"] == 12 * 14 * 14 and stats["filters"] == conv.out_channels
    assert 0.5 < stats["explained"] <= 1.0 and not torch.equal(before, conv.weight)
    w = conv.weight.detach()
    assert torch.allclose(w[:, 0], w[:, 1]) and torch.allclose(w[:, 0], w[:, 2])  # a gray page: RGB shares it
    with torch.no_grad():
        out = conv(pixels.reshape(-1, *pixels.shape[-3:])).flatten(2).transpose(1, 2).reshape(-1, conv.out_channels)
    assert out.mean(0).abs().max() < 1e-3  # the bias centres every component on the pages' mean patch
    cov = torch.cov(out.T.double())
    top = cov[:16, :16]  # the strongest components: unit variance, uncorrelated (eps barely touches them)
    assert torch.allclose(top, torch.eye(16, dtype=top.dtype), atol=0.05), top.diagonal()


def test_filters_refuse_a_wrong_shape_and_empty_pages(pixels_and_model):
    pixels, model = pixels_and_model
    weight, bias, _ = pca_filters(pixels, (8, 3, 16, 16))
    with pytest.raises(ValueError, match=r"shape \(8, 3, 16, 16\)"):
        set_patch_filters(model, weight, bias)
    with pytest.raises(ValueError, match="no non-empty images"):
        pca_filters(torch.zeros(2, 3, 64, 64), (8, 3, 16, 16))


def test_only_a_from_scratch_full_run_replaces_its_patch_filters(tmp_path):
    from pipelines.train import TrainConfig

    ok = TrainConfig(model="tiny", data=str(tmp_path), out=str(tmp_path), finetune="full", freeze_vision=False,
                     patch_init="pca")
    assert ok.patch_init == "pca"
    for bad in ({"model": "tiny", "finetune": "lora"}, {"model": "HuggingFaceTB/SmolVLM-256M-Instruct",
                                                        "finetune": "full", "freeze_vision": False},
                {"model": "tiny:qwen2_vl", "finetune": "full", "freeze_vision": False}):  # no Idefics3 patch conv
        with pytest.raises(ValueError, match="from-scratch model"):
            TrainConfig(data=str(tmp_path), out=str(tmp_path), patch_init="pca", **bad)
