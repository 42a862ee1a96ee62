"""The arena end to end: an ECGBench-shaped ``arena.json`` -> ``ecgvlm prepare`` -> ``ecgvlm evaluate`` (tiny model,
every turn with its dialogue) -> ``ecgvlm score --task arena --judge`` against a local chat-completions server."""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from ecg import samples, shards
from ecg.render import render, to_bytes
from metrics import judge
from pipelines import cli

SMALL = ["--width", "550", "--height", "425"]
# record -> (its turns' questions and ground truths, what the judge answers for it)
DIALOGUES = {
    "arena-0": ([("<image>\nWhat is the rhythm of this ECG?", "GT-0-1 sinus bradycardia at 48 bpm"),
                 ("What could cause it in a trained athlete?", "GT-0-2 high vagal tone; no treatment needed")],
                '{"Accuracy": {"score": 8, "explanation": "right rhythm"}, "Completeness": {"Score": 6, '
                '"explanation": "no rate"}, "Instruction Adherence": {"score": 7, "explanation": "answers"}}'),
    "arena-1": ([("<image>\nList the abnormal findings.", "GT-1-1 wide QRS with rsR' in V1: RBBB"),
                 ("Is the axis normal?", "GT-1-2 yes, normal axis"),
                 ("What would you do next?", "GT-1-3 compare with a previous ECG")],
                '{"accuracy": 5, "completeness": 4, "instruction_adherence": 6}'),
    "arena-2": ([("<image>\nDescribe this ECG.", "GT-2-1 atrial fibrillation with rapid response"),
                 ("And the management?", "GT-2-2 rate control and anticoagulation")],
                "The response is quite good overall."),  # not the rubric's JSON
}


