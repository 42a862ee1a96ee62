"""ecg.ecgbench and ecg.jsonrecords: task rules, turns, confined image paths, streamed JSON (no Ray).

The ECGInstruct-format writer here (list ``image`` values, multi-turn records, many tasks, bad paths and
images) and the ECGBench hub-form Parquet writer are shared with tests/test_prepare.py.
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecg import jsonrecords, samples
from ecg.ecgbench import ecgbench_batch, image_location, infer_task, record_rows, turn_pairs
from ecg.render import render, to_bytes
from ecgtasks.registry import CODE15_QUESTION, CPSC_QUESTION, PTBXL_QUESTION, get_task

# ---- realistic question texts (ECGInstruct / ECGBench forms) ---------------------------------------------------

# ECGInstruct's CODE-15 wording (ECGBENCH.md): the six options, semicolons, no explanation.
CODE15_Q = ("<image>\nPlease identify all the diagnoses that fit this ECG from the following options: "
            "1dAVb (1st degree AV block), RBBB (right bundle branch block), LBBB (left bundle branch block), "
            "SB (sinus bradycardia), ST (sinus tachycardia), AF (atrial fibrillation). Separate multiple "
            "answers with a semicolon. Only answer based on the given options without any explanation.")
CHOICE_Q = ("<image>\nWhat is the most likely rhythm of this ECG? Please choose one of the options.\n"
            "A. Sinus rhythm\nB. Atrial flutter\nC. Sinus bradycardia\nD. Atrial fibrillation\n"
            "E. Sinus tachycardia\nF. Supraventricular tachycardia\nG. Sinus arrhythmia\nH. Junctional rhythm\n"
            "Answer with the option's letter from the given choices directly.")
MMMU_Q = "<image>\nWhat does the ECG show?\n(A) Hyperkalemia (B) Hypokalemia (C) Hypercalcemia (D) Digoxin effect"
ECGQA_Q = ("<image>\nDoes this ECG show symptoms of non-diagnostic t abnormalities? Options: yes, no, not sure. "
           "Only answer based on the given Options without any explanation.")
REPORT_Q = "<image>\nWrite a report of this 12-lead ECG, describing rhythm, axis, intervals and morphology."


@pytest.mark.parametrize("rid,question,answer,hint,task", [
    ("code15-1", CODE15_Q, "SB; 1dAVb", "", "code15"),
    ("code15-2", CODE15_QUESTION, "NORM", "", "code15"),
    ("ptbxl-3", PTBXL_QUESTION, "MI; STTC", "", "ptbxl-super"),
    ("cpsc-A0004", CPSC_QUESTION, "AF; PVC", "", "cpsc"),  # lists RBBB, LBBB, AF too: the nine win
    ("csn-JS0005", CHOICE_Q, "B", "", "csn"),
    ("G12EC-E0006", CHOICE_Q, "C. Sinus bradycardia", "", "g12"),
    ("q-7", MMMU_Q, "A", "data/mmmu-train.json", "mmmu"),
    ("mimic-8", CHOICE_Q, "B", "", "freetext"),  # a choice question from no benchmark's source
    ("ecgqa-9", ECGQA_Q, "no", "", "ecgqa"),
    ("ptbxl-10", REPORT_Q, "sinus rhythm. normal ecg.", "", "ptbxl-report"),
    ("mimic-11", REPORT_Q, "Sinus rhythm. Borderline ECG.", "", "freetext"),  # MIMIC reports: no benchmark
    ("arena-12", "<image>\nWhat would you do next for this patient?", "...", "", "arena"),
    ("mimic-13", "What is the heart rate?", "About 72 bpm.", "", "freetext"),
    ("x-14", "<image>\nAnything.", "z", "ECGBench/cpsc-test/test-00000.parquet", "cpsc"),  # the file names it
    ("x-15", "<image>\nAnything.", "z", "/data/ptb-study/ECGInstruct.json", "freetext"),  # names no task
])
def test_infer_task_rules(rid, question, answer, hint, task):
    assert infer_task(rid, question, answer, hint) == task
    get_task(task)  # every answer is a registered task


def test_st_segment_is_not_the_st_label():
    # "ST-segment" and "STTC" must not count as the ST option: CPSC's question lists no SB/1dAVb either
    question = CPSC_QUESTION.replace("I-AVB", "1dAVb").replace("PAC (premature atrial contraction), ", "")
    assert infer_task("x", question) != "code15"


# ---- turns and image paths ----------------------------------------------------------------------------------

def _turns(*texts):
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(texts)]


def test_turn_pairs_and_broken_conversations():
    assert turn_pairs(_turns("q1", "a1", "q2", "a2")) == [("q1", "a1"), ("q2", "a2")]
    assert turn_pairs(json.dumps(_turns("q", "a"))) == [("q", "a")]
    assert turn_pairs(_turns("q", ["sinus rhythm", "none"])) == [("q", '["sinus rhythm", "none"]')]  # ECG-QA gold
    for bad, why in ((_turns("q"), "turn 0: a human turn with no answer"), ([], "empty"), (None, "NoneType"),
                     (_turns("q", "a", "q2"), "turn 2: a human turn with no answer"),
                     (_turns("q", "a")[::-1], "turn 0: expected a human turn"),
                     ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], "turn 1: expected a gpt")):
        with pytest.raises(samples.RecordError, match=why) as info:
            turn_pairs(bad)
        assert info.value.kind == samples.BAD_CONVERSATION


def test_record_rows_keep_every_turn_with_its_history():
    page = to_bytes(render(next(samples.synthetic_records(0, 1)), width=275, height=212))
    conv = _turns(CODE15_Q, "SB", "Why?", "The rate is below 60 bpm.", ECGQA_Q, "no")
    rows = record_rows("code15-5", conv, page, image_path="a/b.png", task="auto", hint="", seed=0,
                       splits={"train": 0.5, "val": 0.5}, source="ecginstruct")
    assert [r["id"] for r in rows] == ["code15-5", "code15-5#t1", "code15-5#t2"]
    assert [r["task"] for r in rows] == ["code15", "freetext", "ecgqa"]
    assert [r["question"] for r in rows] == [CODE15_Q, "Why?", ECGQA_Q] and rows[0]["labels"] == ["SB"]
    metas = [json.loads(r["meta"]) for r in rows]
    assert metas[0]["history"] == [] and metas[2]["history"] == [
        {"role": "user", "text": CODE15_Q}, {"role": "assistant", "text": "SB"},
        {"role": "user", "text": "Why?"}, {"role": "assistant", "text": "The rate is below 60 bpm."}]
    assert [m["turn"] for m in metas] == [0, 1, 2] and len({r["split"] for r in rows}) == 1
    # another record showing the same image file lands in the same split (the split is drawn per image)
    other = record_rows("code15-6", conv[:2], page, image_path="a/b.png", task="auto", hint="", seed=0,
                        splits={"train": 0.5, "val": 0.5}, source="ecginstruct")
    assert other[0]["split"] == rows[0]["split"]


def test_image_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    assert image_location(str(root), "images/./a.png") == str(root / "images" / "a.png")
    assert image_location(str(root), "images/../images/a.png") == str(root / "images" / "a.png")
    assert image_location("s3://b/ecg", "x/y.png") == "s3://b/ecg/x/y.png"
    for path, kind in (("../secret.png", samples.OUTSIDE_ROOT), ("images/../../secret.png", samples.OUTSIDE_ROOT),
                       ("images/link.png", samples.OUTSIDE_ROOT), (str(tmp_path / "secret.png"), samples.ABSOLUTE_PATH),
                       ("s3://other/x.png", samples.ABSOLUTE_PATH), ("C:\\x.png", samples.ABSOLUTE_PATH)):
        with pytest.raises(samples.RecordError, match="image path") as info:
            image_location(str(root), path)
        assert info.value.kind == kind, path


# ---- streamed reading ---------------------------------------------------------------------------------------

class CountingStream(io.BytesIO):
    """A binary stream that records how many bytes were read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.served = 0

    def read(self, n=-1):
        out = super().read(n)
        self.served += len(out)
        return out


