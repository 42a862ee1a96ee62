"""vlm.beam: the study's beam search (``--decoding smolvlm-study``) equals the model's own ``generate`` with 4 beams,
and with one beam the greedy engine; ``predict_rows`` asks CODE-15 rows the study's prompt under that decoding."""

from __future__ import annotations

import pandas as pd
import pytest

import vlm
from ecg.images import decode_image
from ecg.render import render, to_bytes
from ecg.synth import generate
from ecgtasks import get_task
from ecgtasks.registry import STUDY_QUESTION, budgets, decoding_options
from vlm.beam import beam_answers

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEW = 12  # new tokens per answer: the random tiny model never stops, so every answer uses them all


@pytest.fixture(scope="module")
def predictor():
    return vlm.Predictor("tiny", label_scores=False)


@pytest.fixture(scope="module")
def rows(predictor):
    questions = [get_task("code15").question, STUDY_QUESTION, "<image>\nDescribe this ECG."]
    pages = [render(r, width=550, height=425) for r in generate(3, seed=5)]
    return [predictor.encode_one(page, q) for page, q in zip(pages, questions)]


def _generate(predictor, row, num_beams: int) -> str:
    """The reference: ``model.generate`` on the row's processor tensors, the new tokens up to a stop, as text."""
    model = predictor.loaded.model
    out = model.generate(**row, num_beams=num_beams, do_sample=False, max_new_tokens=NEW,
                         eos_token_id=predictor.stop_ids, pad_token_id=predictor.pad_id)
    new = out[0, row["input_ids"].shape[1]:].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in predictor.stop_ids), len(new))]
    return predictor.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_four_beams_equal_generate_with_four_beams(predictor, rows):
    answers, cut = beam_answers(predictor, rows, num_beams=4, max_new_tokens=NEW)
    assert answers == [_generate(predictor, r, 4) for r in rows]
    assert cut == [True, True, True]  # random weights: every answer ran out its budget
    greedy = predictor.run_encoded(rows, max_new_tokens=NEW)[0]
    assert answers != greedy  # the search found other answers than greedy on these pages: beams are on


def test_one_beam_through_the_same_path_equals_the_greedy_engine(predictor, rows):
    answers, _ = beam_answers(predictor, rows, num_beams=1, max_new_tokens=NEW)
    assert answers == predictor.run_encoded(rows, max_new_tokens=NEW)[0]


def test_study_decoding_in_predict_rows_asks_its_prompt_with_four_beams(predictor):
    options = decoding_options("smolvlm-study")
    assert options == {"num_beams": 4, "questions": {"code15": STUDY_QUESTION}}
    assert decoding_options("ecgbench") == {"num_beams": 1, "questions": {}}
    assert set(budgets("smolvlm-study").values()) == {32} and budgets("smolvlm-study", "code15=8")["code15"] == 8
    records = list(generate(2, seed=6))
    batch = pd.DataFrame({"id": ["c-0", "c-1"], "task": ["code15", "code15"],
                          "image": [to_bytes(render(r, width=550, height=425)) for r in records],
                          "question": [get_task("code15").question] * 2, "answer": ["SB", "AF"]})
    out = vlm.predict_rows(predictor, batch, budgets={"code15": NEW}, **options)
    assert out["error"].isna().all() and out["question"].tolist() == [STUDY_QUESTION] * 2
    pages = [decode_image(data, "page") for data in batch["image"]]  # as predict_rows reads them
    want = [_generate(predictor, predictor.encode_one(p, STUDY_QUESTION), 4) for p in pages]
    assert out["prediction"].tolist() == want and out["truncated"].tolist() == [True, True]


def test_study_reproduced_end_to_end_prepare_evaluate_score(ray_cluster, predictor, tmp_path, capsys):
    import json
    import os

    from ecg import shards
    from pipelines import cli
    from test_samples import make_ecgbench

    path = make_ecgbench(str(tmp_path / "bench"), n=3)  # code15-test.json: 3 good records, 2 that fail
    data, out = str(tmp_path / "data"), str(tmp_path / "eval")
    assert cli.main(["prepare", "--source", "ecgbench", "--path", path, "--out", data, "--width", "550",
                     "--height", "425"]) == 0
    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out, "--decoding", "smolvlm-study",
                     "--progress-s", "0", "--tracking", "none"]) == 0
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    assert run["decoding"] == "smolvlm-study" and run["max_new_tokens"]["code15"] == 32
    preds = shards.read_predictions(os.path.join(out, "predictions")).set_index("id")
    assert len(preds) == 3 and preds["error"].isna().all() and set(preds["question"]) == {STUDY_QUESTION}
    assert preds["label_scores"].notna().all()  # label scores of the beam's answers
    samples = pd.read_parquet(os.path.join(data, "test")).set_index("id")
    rid = preds.index[0]
    row = predictor.encode_one(decode_image(samples.loc[rid, "image"], rid), STUDY_QUESTION)
    assert preds.loc[rid, "prediction"] == beam_answers(predictor, [row], num_beams=4, max_new_tokens=32)[0][0]
    capsys.readouterr()
    assert cli.main(["score", "--task", "code15", "--references", path, "--predictions",
                     os.path.join(out, "predictions"), "--protocol", "smolvlm-study", "--json"]) == 0
    study = json.loads(capsys.readouterr().out)["smolvlm-study"]
    assert study["classes"] == ["NORM", "ABNORMAL", "1DAVB", "RBBB", "LBBB", "SB", "ST", "AF"] and "f1" in study
    # beams run in-process: an endpoint cannot search them
    assert cli.main(["evaluate", "--model", "openai:gpt-4o", "--api-base", "http://127.0.0.1:9/v1", "--data", data,
                     "--out", str(tmp_path / "no"), "--decoding", "smolvlm-study"]) == 2
    assert "needs --engine hf" in capsys.readouterr().err
