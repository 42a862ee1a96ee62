"""``ecgvlm score --judge openai:NAME --judge-base URL`` on free-text reports, against a local judge server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metrics.judge import PROMPT_VERSION, parse_reply, record_score
from pipelines import cli

# model report -> what the judge server answers (a 500 first for the last one)
REPLIES = {"sinus rhythm. normal ecg.": '{"Diagnosis": 10, "Waveform": 8, "Rhythm": 9}',
           "atrial fibrillation": '{"diagnosis": 4, "waveform": 5, "RHYTHM": 3}',
           "garbage": "I would rate this report poorly.",
           "left ventricular hypertrophy": '{"Diagnosis": 6, "Waveform": 6, "Rhythm": 6}'}


class JudgeServer:
    def __init__(self):
        self.requests, self.failed_once = [], False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                report = body["messages"][1]["content"].split("Model report:\n", 1)[1]
                if report == "left ventricular hypertrophy" and not server.failed_once:
                    server.failed_once = True
                    return self._send(500, b'{"error": {"message": "overloaded"}}')
                reply = {"id": "j", "object": "chat.completion", "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": REPLIES[report]}}],
                         "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}}
                self._send(200, json.dumps(reply).encode())

            def _send(self, status, data):
                self.send_response(status)
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


def test_parse_reply_and_record_score():
    assert parse_reply('{"Diagnosis": 10, "Waveform": 8, "Rhythm": 9}') == {"diagnosis": 10, "waveform": 8,
                                                                           "rhythm": 9}
    assert record_score({"diagnosis": 10, "waveform": 8, "rhythm": 9}) == 90.0
    for bad, why in (("nope", "not JSON"), ("[1, 2]", "not a JSON object"), ('{"Diagnosis": 11, "Waveform": 1, '
                     '"Rhythm": 1}', "no 0-10 score for Diagnosis"), ('{"Diagnosis": 1, "Waveform": 1}', "Rhythm")):
        with pytest.raises(ValueError, match=why):
            parse_reply(bad)


def test_judge_scores_reports_and_a_rerun_sends_nothing(tmp_path, capsys):
    answers = {"r1": "sinus rhythm. normal ecg.", "r2": "atrial fibrillation", "r3": "garbage", "r4": "",
               "r5": "left ventricular hypertrophy"}
    refs = [{"id": k, "conversations": [{"from": "human", "value": "<image>\nWrite the report of this ECG."},
                                        {"from": "gpt", "value": "sinus rhythm, normal ECG"}]} for k in answers]
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n"
                                                    for k, v in answers.items()))
    server = JudgeServer()
    try:
        args = ["score", "--task", "ptb-test-report", "--references", str(tmp_path / "refs.json"), "--predictions",
                str(tmp_path / "answers.jsonl"), "--json", "--judge", "openai:judge-model", "--judge-base", server.url]
        assert cli.main(args) == 0
        judged = json.loads(capsys.readouterr().out)["judge"]
        # r1 90, r2 40, r4 empty: 0 without a request, r5 60 after one retry; r3's reply is not the rubric's JSON
        assert (judged["judged"], judged["failed"], judged["score"]) == (4, 1, round((90 + 40 + 0 + 60) / 4, 1)), judged
        assert (judged["diagnosis"], judged["waveform"], judged["rhythm"]) == (5.0, 4.75, 4.5)
        assert "r3" in judged["errors"][0] and "not JSON" in judged["errors"][0]
        assert judged["model"] == "openai:judge-model" and judged["prompt_version"] == PROMPT_VERSION
        assert len(server.requests) == judged["requests"] == 5  # r1, r2, r3, r5 twice
        sent = server.requests[0]
        assert sent["temperature"] == 0.0 and sent["response_format"] == {"type": "json_object"}
        assert sent["model"] == "judge-model" and "sinus rhythm, normal ECG" in sent["messages"][1]["content"]
        # a rerun: every reply comes from the per-record cache beside the predictions
        assert cli.main(args) == 0
        again = json.loads(capsys.readouterr().out)["judge"]
        assert len(server.requests) == 5 and again["cache_hits"] == 4 and again["score"] == judged["score"]
    finally:
        server.close()
