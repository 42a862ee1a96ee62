"""ECG-QA and multiple choice exactly as the published evaluation code scores them, checked by hand on real
files: ECGBench JSON with list golds, prediction JSONL as PULSE writes it, sample rows written by prepare.

The rules (PULSE ``evaluation/evaluate_ecgbench.py``): ECG-QA candidates are the comma-separated options after
the last "Options:", stripped; a candidate counts when it occurs *as written* in the *lower-cased* answer; a
record passes when the found set equals the gold list as given. Choice: an unparsable answer gets
``random.choice`` from one ``random.seed(42)`` stream in prediction-line order (A-D mmmu, A-H csn/g12); the
whole run serves mmmu, then csn, then g12. Duplicate lines count again; missing predictions are not scored.
"""

import io
import json
import random

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ecg.ecgbench import ecgbench_batch
from metrics import parsing, score_frame
from metrics.score import letter_stream
from pipelines.score import main

TAIL = "Only answer based on the given Options without any explanation."
SYMPTOMS = ("<image>\nWhich symptoms does this ECG show? "
            f"Options: sinus rhythm, atrial fibrillation, Q wave, None\n\n{TAIL}")
VERIFY = f"<image>\nDoes this ECG show atrial fibrillation? Options: yes, no, not sure\n\n{TAIL}"
# id: (question, gold list, answer); pass by the published rules / by strict, worked out by hand
QA = {
    "q1": (SYMPTOMS, ["sinus rhythm"], "Sinus rhythm."),  # found {sinus rhythm}: pass / pass
    "q2": (SYMPTOMS, ["none"], "None"),  # "None" is never found in lower-cased text: fail / pass
    "q3": (SYMPTOMS, ["sinus rhythm", "atrial fibrillation"], "atrial fibrillation, sinus rhythm"),  # pass / pass
    "q4": (SYMPTOMS, ["atrial fibrillation"], "Atrial fibrillation and Q wave"),  # "Q wave" unseen: pass / fail
    "q5": (VERIFY, ["not sure"], "not sure"),  # "no" is a substring of "not sure": fail / pass
    "q6": (VERIFY, ["no"], "No."),  # pass / pass
    "q7": (SYMPTOMS, ["Q wave"], "Q wave"),  # a capitalised gold can never pass: fail / pass
    "q8": (SYMPTOMS, ["sinus rhythm"], "sinus rhythm, no Q wave"),  # pass / fail ("q wave" named)
}
QA_ECGBENCH = round(5 / 8 * 100, 1)  # q1, q3, q4, q6, q8
QA_STRICT = round(6 / 8 * 100, 2)  # all but q4 and q8


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="PNG")
    return buf.getvalue()


def ecgbench_records(items):
    return [{"id": k, "image": f"{k}-0.png",
             "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": gold}]}
            for k, (q, gold, _) in items.items()]


def pulse_lines(items, order=None):
    """Prediction lines as PULSE's inference writes them (question_id, prompt without the image tag, text)."""
    return [{"question_id": k, "prompt": items[k][0].replace("<image>\n", ""), "text": items[k][2],
             "answer_id": f"a-{k}", "model_id": "m", "metadata": {}} for k in (order or list(items))]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_json(capsys, *args, code=0):
    assert main([*args, "--json"]) == code
    out, err = capsys.readouterr()
    return json.loads(out) if code == 0 else err


# ---- ECG-QA ------------------------------------------------------------------------------------------------
def test_ecgqa_candidates_and_sets_by_the_published_rules():
    assert parsing.qa_candidates(SYMPTOMS) == ["sinus rhythm", "atrial fibrillation", "Q wave", "None"]
    assert parsing.ecgbench_qa_found(SYMPTOMS, "None; Q wave; sinus rhythm") == {"sinus rhythm"}
    assert parsing.strict_qa_found(SYMPTOMS, "None; Q wave; sinus rhythm") == {"none", "q wave", "sinus rhythm"}
    assert parsing.ecgbench_qa_found(VERIFY, "not sure") == {"no", "not sure"}
    assert parsing.strict_qa_found(VERIFY, "not sure") == {"not sure"}


def test_ecgqa_in_memory_with_list_golds():
    frame = pd.DataFrame({"id": list(QA), "question": [v[0] for v in QA.values()],
                          "answer": [v[1] for v in QA.values()], "prediction": [v[2] for v in QA.values()]})
    r = score_frame("ecgqa", frame)
    assert r["accuracy"] == QA_ECGBENCH == 62.5
    assert r["strict"]["accuracy"] == QA_STRICT == 75.0
    assert r["ecgbench"]["n"] == 8 and r["anls"] is not None


