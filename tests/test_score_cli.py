"""`ecgvlm score` end to end on real files: ECGBench JSON / JSONL / Parquet references, our sample and
prediction rows, the reference output JSONL; through main([...]) and through `python -m pipelines.score`."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecg.rows import PREDICTION_SCHEMA, SAMPLE_SCHEMA
from metrics.score import score_frame
from pipelines.score import main

REPO = Path(__file__).resolve().parents[1]
GOLD = {"a": "SB; 1dAVb", "b": "NORM", "c": "AF", "d": "ST"}
TEXT = {"a": "SB; 1dAVb", "b": "ST segment normal", "c": "AFib", "d": "sinus tachycardia"}


def ecgbench_records(gold=GOLD):
    return [{"id": k, "image": f"{k}-0.png",
             "conversations": [{"from": "human", "value": "<image>\nWhich?"}, {"from": "gpt", "value": v}]}
            for k, v in gold.items()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def expected():
    frame = pd.DataFrame({"id": list(GOLD), "answer": list(GOLD.values()), "prediction": list(TEXT.values())})
    return score_frame("code15", frame)


@pytest.mark.parametrize("form", ["json", "jsonl", "parquet"])
def test_ecgbench_references_and_reference_output(tmp_path, capsys, form):
    records = ecgbench_records()
    if form == "json":
        refs = tmp_path / "code15-test.json"
        refs.write_text(json.dumps(records))
    elif form == "jsonl":
        refs = Path(write_jsonl(tmp_path / "code15-test.jsonl", records))
    else:
        refs = tmp_path / "code15-test.parquet"
        pq.write_table(pa.Table.from_pylist(records), refs)
    preds = write_jsonl(tmp_path / "out.jsonl", [{"question_id": k, "text": v} for k, v in TEXT.items()])
    got = run_json(capsys, "--task", "code15-test", "--references", str(refs), "--predictions", preds)
    want = expected()
    for key in ("f1", "auc", "hamming_loss", "anls", "n"):
        assert got[key] == want[key]
    assert got["strict"]["f1_macro"] == want["strict"]["f1_macro"] and got["strict"]["per_class"]
    assert got["input"]["missing_predictions"] == 0 and got["warnings"] == []


def test_sample_rows_and_prediction_rows_folders(tmp_path, capsys):
    (tmp_path / "samples").mkdir()
    (tmp_path / "preds").mkdir()
    samples = [{"id": k, "task": "code15", "image": b"", "question": "q", "answer": v, "labels": [],
                "source": "synthetic", "meta": "{}"} for k, v in GOLD.items()]
    pq.write_table(pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), tmp_path / "samples" / "part-0.parquet")
    preds = [{"id": k, "task": "code15", "question": "q", "answer": GOLD[k], "prediction": v,
              "label_scores": json.dumps({"AF": 0.9 if k == "c" else 0.1}), "model": "m", "error": None,
              "latency_ms": 1.0} for k, v in TEXT.items()]
    for i, half in enumerate((preds[:2], preds[2:])):
        pq.write_table(pa.Table.from_pylist(half, schema=PREDICTION_SCHEMA), tmp_path / "preds" / f"p{i}.parquet")
    got = run_json(capsys, "--task", "code15", "--references", str(tmp_path / "samples"),
                   "--predictions", str(tmp_path / "preds"), "--protocol", "strict")
    assert "f1" not in got and got["strict"]["auc_source"] == "label_scores" and got["n"] == 4
    alone = run_json(capsys, "--task", "code15", "--predictions", str(tmp_path / "preds"))  # gold from the rows
    assert alone["f1"] == expected()["f1"] and alone["input"]["references"] is None


def test_mismatches_are_counted_never_dropped_silently(tmp_path, capsys):
    refs = tmp_path / "r.json"
    refs.write_text(json.dumps(ecgbench_records() + ecgbench_records({"a": "AF"})))  # duplicate id a
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "response": "SB"}, {"id": "a", "response": "AF"},
                                               {"id": "b", "response": ""}, {"id": "zz", "response": "AF"}])
    assert main(["--task", "code15", "--references", str(refs), "--predictions", preds, "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    i = got["input"]
    assert (i["duplicate_reference_ids"], i["duplicate_prediction_ids"]) == (1, 1)
    assert (i["missing_predictions"], i["unmatched_predictions"], i["empty_predictions"]) == (2, 1, 3)
    assert got["n"] == 4 and got["errors"] == 2  # c and d have no prediction: scored, as empty answers
    assert "no prediction" in err and "no reference" in err and "duplicate" in err


def test_bad_inputs_give_a_clear_message(tmp_path, capsys):
    assert main(["--task", "code15", "--predictions", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": "a"}])
    assert main(["--task", "code15", "--references", bad, "--predictions", bad]) == 2
    assert "references need an `id` column" in capsys.readouterr().err
    no_gold = write_jsonl(tmp_path / "nogold.jsonl", [{"id": "a", "x": 1}])
    assert main(["--task", "code15", "--references", no_gold, "--predictions", bad]) == 2
    assert "conversations" in capsys.readouterr().err


def test_subprocess_table_and_report(tmp_path):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(ecgbench_records()))
    preds = write_jsonl(tmp_path / "out.jsonl", [{"question_id": k, "text": v} for k, v in TEXT.items()])
    proc = subprocess.run([sys.executable, "-m", "pipelines.score", "--task", "code15", "--references", str(refs),
                           "--predictions", preds, "--report", str(tmp_path / "rep")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "code15" in proc.stdout and "strict F1 macro" in proc.stdout and "AF" in proc.stdout
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "published, not rerun here" in html


def test_s3_references_and_prediction_rows(s3_server, capsys):
    from ecg import storage

    storage.write_text("s3://ecg/bench/code15-test.json", json.dumps(ecgbench_records()))
    preds = [{"id": k, "task": "code15", "question": "q", "answer": GOLD[k], "prediction": v, "label_scores": None,
              "model": "m", "error": None, "latency_ms": 1.0} for k, v in TEXT.items()]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(preds, schema=PREDICTION_SCHEMA), buf)
    storage.write_bytes("s3://ecg/run/predictions/part-0.parquet", buf.getvalue().to_pybytes())
    got = run_json(capsys, "--task", "code15", "--references", "s3://ecg/bench/code15-test.json",
                   "--predictions", "s3://ecg/run/predictions", "--report", "s3://ecg/run")
    assert got["f1"] == expected()["f1"] and got["report"]["html"] == "s3://ecg/run/report.html"
    assert storage.exists("s3://ecg/run/report.md")
