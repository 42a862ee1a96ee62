"""vlm.export: a folder vlm.load reloads to the same outputs; a LoRA adapter (peft) loads and merges."""

from __future__ import annotations

import json

import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate
from ecgtasks import get_task
from vlm.load import SIDECAR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pages():
    return [render(r) for r in generate(2, seed=11)]


def _logits(loaded, pages) -> torch.Tensor:
    """Next-token logits after the prompt, (batch, vocab): compares two models without sampling noise."""
    q = get_task("code15").question
    batch = vlm.training.collate(loaded, pages, [q] * len(pages), ["NORM"] * len(pages))
    with torch.no_grad():
        return loaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, 10]


def _answers(loaded, pages) -> list[str]:
    q = get_task("code15").question
    return vlm.Predictor.from_loaded(loaded).generate(pages, [q] * len(pages), max_new_tokens=6)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter on the tiny text model's attention projections, with non-zero B (peft inits B to 0)."""
    from peft import LoraConfig, get_peft_model

    base = vlm.load("tiny")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*text_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(base.model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    return str(folder)


def test_export_reload_gives_identical_outputs(tmp_path, pages):
    tiny = vlm.load("tiny")
    out = vlm.export(tiny, str(tmp_path / "export"))
    sidecar = json.loads((tmp_path / "export" / SIDECAR).read_text())
    assert sidecar["prep"]["kind"] == "ecg_gray" and sidecar["tiny_spec"]["image_size"] == 224
    again = vlm.load(out)
    assert again.prep == tiny.prep and again.spec == tiny.spec
    assert list(again.processor.image_processor.image_mean) == [1.0, 1.0, 1.0]
    assert again.prepare_image(pages[0]).tobytes() == tiny.prepare_image(pages[0]).tobytes()
    assert torch.equal(_logits(again, pages), _logits(tiny, pages))
    assert _answers(again, pages) == _answers(tiny, pages)


def test_lora_adapter_loads_and_merged_export_matches(tmp_path, pages, adapter_dir):
    base = vlm.load("tiny")
    adapted = vlm.load("tiny", adapter=adapter_dir)
    assert adapted.adapter == adapter_dir
    expected = _logits(adapted, pages)
    assert not torch.allclose(expected, _logits(base, pages), atol=1e-3)  # the adapter changes the model

    merged = vlm.load(vlm.export(adapted, str(tmp_path / "merged"), merge_adapter=True))
    assert merged.adapter is None and not (tmp_path / "merged" / "adapter").exists()
    assert torch.allclose(_logits(merged, pages), expected, atol=1e-4)
    assert _answers(merged, pages) == _answers(adapted, pages)
    # export did not merge into the caller's model
    assert torch.equal(_logits(adapted, pages), expected)

    unmerged = vlm.load(vlm.export(adapted, str(tmp_path / "unmerged"), merge_adapter=False))
    assert unmerged.adapter and unmerged.adapter.endswith("adapter")
    assert torch.allclose(_logits(unmerged, pages), expected, atol=1e-5)


def test_export_to_s3_and_load_from_s3(s3_server, pages):
    tiny = vlm.load("tiny")
    uri = vlm.export(tiny, "s3://ecg/models/tiny-export")
    again = vlm.load(uri)
    assert again.prep == tiny.prep and again.name == uri
    assert torch.equal(_logits(again, pages), _logits(tiny, pages))