def test_ecgqa_cli_on_ecgbench_json_and_pulse_output(tmp_path, capsys):
    refs = tmp_path / "ecgqa-test.json"
    refs.write_text(json.dumps(ecgbench_records(QA)))
    order = ["q5", "q2", "q8", "q7", "q1", "q4", "q6", "q3"]
    preds = write_jsonl(tmp_path / "answers.jsonl", pulse_lines(QA, order=order))
    got = run_json(capsys, "--task", "ecgqa-test", "--references", str(refs), "--predictions", preds)
    assert (got["accuracy"], got["strict"]["accuracy"], got["n"]) == (QA_ECGBENCH, QA_STRICT, 8)
    assert got["ecgbench"]["lines"] == {"lines": 8, "duplicate_lines": 0, "missing_not_scored": 0,
                                        "unmatched_not_scored": 0, "scored": 8}


def test_ecgqa_list_gold_survives_prepare_and_scores_the_same(tmp_path, capsys):
    refs = pd.DataFrame({"id": list(QA), "image": [png()] * len(QA),
                         "conversations": [json.dumps(r["conversations"]) for r in ecgbench_records(QA)]})
    table = ecgbench_batch(refs, task="ecgqa-test")
    assert table.column("split").to_pylist() == ["test"] * len(QA)  # no failure rows
    stored = dict(zip(table.column("id").to_pylist(), table.column("answer").to_pylist()))
    assert stored["q3"] == '["sinus rhythm", "atrial fibrillation"]'  # lossless JSON text in a string column
    assert {k: json.loads(v) for k, v in stored.items()} == {k: v[1] for k, v in QA.items()}
    pq.write_table(table, tmp_path / "samples.parquet")
    preds = write_jsonl(tmp_path / "answers.jsonl", pulse_lines(QA))
    got = run_json(capsys, "--task", "ecgqa", "--references", str(tmp_path / "samples.parquet"), "--predictions", preds)
    assert (got["accuracy"], got["strict"]["accuracy"]) == (QA_ECGBENCH, QA_STRICT)


def test_list_golds_written_as_python_literals_still_read_as_lists():
    # str(list), as rows prepared before lists were kept as JSON text hold their gold
    frame = pd.DataFrame({"id": ["a", "b"], "question": [VERIFY] * 2, "answer": ["['no']", "['not sure']"],
                          "prediction": ["No.", "not sure"]})
    r = score_frame("ecgqa", frame)
    assert (r["accuracy"], r["strict"]["accuracy"]) == (50.0, 100.0)  # "not sure" also finds "no" (published)


def test_a_question_without_options_is_reported():
    r = score_frame("ecgqa", pd.DataFrame({"id": ["x"], "question": ["Is it AF?"], "answer": [["yes"]],
                                           "prediction": ["yes"]}))
    assert r["accuracy"] == 0.0 and "no \"Options:\"" in r["ecgbench"]["notes"][0]


def test_a_gold_list_of_non_texts_names_its_record(tmp_path, capsys):
    refs = tmp_path / "ecgqa-test.json"
    refs.write_text(json.dumps(ecgbench_records({"q9": (VERIFY, ["yes", 1], "yes")})))
    preds = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "q9", "text": "yes"}])
    err = run_json(capsys, "--task", "ecgqa", "--references", str(refs), "--predictions", preds, code=2)
    assert "record 'q9'" in err and "texts only" in err


# ---- multiple choice: random letters in prediction-line order ---------------------------------------------
def test_the_seed_42_letters_these_tests_rely_on():
    rng = random.Random(42)
    assert [rng.choice("ABCDEFGH") for _ in range(3)] == ["B", "A", "E"]
    rng = random.Random(42)
    assert [rng.choice("ABCD") for _ in range(2)] + [rng.choice("ABCDEFGH") for _ in range(3)] == \
        ["A", "A", "E", "D", "D"]


# reference order c0..c5; the lines come shuffled; c2, c3, c4 are unparsable
CSN = {"c0": ("A. Sinus rhythm", "A"), "c1": ("B. Atrial fibrillation", "The correct option is C"),
       "c2": ("E. Sinus bradycardia", "no idea"), "c3": ("B. Atrial fibrillation", "I cannot tell"),
       "c4": ("A. Sinus rhythm", ""), "c5": ("D. Sinus tachycardia", "Answer: D")}
CSN_LINES = ["c5", "c3", "c1", "c4", "c0", "c2"]


def choice_files(tmp_path, items, lines, name="csn-test-no-cot"):
    refs = tmp_path / f"{name}.json"
    refs.write_text(json.dumps([{"id": k, "image": f"{k}-0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhich option fits? A. ... H. ..."}, {"from": "gpt", "value": g}]}
        for k, (g, _) in items.items()]))
    preds = write_jsonl(tmp_path / f"{name}.jsonl", [{"question_id": k, "text": items[k][1]} for k in lines])
    return str(refs), preds


