"""The compiled CPU engines on the real SmolVLM-256M architecture (random weights, built in-process) and end to end:
float32 OpenVINO / ONNX Runtime give HF float32's greedy tokens and label scores, unsplit and on a 17-tile page;
bf16 and int8 stay within the stated tolerance; ``ecgvlm export`` then ``ecgvlm evaluate --engine auto`` reuses the
conversion and writes label scores. Skipped as a whole where neither runtime is installed (the main venv).
Heavy (minutes on 2 cores): ``make test-cpu-engines`` runs it in .venv-cpu."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vlm
from ecg.render import render, to_bytes
from ecg.rows import SAMPLE_SCHEMA
from ecg.synth import generate
from ecgtasks import CODE15
from vlm.cpu_engine import cpu_predictor, installed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (installed("openvino") or installed("onnxruntime")),
                                                  reason="neither OpenVINO nor ONNX Runtime: make test-cpu-engines")]
LABELS = list(CODE15.labels)
# bf16 / int8 against float32 HF on random weights (docs/cpu-engines.md has the measured figures)
LOW_PRECISION_DP = 0.05  # largest label-probability difference
EXACT_DP = 1e-4  # float32 runtimes: the same numbers up to summation order


def _pages(n: int):
    return [render(r) for r in generate(n, seed=5)]


def _run(p, pages, tokens: int = 8):
    rows = [p.encode_one(pg, CODE15.question) for pg in pages]
    return p.run_encoded(rows, max_new_tokens=tokens, min_new_tokens=tokens, labels=LABELS)


def _max_dp(a, b) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in LABELS)


@pytest.fixture(scope="module")
def model(smolvlm_dir) -> str:
    return f"random:{smolvlm_dir}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """A fresh folder, or $ECGVLM_TEST_CPU_CACHE to reuse earlier conversions (converting the 256M architecture
    takes minutes on 2 cores)."""
    return os.environ.get("ECGVLM_TEST_CPU_CACHE") or str(tmp_path_factory.mktemp("cpu-engines"))


@pytest.fixture(scope="module")
def hf_unsplit(model):
    return _run(vlm.Predictor(model, device="cpu", dtype="float32", image_splitting=False), _pages(2))


@pytest.mark.parametrize("engine,dtype", [("openvino", "float32"), ("onnxruntime", "float32"),
                                          ("openvino", "bfloat16"), ("openvino", "int8")])
def test_real_architecture_agrees_with_float32_hf(model, cache, hf_unsplit, engine, dtype):
    if not installed(engine):
        pytest.skip(f"{engine} not installed")
    answers, scores = hf_unsplit
    got, got_scores = _run(cpu_predictor(model, engine=engine, dtype=dtype, image_splitting=False, cache_dir=cache),
                           _pages(2))  # fmt: skip
    if dtype == "float32":
        assert got == answers and _max_dp(scores, got_scores) < EXACT_DP
    else:  # bf16 arithmetic: label probabilities within the tolerance; answers may part after a near tie
        assert _max_dp(scores, got_scores) < LOW_PRECISION_DP


def test_a_split_page_matches_float32_hf(model, cache):
    if not installed("openvino"):
        pytest.skip("openvino not installed")
    pages = _pages(1)  # 17 tiles, the global view padded: its patch mask and positions go through the graph
    hf = _run(vlm.Predictor(model, device="cpu", dtype="float32", image_splitting=True), pages, tokens=4)
    ov = _run(cpu_predictor(model, engine="openvino", dtype="float32", image_splitting=True, cache_dir=cache), pages,
              tokens=4)  # fmt: skip
    assert ov[0] == hf[0] and _max_dp(hf[1], ov[1]) < EXACT_DP


def test_export_then_evaluate_auto_reuses_the_conversion(tmp_path, capsys, monkeypatch):
    if not installed("openvino"):
        pytest.skip("openvino not installed")
    from pipelines import cli

    monkeypatch.setenv("ECGVLM_CPU_CACHE", str(tmp_path / "cache"))
    assert cli.main(["export", "--engine", "openvino", "--model", "tiny"]) == 0
    assert "converted to" in capsys.readouterr().out
    rows = [{"id": f"r{i}", "task": "code15", "image": to_bytes(render(r)), "question": CODE15.question,
             "answer": CODE15.format_answer(r.labels), "labels": list(r.labels), "source": "synthetic",
             "meta": "{}"} for i, r in enumerate(generate(3, seed=3))]  # fmt: skip
    (tmp_path / "data" / "test").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), tmp_path / "data" / "test" / "part-0.parquet")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", "tiny", "--data", str(tmp_path / "data"), "--out", str(out),
                     "--decoding", "fast", "--ray-cpus", "2", "--progress-s", "0", "--tracking", "none"]) == 0
    assert "engine openvino" in capsys.readouterr().out
    preds = pq.read_table(out / "predictions").to_pylist()
    assert len(preds) == 3 and all(p["error"] is None and p["label_scores"] for p in preds)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the actor reused the export's conversion
