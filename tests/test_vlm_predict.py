"""vlm.predict_rows: sample rows -> prediction rows; a bad record gets an error naming it, the rest proceed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import vlm
from ecg.render import render, to_bytes
from ecg.rows import PREDICTION_COLUMNS
from ecg.synth import generate
from ecgtasks import get_task


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor():
    return vlm.Predictor("tiny")


def _samples() -> pd.DataFrame:
    code15 = get_task("code15")
    records = list(generate(4, seed=7))
    png = [to_bytes(render(r)) for r in records]
    jpeg = to_bytes(render(records[3]), format="JPEG")
    rows = [
        ("ok-0", "code15", png[0], code15.question),
        ("corrupt-1", "code15", b"\x89PNG\r\n\x1a\n not really a png", code15.question),
        ("ok-2", "ptbxl-super", png[2], get_task("ptbxl-super").question),
        ("long-3", "code15", png[1], code15.question + " extra" * 2100),  # > 2048 positions
        ("ok-4", "code15", jpeg, code15.question),
        ("empty-5", "code15", b"", code15.question),
    ]
    return pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "task": [r[1] for r in rows],
            "image": [r[2] for r in rows],
            "question": [r[3] for r in rows],
            "answer": ["NORM"] * len(rows),
        }
    )


def test_predict_rows_isolates_bad_records(predictor):
    out = vlm.predict_rows(predictor, _samples())
    assert tuple(out.columns) == PREDICTION_COLUMNS
    assert list(out["id"]) == ["ok-0", "corrupt-1", "ok-2", "long-3", "ok-4", "empty-5"]
    errors = dict(zip(out["id"], out["error"]))
    for bad, why in (("corrupt-1", "unreadable image"), ("long-3", "too long"), ("empty-5", "empty image")):
        assert bad in errors[bad] and why in errors[bad]
        assert out.loc[out["id"] == bad, "prediction"].item() == ""
    good = out[out["id"].str.startswith("ok")]
    assert good["error"].isna().all()
    assert (good["model"] == "tiny").all() and (out["latency_ms"] > 0).all()
    for _, row in good.iterrows():
        scores = json.loads(row["label_scores"])  # multi-label tasks carry label probabilities
        assert list(scores) == list(get_task(row["task"]).labels)
        assert all(0.0 <= p <= 1.0 for p in scores.values())


def test_predict_rows_matches_generate_and_names_a_missing_column(predictor):
    samples = _samples().iloc[[0, 4]].reset_index(drop=True)
    out = vlm.predict_rows(predictor, samples)
    from PIL import Image
    import io

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in samples["image"]]
    direct = predictor.generate(images, list(samples["question"]), max_new_tokens=get_task("code15").max_new_tokens)
    assert list(out["prediction"]) == direct
    with pytest.raises(KeyError, match="image"):
        vlm.predict_rows(predictor, samples.drop(columns=["image"]))
