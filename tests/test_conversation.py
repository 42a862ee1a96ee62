"""ecgtasks.conversation: one parser for ECGInstruct records, Parquet cells, row histories and OpenAI chat requests."""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ecg.jsonrecords import read_records
from ecgtasks.conversation import (ASSISTANT, USER, ConversationError, Turn, dialogue, first_text, history,
                                   last_question, parse_turns, turn_pairs)

RHYTHM_Q = "<image>\nWhat is the rhythm of this ECG? Options: NORM, SB, ST, AF."


def _instruct_file(tmp_path):
    """An ECGInstruct-style JSON array as the published file holds it: a list of images, three turn pairs."""
    record = {"id": "ecginstruct-00017", "image": ["images/ptbxl/00017_hr.png"], "conversations": [
        {"from": "human", "value": RHYTHM_Q}, {"from": "gpt", "value": "SB"},
        {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "The rate is below 60 bpm."},
        {"from": "human", "value": "Does this ECG show sinus rhythm?"}, {"from": "gpt", "value": ["yes", "none"]}]}
    path = tmp_path / "ECGInstruct.json"
    path.write_text(json.dumps([record], indent=1))
    return path


def test_an_ecginstruct_record_read_from_its_file(tmp_path):
    (record,) = read_records(str(_instruct_file(tmp_path)))
    turns = parse_turns(record["conversations"], record=record["id"])
    assert [t.role for t in turns] == [USER, ASSISTANT] * 3
    assert turns[0] == Turn(USER, RHYTHM_Q, (), "human")
    assert turns[-1].text == '["yes", "none"]'  # ECG-QA's list gold, as the JSON text the scorer reads back
    assert turn_pairs(turns) == [(RHYTHM_Q, "SB"), ("Why?", "The rate is below 60 bpm."),
                                 ("Does this ECG show sinus rhythm?", '["yes", "none"]')]
    assert turn_pairs(json.dumps(record["conversations"])) == turn_pairs(turns)  # the JSON text column form
    assert first_text(record["conversations"], "gpt") == "SB" and first_text([], "human") is None


def test_a_conversation_cell_read_back_from_parquet(tmp_path):
    conv = [{"from": "human", "value": RHYTHM_Q}, {"from": "gpt", "value": "AF"}]
    pq.write_table(pa.table({"id": ["x-1"], "conversations": [conv]}), tmp_path / "t.parquet")
    cell = pq.read_table(tmp_path / "t.parquet").to_pandas()["conversations"][0]  # an ndarray of dicts
    assert type(cell).__name__ == "ndarray"
    assert turn_pairs(cell) == [(RHYTHM_Q, "AF")] and first_text(cell, "human") == RHYTHM_Q


def test_every_error_names_the_record_and_the_turn():
    cases = [([{"from": "human", "value": "q"}], "record 'r-1' conversations turn 0: a human turn with no answer"),
             ([{"from": "gpt", "value": "a"}], "record 'r-1' conversations turn 0: expected a human turn"),
             ([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}],
              "record 'r-1' conversations turn 1: expected a gpt turn with text, got from='bot'"),
             ([{"from": "human", "value": "q"}, {"from": "gpt", "value": [1, 2]}],
              "record 'r-1' conversations turn 1: a gold answer list must hold texts only"),
             ("[{not json", "record 'r-1' conversations: not JSON"),
             ({"from": "human"}, "record 'r-1' conversations: expected a list of turns, got dict"),
             ([], "record 'r-1' conversations: empty")]
    for value, message in cases:
        with pytest.raises(ConversationError, match=message.replace("[", r"\[")) as info:
            turn_pairs(value, record="r-1")
        assert info.value.record == "r-1"


def test_a_row_history_becomes_the_prompt_turns():
    meta = json.dumps({"split": "test", "history": [{"role": "user", "text": RHYTHM_Q},
                                                    {"role": "assistant", "text": "SB"}]})
    earlier = history(meta)
    assert earlier == [Turn(USER, RHYTHM_Q, (), "user"), Turn(ASSISTANT, "SB", (), "assistant")]
    assert [t.as_history() for t in earlier] == json.loads(meta)["history"]  # the form prepare writes
    assert [t.text for t in dialogue("Why?", earlier)] == [RHYTHM_Q, "SB", "Why?"]
    assert history(None) is None and history("free text") is None and history('{"history": []}') is None
    with pytest.raises(ConversationError, match="chat history: must start with a user turn, got 'assistant'"):
        dialogue("Why?", earlier[1:])


def test_an_openai_chat_request_with_a_data_image():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = json.loads(json.dumps({"model": "tiny", "messages": [  # the JSON an openai client sends
        {"role": "system", "content": "You read ECGs."},
        {"role": "user", "content": [{"type": "text", "text": "Which rhythm?"},
                                     {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]},
        {"role": "assistant", "content": "SB"},
        {"role": "user", "content": [{"type": "text", "text": "And the rate?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}]}))
    turns = parse_turns(body["messages"], field="messages")
    assert [t.role for t in turns] == ["system", USER, ASSISTANT, USER]
    question, earlier = last_question(turns)
    assert question.text == "And the rate?" and len(question.images) == 1
    assert base64.b64decode(question.images[0].split(",", 1)[1]) == buf.getvalue()
    assert Image.open(io.BytesIO(base64.b64decode(question.images[0].split(",", 1)[1]))).size == (64, 48)
    assert [t.text for t in earlier] == ["You read ECGs.", "Which rhythm?", "SB"]
    with pytest.raises(ConversationError, match="messages turn 0: a content part of type 'audio'"):
        parse_turns([{"role": "user", "content": [{"type": "audio", "audio": "..."}]}], field="messages")
    with pytest.raises(ConversationError, match="messages: has no user message"):
        last_question(parse_turns([{"role": "system", "content": "x"}], field="messages"))


def test_followups_read_back_from_a_row_meta_and_bad_ones_are_named():
    from ecgtasks.conversation import followups

    turns = [{"role": "user", "text": "What are the measurements?"}, {"role": "assistant", "text": "rate 70 bpm"}]
    assert followups(json.dumps({"followups": turns})) == [("What are the measurements?", "rate 70 bpm")]
    assert followups({"history": turns}) is None and followups(None) is None and followups("") is None
    with pytest.raises(ConversationError, match="followups turn 1: must be user and assistant turns in turn"):
        followups({"followups": [turns[0], turns[0]]})
    with pytest.raises(ConversationError, match="followups turn 0: ends with a question that has no reply"):
        followups({"followups": turns[:1]})