def make_arena(root: str) -> str:
    """``arena.json`` in ECGBench's form (multi-turn conversations, one page each) with its images."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    records = []
    for rid, rec in zip(DIALOGUES, samples.synthetic_records(0, len(DIALOGUES), seed=4)):
        with open(os.path.join(root, "images", f"{rid}-0.png"), "wb") as f:
            f.write(to_bytes(render(rec, width=550, height=425)))
        turns = [t for q, a in DIALOGUES[rid][0] for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        records.append({"id": rid, "image": f"images/{rid}-0.png", "conversations": turns})
    path = os.path.join(root, "arena.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


class ArenaJudge:
    """A chat-completions server that answers each dialogue by the record its first ground truth names."""

    def __init__(self):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                record = "arena-" + re.search(r"GT-(\d)-1", body["messages"][1]["content"]).group(1)
                reply = {"id": "j", "object": "chat.completion", "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": DIALOGUES[record][1]}}],
                         "usage": {"prompt_tokens": 900, "completion_tokens": 60, "total_tokens": 960}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_arena_rubric_reads_nested_and_flat_scores_and_names_what_is_missing():
    assert judge.ARENA.parse(DIALOGUES["arena-0"][1]) == {"accuracy": 8, "completeness": 6, "instruction_adherence": 7}
    assert judge.ARENA.score(judge.ARENA.parse(DIALOGUES["arena-1"][1])) == 50.0
    with pytest.raises(ValueError, match="no 0-10 score for Instruction Adherence"):
        judge.ARENA.parse('{"Accuracy": 3, "Completeness": {"score": 4}}')
    with pytest.raises(ValueError, match="not JSON"):
        judge.ARENA.parse(DIALOGUES["arena-2"][1])
    with pytest.raises(ValueError, match="code15"):
        judge.rubric("code15-test")
    assert judge.rubric("ecg-arena") is judge.ARENA and judge.rubric("ptb-test-report") is judge.REPORT


def test_a_turn_without_a_row_comes_from_the_history_of_a_later_one():
    history = [{"role": "user", "text": "<image>\nRhythm?"}, {"role": "assistant", "text": "GT AF"}]
    rows = [{"id": "r#t1", "question": "Rate?", "answer": "GT 130", "prediction": "fast", "error": None,
             "meta": json.dumps({"record_id": "r", "turn": 1, "history": history})}]
    (d,) = judge.arena_dialogues(rows)
    assert d["id"] == "r" and [t["reference"] for t in d["turns"]] == ["GT AF", "GT 130"]
    assert [t["response"] for t in d["turns"]] == [None, "fast"]
    text = judge.arena_messages(d["turns"])[1]["content"]
    assert text.index("Rhythm?") < text.index("GT AF") < text.index(judge.NO_RESPONSE) < text.index("Rate?")


def test_hub_parquet_references_give_every_turn_as_prepare_names_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metrics.inputs import read_references

    convs = [[{"from": f, "value": v} for q, a in DIALOGUES[rid][0] for f, v in (("human", q), ("gpt", a))]
             for rid in DIALOGUES]
    pq.write_table(pa.table({"id": list(DIALOGUES), "conversations": convs}), tmp_path / "test-0.parquet")
    refs = read_references(str(tmp_path / "test-0.parquet"), all_turns=True).set_index("id")
    assert list(refs.index) == ["arena-0", "arena-0#t1", "arena-1", "arena-1#t1", "arena-1#t2", "arena-2",
                                "arena-2#t1"]
    assert refs.loc["arena-1#t2", "answer"] == "GT-1-3 compare with a previous ECG"
    meta = json.loads(refs.loc["arena-1#t2", "meta"])
    assert (meta["record_id"], meta["turn"], len(meta["history"])) == ("arena-1", 2, 4)
    first = read_references(str(tmp_path / "test-0.parquet"))  # other tasks: the first turn, as before
    assert list(first["id"]) == list(DIALOGUES) and first["answer"][0] == "GT-0-1 sinus bradycardia at 48 bpm"
    pq.write_table(pa.table({"id": ["bad"], "conversations": [[{"from": "gpt", "value": "x"}]]}),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="record 'bad'.*turn 0"):
        read_references(str(tmp_path / "bad.parquet"), all_turns=True)


def test_arena_from_ecgbench_json_through_prepare_evaluate_and_judge(ray_cluster, tmp_path, capsys):
    path = make_arena(str(tmp_path / "bench"))
    data, out = str(tmp_path / "data"), str(tmp_path / "eval")
    assert cli.main(["prepare", "--source", "ecgbench", "--path", path, "--out", data, *SMALL]) == 0
    rows = pd.read_parquet(os.path.join(data, "test"))
    want = [rid if k == 0 else f"{rid}#t{k}" for rid, (turns, _) in DIALOGUES.items() for k in range(len(turns))]
    assert sorted(rows["id"]) == sorted(want) and set(rows["task"]) == {"arena"}
    last = json.loads(rows.set_index("id").loc["arena-1#t2", "meta"])
    golds = [t["text"] for t in last["history"]][1::2]
    assert golds == ["GT-1-1 wide QRS with rsR' in V1: RBBB", "GT-1-2 yes, normal axis"]

    assert cli.main(["evaluate", "--model", "tiny", "--data", data, "--out", out, "--batch-size", "4",
                     "--progress-s", "0", "--tracking", "none"]) == 0
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["max_new_tokens"]["arena"] == 1024  # ecgbench decoding: the paper's budget
    preds = shards.read_predictions(os.path.join(out, "predictions")).set_index("id")
    assert sorted(preds.index) == sorted(want) and preds["error"].isna().all()
    capsys.readouterr()

    server = ArenaJudge()
    try:
        args = ["score", "--task", "arena", "--references", path, "--predictions", os.path.join(out, "predictions"),
                "--json", "--judge", "openai:judge-model", "--judge-base", server.url, "--report", out]
        assert cli.main(args) == 0
        result = json.loads(capsys.readouterr().out)
        jd = result["judge"]
        assert result["n"] == len(want) and result["input"]["missing_predictions"] == 0  # every turn scored (ANLS)
        # one request per dialogue; arena-2's reply is not JSON: a failed record, named and counted, not a 0
        assert len(server.requests) == jd["requests"] == 3 and (jd["judged"], jd["failed"]) == (2, 1)
        assert jd["score"] == round((70.0 + 50.0) / 2, 1) and jd["accuracy"] == 6.5
        assert jd["instruction_adherence"] == 6.5 and jd["completeness"] == 5.0
        assert jd["prompt_version"] == judge.ARENA_PROMPT_VERSION and jd["model"] == "openai:judge-model"
        assert "record arena-2" in jd["errors"][0] and "not JSON" in jd["errors"][0]
        by_id = {r["id"]: r for r in jd["records"]}
        assert (by_id["arena-0"]["score"], by_id["arena-1"]["score"], by_id["arena-2"]["score"]) == (70.0, 50.0, None)
        assert by_id["arena-1"]["turns"] == 3 and "arena-2" in by_id["arena-2"]["error"]
        for body in server.requests:  # the judge reads the whole dialogue: questions, ground truths, responses
            assert body["temperature"] == 0.0 and body["response_format"] == {"type": "json_object"}
            text = body["messages"][1]["content"]
            rid = "arena-" + re.search(r"GT-(\d)-1", text).group(1)
            at = 0
            for k, (question, gold) in enumerate(DIALOGUES[rid][0]):  # each in turn order, after the one before
                answer = preds.loc[rid if k == 0 else f"{rid}#t{k}", "prediction"] or judge.NO_RESPONSE
                for part in (question.replace("<image>\n", ""), gold, answer):
                    at = text.index(part, at) + len(part)
        with open(os.path.join(out, "report.md")) as f:
            report = f.read()
        assert "LLM judge, per record" in report and "arena arena-1" in report and judge.ARENA_PROMPT_VERSION in report

        assert cli.main(args) == 0  # a rerun: every dialogue's reply comes from the cache
        again = json.loads(capsys.readouterr().out)["judge"]
        assert len(server.requests) == 3 and again["requests"] == 0 and again["cache_hits"] == 3
        assert again["score"] == jd["score"] and again["failed"] == 1
    finally:
        server.close()


def test_the_reference_arena_output_gives_one_prediction_per_turn(tmp_path, capsys):
    """PULSE's arena output (one line per record, a list of responses) against the ECGBench JSON; arena-1 lacks
    its third response: a missing prediction, shown to the judge as no response."""
    path = make_arena(str(tmp_path / "bench"))
    lines = [{"question_id": rid, "response": [{"response": f"R-{rid}-{k}"} for k in range(len(turns))][:2]}
             for rid, (turns, _) in DIALOGUES.items()]
    (tmp_path / "arena.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    server = ArenaJudge()
    try:
        assert cli.main(["score", "--task", "ecg-arena", "--references", path, "--predictions",
                         str(tmp_path / "arena.jsonl"), "--json", "--judge", "openai:j", "--judge-base", server.url]) == 0
        result = json.loads(capsys.readouterr().out)
    finally:
        server.close()
    assert result["input"]["missing_predictions"] == 1 and result["input"]["missing_examples"] == ["arena-1#t2"]
    assert len(server.requests) == 3 and result["judge"]["score"] == 60.0
    text = next(b["messages"][1]["content"] for b in server.requests if "GT-1-1" in b["messages"][1]["content"])
    assert text.index("R-arena-1-0") < text.index("R-arena-1-1") < text.index("GT-1-3") < text.index(judge.NO_RESPONSE)
    assert {r["id"]: r["answered_turns"] for r in result["judge"]["records"]} == {"arena-0": 2, "arena-1": 2,
                                                                                  "arena-2": 2}
