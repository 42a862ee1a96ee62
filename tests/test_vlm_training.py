"""vlm.training.collate: the loss sees only the answer and <end_of_utterance>; a model trained on it answers
exactly and stops, and its label scores rank the gold labels first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate, measurements_text

QUESTIONS = [
    "<image>\nWhich of the following diagnoses fit this 12-lead ECG?",
    "<image>\nAnswer only with the options.",
]
ANSWERS = ["SB; 1dAVb", "NORM"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pages():
    return [render(r) for r in generate(2, seed=0)]


@pytest.fixture(scope="module")
def trained(pages):
    """The tiny model overfitted on two (page, question, answer) rows: 30 AdamW steps, about 5 s."""
    loaded = vlm.load("tiny")
    batch = vlm.training.collate(loaded, pages, QUESTIONS, ANSWERS)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(loaded.model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    loaded.model.train()
    losses = []
    for _ in range(30):
        loss = loaded.model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    loaded.model.eval()
    return loaded, losses


def _kept_text(loaded, batch, row):
    labels = batch["labels"][row]
    return loaded.processor.tokenizer.decode(labels[labels != -100])


def test_collate_keeps_only_the_answer_and_end_token(pages):
    loaded = vlm.load("tiny")
    batch = vlm.training.collate(loaded, pages, QUESTIONS, ANSWERS)
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "labels"}
    for row, answer in enumerate(ANSWERS):
        assert _kept_text(loaded, batch, row) == f" {answer}<end_of_utterance>"
    image_id = loaded.processor.image_token_id
    assert (batch["labels"][batch["input_ids"] == image_id] == -100).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    # right padding: the shorter row's padding is at its end
    assert batch["attention_mask"][1, 0] == 1 and batch["attention_mask"][1, -1] == 0


def test_training_on_collate_learns_exact_answers_that_stop(trained, pages):
    loaded, losses = trained
    assert losses[-1] < 0.3 * losses[0]
    predictor = vlm.Predictor.from_loaded(loaded)
    # max_new_tokens well above the answer: generation must stop on <end_of_utterance>
    assert predictor.generate(pages, QUESTIONS, max_new_tokens=12) == ANSWERS


def test_score_labels_ranks_the_gold_labels_first(trained, pages):
    loaded, _ = trained
    predictor = vlm.Predictor.from_loaded(loaded)
    labels = ["1dAVb", "SB", "AF", "NORM"]
    scores = predictor.score_labels(pages, QUESTIONS, labels)
    assert [sorted(s) for s in scores] == [sorted(labels)] * 2
    assert all(0.0 <= p <= 1.0 for s in scores for p in s.values())
    # row 0 says "SB; 1dAVb": both gold labels (SB second in the answer) beat the others
    assert min(scores[0]["SB"], scores[0]["1dAVb"]) > max(scores[0]["AF"], scores[0]["NORM"])
    assert scores[1]["NORM"] > max(scores[1][k] for k in ("1dAVb", "SB", "AF"))


def test_label_scoring_with_a_shared_prompt_cache_equals_full_passes(trained, pages):
    from vlm import engine

    loaded, _ = trained
    predictor = vlm.Predictor.from_loaded(loaded)
    model = loaded.model.eval()
    rows = [predictor.encode_one(page, q) for page, q in zip(pages, QUESTIONS)]
    conts = [predictor._continuation(prefix, label) for prefix, label in (("", "SB"), ("SB", "1dAVb"), ("", "NORM"))]
    with torch.inference_mode():
        features = engine.image_features(model, rows)
        prompt = engine.prefill(model, rows, features, image_token_id=loaded.processor.image_token_id,
                                pad_id=predictor.pad_id)  # fmt: skip
        cached = engine.continuation_logprobs(model, prompt, [(0, ids, n) for ids, n in conts], pad_id=predictor.pad_id)
        full = []  # each continuation after the whole prompt, image included, in one plain forward pass
        for ids, n in conts:
            seq = torch.cat([rows[0]["input_ids"], torch.tensor([ids])], dim=1)
            logits = model(input_ids=seq, pixel_values=rows[0]["pixel_values"],
                           pixel_attention_mask=rows[0]["pixel_attention_mask"]).logits[0]  # fmt: skip
            logp = torch.log_softmax(logits.float(), dim=-1)
            t = rows[0]["input_ids"].shape[1]
            full.append(sum(float(logp[t + m - 1, ids[m]]) for m in range(len(ids) - n, len(ids))))
    assert cached == pytest.approx(full, abs=1e-4)
    # P("SB" first) and P("; 1dAVb" after "SB") are both likely for the row trained on "SB; 1dAVb"
    assert cached[0] > -1.0 and cached[1] > -1.0 and cached[2] < -1.0


def test_followups_keep_each_reply_and_teach_the_model_to_answer_them(pages):
    """A row's follow-up (the measurements, asked after its answer) is trained on: its reply is kept, its question
    masked; the model then answers the diagnosis prompt alone as before, and the follow-up in a chat."""
    from ecg.synth import MEASUREMENTS_QUESTION

    recs = list(generate(2, seed=0))
    replies = [measurements_text(r.meta) for r in recs]
    follow = [[(MEASUREMENTS_QUESTION, replies[0])], None]
    loaded = vlm.load("tiny", tiny={"measurements": True})  # as ecgvlm train --followups builds it
    batch = vlm.training.collate(loaded, pages, QUESTIONS, ANSWERS, followups=follow)
    assert _kept_text(loaded, batch, 0) == f" {ANSWERS[0]}<end_of_utterance> {replies[0]}<end_of_utterance>"
    assert _kept_text(loaded, batch, 1) == f" {ANSWERS[1]}<end_of_utterance>"
    torch.manual_seed(0)
    opt = torch.optim.AdamW(loaded.model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    loaded.model.train()
    for _ in range(100):
        loaded.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    loaded.model.eval()
    predictor = vlm.Predictor.from_loaded(loaded)
    assert predictor.generate(pages, QUESTIONS, max_new_tokens=12) == ANSWERS  # the prompt is unchanged
    history = [{"role": "user", "text": QUESTIONS[0]}, {"role": "assistant", "text": ANSWERS[0]}]
    row = predictor.encode_one(pages[0], MEASUREMENTS_QUESTION, history=history, max_new_tokens=30)
    assert predictor.generate_encoded([row], max_new_tokens=30) == [replies[0]]


def test_encode_rows_trains_on_a_synthetic_rows_measurements_only_when_asked():
    import pandas as pd

    from ecg.samples import RenderOptions, record_row
    from ecg.synth import record
    from ecgtasks import get_task

    rows = pd.DataFrame([record_row(record(i), task=get_task("code15"), source="synthetic", split="train",
                                    options=RenderOptions()) for i in range(2)])
    from vlm.load import load_processor

    loaded = load_processor("tiny", tiny={"measurements": True})  # as ecgvlm train --followups builds it
    tok = loaded.processor.tokenizer
    assert "▁bpm" not in load_processor("tiny").processor.tokenizer.get_vocab()  # the default keeps the tasks' words
    plain, asked = (vlm.training.encode_rows(loaded, rows, followups=f) for f in (False, True))
    for i in range(2):
        kept = [tok.decode(enc["labels"][i][enc["labels"][i] != -100]) for enc in (plain, asked)]
        assert kept[0] == f" {rows.answer[i]}<end_of_utterance>"
        assert kept[1] == kept[0] + f" {measurements_text(record(i).meta)}<end_of_utterance>"
        assert "rate" in kept[1] and "<unk>" not in tok.decode(asked["input_ids"][i])  # every word is in the vocab


def test_train_followups_give_the_tiny_tokenizer_the_measurement_words(tmp_path):
    from pipelines.train import parse_config

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-code15.yaml"
    base = ["--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert "measurements" not in parse_config(base).tiny
    assert parse_config(base + ["--followups", "true"]).tiny["measurements"] is True