def test_random_letters_follow_the_prediction_lines_not_the_references(tmp_path, capsys):
    refs, preds = choice_files(tmp_path, CSN, CSN_LINES)
    got = run_json(capsys, "--task", "csn-test-no-cot", "--references", refs, "--predictions", preds)
    # lines: c3 (gold B) draws B, c4 (gold A) draws A, c2 (gold E) draws E: all three lucky; c0, c5 parsed right.
    # In reference order (c2, c3, c4 drawing B, A, E) none would be: 2 / 6.
    assert got["accuracy"] == round(5 / 6 * 100, 1) == 83.3
    assert (got["ecgbench"]["random_letters"], got["ecgbench"]["random_letters_correct"]) == (3, 3)
    assert got["strict"]["accuracy"] == 33.33 and got["strict"]["unparsed"] == 3  # never guessed


def test_the_in_memory_path_draws_in_row_order_too():
    frame = pd.DataFrame({"id": CSN_LINES, "answer": [CSN[k][0] for k in CSN_LINES],
                          "prediction": [CSN[k][1] for k in CSN_LINES]})
    assert score_frame("csn", frame)["accuracy"] == 83.3
    assert score_frame("csn", frame.sort_values("id"))["accuracy"] == 33.3  # the reference order: unlucky


def test_benchmark_order_continues_the_stream_after_mmmu(tmp_path, capsys):
    refs, preds = choice_files(tmp_path, CSN, CSN_LINES)
    args = ["--task", "csn", "--references", refs, "--predictions", preds, "--random-order", "benchmark"]
    # mmmu drew A, A before; csn's lines c3 (B), c4 (A), c2 (E) now draw E, D, D: none lucky
    got = run_json(capsys, *args, "--drawn-before", "mmmu=2")
    assert got["accuracy"] == 33.3 and got["ecgbench"]["random_letters_correct"] == 0
    assert got["ecgbench"]["random_order"] == "benchmark" and got["ecgbench"]["drawn_before"] == {"mmmu": 2}
    assert "mmmu" in run_json(capsys, *args, code=2)  # how many mmmu drew must be given
    assert "benchmark" in run_json(capsys, *args[:-2], "--drawn-before", "mmmu=2", code=2)
    err = run_json(capsys, *args, "--drawn-before", "mmmu=2,g12=1", code=2)
    assert "after ['mmmu']" in err


def test_letter_stream_replays_the_tasks_before():
    rng = letter_stream("g12", order="benchmark", drawn_before={"mmmu-ecg": 2, "csn": 3})
    assert [rng.choice("ABCDEFGH") for _ in range(3)] == ["C", "B", "B"]  # after A, A / E, D, D
    assert letter_stream("mmmu", order="benchmark").random() == random.Random(42).random()
    with pytest.raises(ValueError, match="after"):
        letter_stream("g12", order="benchmark", drawn_before={"mmmu": 2})


def test_mmmu_options_a_to_d(tmp_path, capsys):
    items = {"m0": ("A", "unsure"), "m1": ("C", "?"), "m2": ("A", "hmm"), "m3": ("D", "D")}
    refs, preds = choice_files(tmp_path, items, ["m1", "m0", "m2", "m3"], name="mmmu-ecg")
    got = run_json(capsys, "--task", "mmmu-ecg", "--references", refs, "--predictions", preds)
    # lines m1 (C), m0 (A), m2 (A) draw A, A, C from A-D: only m0 lucky; m3 parsed right
    assert got["accuracy"] == 50.0 and got["ecgbench"]["random_letters_correct"] == 1
    assert any("exactly 200 lines (4 here)" in note for note in got["ecgbench"]["notes"])  # the reference skips it


# ---- duplicate lines and missing predictions --------------------------------------------------------------
def test_duplicates_count_again_and_missing_are_not_scored_in_ecgbench_only(tmp_path, capsys):
    items = {"d0": ("A. x", "A"), "d1": ("B. x", "C"), "d2": ("C. x", "C"), "d3": ("D. x", "D")}
    refs, _ = choice_files(tmp_path, items, [])
    lines = [("d0", "A"), ("d1", "C"), ("d1", "B"), ("d3", "D"), ("zz", "A")]  # d1 twice, d2 missing, zz unknown
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": k, "text": t} for k, t in lines])
    got = run_json(capsys, "--task", "csn", "--references", refs, "--predictions", preds)
    assert got["accuracy"] == 75.0  # ecgbench: d0, d1 "C" (wrong), d1 "B", d3: 3 of 4 lines
    assert got["strict"]["accuracy"] == 50.0  # strict: d0, d1 first line (wrong), d2 missing (wrong), d3
    assert got["ecgbench"]["n"] == 4 and got["n"] == 4 and got["strict"]["n"] == 4
    assert got["ecgbench"]["lines"] == {"lines": 5, "duplicate_lines": 1, "missing_not_scored": 1,
                                        "unmatched_not_scored": 1, "scored": 4}
    assert any("duplicate line" in n for n in got["ecgbench"]["notes"])
    assert got["input"]["missing_predictions"] == 1 and got["errors"] == 1
