"""The compiled CPU engines (vlm/cpu_engine.py): the traced graphs compute HF's numbers, OpenVINO and ONNX Runtime
give the float32 HF engine's greedy tokens and label scores on the tiny model, the conversion is cached and reused,
a missing runtime says how to install it, ``auto`` picks an engine, and training's CPU shares fit 2 cores.
The real 256M architecture (and int8, bf16, ``ecgvlm evaluate``, ``ecgvlm train``) is tests/test_cpu_engine_real.py
(``make test-cpu-engines``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate
from vlm.cpu_engine import choose_engine, cpu_predictor, installed

QUESTION = "<image>\nWhich diagnoses fit this ECG?"
LABELS = ["NORM", "SB", "ST", "AF", "1dAVb", "RBBB"]


@pytest.fixture(scope="module")
def pages():
    return [render(r) for r in generate(3, seed=11)]


@pytest.fixture(scope="module")
def reference(pages):
    """The float32 HF engine on the tiny model: answers (8 tokens, no early stop) and label scores."""
    p = vlm.Predictor("tiny", device="cpu", dtype="float32")
    rows = [p.encode_one(pg, QUESTION) for pg in pages]
    return p, p.run_encoded(rows, max_new_tokens=8, min_new_tokens=8, labels=LABELS)


def test_traced_graphs_give_hf_numbers_on_a_padded_tile():
    from vlm.cpu_graphs import DecoderGraph, VisionGraph, vision_inputs

    model = vlm.load("tiny", device="cpu", dtype="float32").model
    side = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, side, side)
    mask = torch.ones(2, side, side, dtype=torch.bool)
    mask[1, :, side // 2 + 8 :] = False  # a global view padded on the right, as SmolVLM pads one
    with torch.inference_mode():
        ref = model.get_image_features(pixel_values=pixels[None], pixel_attention_mask=mask[None])
        ref = torch.cat(list(getattr(ref, "pooler_output", ref)))
        ours = VisionGraph(model)(*vision_inputs(model.config, pixels, mask))
        assert torch.allclose(ours.reshape(ref.shape), ref, atol=1e-5)
        embeds = torch.randn(2, 5, model.config.text_config.hidden_size)
        attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left padding in row 0
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        hf = model(inputs_embeds=embeds, attention_mask=attn, position_ids=positions).logits
        g = DecoderGraph(model)
        empty = [torch.zeros(2, g.kv_heads, 0, g.head_dim)] * (2 * len(g.layers))
        hidden, *new = g(embeds, attn, positions, *empty)
        assert torch.allclose(model.lm_head(hidden)[attn.bool()], hf[attn.bool()], atol=1e-5)
        assert len(new) == 2 * len(g.layers) and new[0].shape == (2, g.kv_heads, 5, g.head_dim)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engine_matches_float32_hf_and_reuses_its_conversion(engine, pages, reference, tmp_path):
    if not installed(engine):
        pytest.skip(f"{engine} not installed (pip install 'ecgvlm[{engine}]')")
    _, (answers, scores) = reference
    p = cpu_predictor("tiny", engine=engine, dtype="float32", cache_dir=str(tmp_path))
    assert p.converted
    rows = [p.encode_one(pg, QUESTION) for pg in pages]
    got, got_scores = p.run_encoded(rows, max_new_tokens=8, min_new_tokens=8, labels=LABELS)
    assert got == answers  # the same greedy tokens on every page
    assert max(abs(a[k] - b[k]) for a, b in zip(scores, got_scores) for k in LABELS) < 1e-4
    files = {f: f.stat().st_mtime_ns for f in p.cache_folder.iterdir()}
    again = cpu_predictor("tiny", engine=engine, dtype="float32", cache_dir=str(tmp_path))
    assert not again.converted and again.cache_folder == p.cache_folder
    assert {f: f.stat().st_mtime_ns for f in again.cache_folder.iterdir()} == files  # nothing rewritten
    assert again.run_encoded(rows[:1], max_new_tokens=8, min_new_tokens=8)[0] == answers[:1]


@pytest.mark.parametrize("engine,extra", [("openvino", "openvino"), ("onnxruntime", "onnxruntime")])
def test_a_missing_runtime_says_how_to_install_it(engine, extra):
    # the runtime made unimportable in a fresh interpreter (sys.modules[name] = None makes `import name` fail)
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime"}[engine]
    code = (f"import sys; sys.modules[{module!r}] = None\nfrom vlm.cpu_engine import cpu_predictor\n"
            f"cpu_predictor('tiny', engine={engine!r})")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert f"pip install 'ecgvlm[{extra}]'" in out.stderr.strip().splitlines()[-1]


def test_auto_picks_an_installed_cpu_runtime_for_smolvlm_and_hf_otherwise():
    engine, why = choose_engine("auto", model="tiny", device="cpu")
    assert engine == ("openvino" if installed("openvino") else "onnxruntime" if installed("onnxruntime") else "hf")
    assert why
    assert choose_engine("auto", model="tiny:qwen2_vl", device="cpu")[0] == "hf"
    assert choose_engine("auto", model="tiny", device="cpu", decoding="smolvlm-study")[0] == "hf"
    assert choose_engine("auto", model="tiny", device="cpu", num_gpus=1)[0] == "hf"
    assert choose_engine("onnxruntime", model="tiny") == ("onnxruntime", "as asked")


def test_two_training_workers_fit_a_two_core_local_ray_by_default():
    from pipelines.launch import cpu_shares, fits, local_nodes
    from pipelines.train import TrainConfig

    cfg = TrainConfig(data="d", out="o", num_workers=2)
    assert not fits(cfg.bundles(), local_nodes(2))[0]  # 2 x 1 CPU + 0.5 to encode: what failed before
    shares = cpu_shares(2, cfg.cpus_per_worker, cfg.encode_cpus, total=2)
    fitted = cfg.model_copy(update={k: shares[k] for k in ("cpus_per_worker", "encode_cpus")})
    assert shares["scaled"] and fits(fitted.bundles(), local_nodes(2)) == (True, "")
    from stages.ingest import READ_CPUS  # streamed ingest reads shards while the workers train: room for a read

    assert 2 - 2 * shares["cpus_per_worker"] - shares["encode_cpus"] >= READ_CPUS
    assert cpu_shares(2, 1.0, 0.5, total=2)["cpus_per_worker"] == 1.0  # what the user set is kept
    assert not cpu_shares(2, None, None, total=None)["scaled"]  # a cluster: the defaults, not scaled