def _big_records(n: int) -> list[dict]:
    return [{"id": f"r{k}", "image": [f"images/r{k}.png"], "conversations": _turns(CODE15_Q, "SB")} for k in range(n)]


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_records_are_streamed_not_read_whole(form):
    records = _big_records(24_000)  # about 12 MB of JSON
    data = (json.dumps(records) if form == "json" else "\n".join(json.dumps(r) for r in records)).encode()
    stream = CountingStream(data)
    it = jsonrecords.iter_records(stream, "big." + form)
    first = [next(it) for _ in range(100)]
    assert first == records[:100]
    assert stream.served <= 2 * jsonrecords.READ_BYTES + 4096 < len(data) / 4  # a read or two, not the file
    tracemalloc.start()
    n = sum(1 for _ in it)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == len(records) - 100 and stream.served == len(data)
    assert peak < len(data) / 2, (peak, len(data))  # holding the file's records would take several times its size


def test_bad_json_lines_and_elements_are_named():
    lines = b'{"id": "a", "image": "x.png", "conversations": []}\n{oops\n\n42\n{"id": "b"}\n'
    got = list(jsonrecords.iter_records(io.BytesIO(lines), "f.jsonl"))
    assert [r.get("id") for r in got] == ["a", "f.jsonl:2", "f.jsonl:4", "b"]
    assert "bad JSON line 2" in got[1]["_error"] and "not an object" in got[2]["_error"]
    broken = list(jsonrecords.iter_records(io.BytesIO(b'[{"id": "a"}, 7, {"id": "b"}, {"id": '), "f.json"))
    assert [r["id"] for r in broken] == ["a", "f.json#1", "b", "f.json#3"]
    assert "the rest of the file is unread" in broken[3]["_error"]
    assert list(jsonrecords.iter_records(io.BytesIO(b"  \n"), "empty.json")) == []


def test_reference_chunks_are_bounded(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(_big_records(25) + [{"id": "noimg", "conversations": []}]))
    chunks = list(jsonrecords.reference_chunks(str(path), chunk=10, file_hint=False))
    assert [len(c["id"]) for c in chunks] == [10, 10, 6]
    assert chunks[0]["image"][0] == "images/r0.png" and chunks[0]["root"][0] == str(tmp_path)
    assert chunks[2]["error_kind"][-1] == samples.NO_IMAGE and set(chunks[0]["hint"]) == {""}
    (elsewhere,) = jsonrecords.reference_chunks(str(path), chunk=100, image_root="s3://ecg/images")
    assert set(elsewhere["root"]) == {"s3://ecg/images"} and set(elsewhere["hint"]) == {str(path)}


# ---- datasets in the published forms (shared with test_prepare) -------------------------------------------------

def _page(k: int) -> bytes:
    return to_bytes(render(next(samples.synthetic_records(k, 1, seed=11)), width=275, height=212))


def make_ecginstruct(root: str, form: str = "json") -> str:
    """An ECGInstruct-format file under ``root``: 8 good records (11 turns, 7 tasks) and 7 bad ones.

    Good: code15 (2 turns: code15 + freetext), ptbxl-super, cpsc, csn, ecgqa, ptbxl-report, a MIMIC record of
    3 turns (freetext report, freetext, ecgqa) and a MIMIC multiple choice (freetext). Bad, one of each kind:
    ``../`` path, absolute path, missing file, truncated PNG, no image, broken conversation, a non-object.
    """
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    good = [("code15-1001", [CODE15_Q, "SB; 1dAVb", "Is the rhythm regular?", "Yes, regular but slow."]),
            ("ptbxl-21", [PTBXL_QUESTION, "MI; STTC"]), ("cpsc-A0003", [CPSC_QUESTION, "AF; PVC"]),
            ("csn-JS0004", [CHOICE_Q, "B"]), ("ecgqa-5", [ECGQA_Q, "no"]),
            ("ptbxl-6", [REPORT_Q, "sinus rhythm. left axis deviation."]),
            ("mimic-7", [REPORT_Q, "Sinus rhythm. Normal ECG.", "What is the heart rate?", "About 70 bpm.",
                         "Which rhythm is it? Options: sinus rhythm, atrial fibrillation, atrial flutter", "sinus rhythm"]),
            ("mimic-8", [CHOICE_Q, "A"])]
    records = []
    for k, (rid, texts) in enumerate(good):
        with open(os.path.join(images, f"{rid}.png"), "wb") as f:
            f.write(_page(k))
        records.append({"id": rid, "image": [f"images/{rid}.png", "images/extra.png"], "conversations": _turns(*texts)})
    with open(os.path.join(os.path.dirname(root), "outside.png"), "wb") as f:  # a real image, outside the root
        f.write(_page(0))
    with open(os.path.join(images, "truncated.png"), "wb") as f:
        f.write(_page(1)[:200])
    conv = _turns(CODE15_Q, "AF")
    records += [{"id": "bad-climb", "image": ["../outside.png"], "conversations": conv},
                {"id": "bad-absolute", "image": os.path.join(images, "code15-1001.png"), "conversations": conv},
                {"id": "bad-missing", "image": "images/missing.png", "conversations": conv},
                {"id": "bad-truncated", "image": ["images/truncated.png"], "conversations": conv},
                {"id": "bad-noimage", "image": [], "conversations": conv},
                {"id": "bad-turns", "image": "images/code15-1001.png", "conversations": conv[:1] + conv[:1]},
                42]
    path = os.path.join(root, f"ECGInstruct.{form}")  # image paths are relative to the JSON's folder
    with open(path, "w") as f:
        f.write(json.dumps(records) if form == "json" else "\n".join(json.dumps(r) for r in records) + "\n{oops\n")
    return path


def make_hub_parquet(root: str) -> str:
    """ECGBench in hub form: ``<config>/test-00000-of-00001.parquet`` with ``id``, ``image`` (struct of
    bytes and path) and ``conversations`` (a list of structs), for code15-test (3 rows) and
    csn-test-no-cot (2 rows, one with undecodable bytes)."""
    for config, question, answers in (("code15-test", CODE15_QUESTION, ["NORM", "SB", "AF; RBBB"]),
                                      ("csn-test-no-cot", CHOICE_Q, ["B. Atrial flutter", "D"])):
        ids = [f"{config}-{k}" for k in range(len(answers))]
        images = [{"bytes": _page(k) if not (config.startswith("csn") and k == 1) else b"junk",
                   "path": f"{i}-0.png"} for k, i in enumerate(ids)]
        table = pa.table({"id": ids, "image": images, "image_path": [f"{i}-0.png" for i in ids],
                          "conversations": [_turns(question, a) for a in answers]})
        os.makedirs(os.path.join(root, config), exist_ok=True)
        pq.write_table(table, os.path.join(root, config, "test-00000-of-00001.parquet"))
    return root


def test_hub_parquet_rows_take_their_file_task(tmp_path):
    root = make_hub_parquet(str(tmp_path / "ECGBench"))
    table = pq.read_table(os.path.join(root, "csn-test-no-cot", "test-00000-of-00001.parquet")).to_pandas()
    table["path"] = os.path.join(root, "csn-test-no-cot", "test-00000-of-00001.parquet")
    rows = {r["id"]: r for r in ecgbench_batch(table, task="auto").drop(["image"]).to_pylist()}
    assert rows["csn-test-no-cot-0"]["task"] == "csn" and rows["csn-test-no-cot-0"]["labels"] == ["B"]
    assert json.loads(rows["csn-test-no-cot-1"]["meta"])["kind"] == samples.UNREADABLE_IMAGE
