"""vlm.engine through vlm.Predictor: one vision pass per image and one prompt pass per row give the same answers
as ``model.generate`` and the same label log-probabilities as running each prompt + continuation from scratch.

The model is the real SmolVLM-256M-Instruct architecture and processor scaled down (2 layers, small widths,
random weights; the config files come from the ``smolvlm_dir`` fixture), plus the tiny preset."""

from __future__ import annotations

import math
import os

import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate
from metrics.tasks import get_task
from vlm import engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTION = get_task("code15").question
LABELS = list(get_task("code15").labels)


@pytest.fixture(scope="module")
def small_smolvlm_dir(smolvlm_dir, tmp_path_factory):
    """The SmolVLM-256M-Instruct config at 2 + 2 layers and small widths, beside links to its processor files."""
    from transformers import AutoConfig

    folder = tmp_path_factory.mktemp("small-smolvlm")
    config = AutoConfig.from_pretrained(smolvlm_dir)
    text, vision = config.text_config, config.vision_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = 2, 64, 128
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 4, 2, 16
    vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 2, 32, 64, 2
    config.save_pretrained(folder)
    for name in os.listdir(smolvlm_dir):
        if name != "config.json":
            os.symlink(os.path.join(smolvlm_dir, name), folder / name)
    return folder


def _pages():
    records = list(generate(2, seed=3))
    # different sizes: with splitting on, a different number of tiles per row, and different prompt lengths
    return [render(records[0]), render(records[1], width=1000, height=350)]


def _generate_reference(model, row, predictor, max_new_tokens, min_new_tokens=0) -> list[int]:
    out = model.generate(**row, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                         num_beams=1, eos_token_id=predictor.stop_ids, pad_token_id=predictor.pad_id)  # fmt: skip
    new = out[0, row["input_ids"].shape[1] :].tolist()
    return new[: next((i for i, t in enumerate(new) if t in predictor.stop_ids), len(new))]


def _logprob_reference(model, row, ids: list[int], n: int) -> float:
    """log P(last n of ids | prompt, the ids before them): one full forward of prompt + ids with the image."""
    full = torch.cat([row["input_ids"], torch.tensor([ids])], dim=1)  # (1, T + len(ids))
    logits = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=row["pixel_values"],
                   pixel_attention_mask=row["pixel_attention_mask"]).logits[0].float()  # fmt: skip
    t = row["input_ids"].shape[1]
    logp = torch.log_softmax(logits[t - 1 :], dim=-1)  # (len(ids) + 1, vocab): position t - 1 + m predicts ids[m]
    return sum(float(logp[m, ids[m]]) for m in range(len(ids) - n, len(ids)))


def _noisy_or(predictor, row, answer: str, model) -> dict:
    """The slot noisy-OR of vlm.Predictor.score_labels, every continuation computed from scratch."""
    said = [p.strip() for p in answer.split(";") if p.strip() in LABELS]
    miss = {lab: 1.0 for lab in LABELS}
    for j in range(len(said) + 1):
        for lab in LABELS:
            ids, n = predictor._continuation("; ".join(said[:j]), lab)
            miss[lab] *= 1.0 - math.exp(_logprob_reference(model, row, ids, n))
    return {lab: 1.0 - m for lab, m in miss.items()}


@pytest.mark.parametrize("splitting", [False, True])
def test_batched_engine_matches_generate_and_from_scratch_logprobs(small_smolvlm_dir, splitting):
    # longest_edge 1024: 5 and 3 tiles of 512 px with splitting (17 and 9 at the default 2048), a faster test
    predictor = vlm.Predictor(f"random:{small_smolvlm_dir}", device="cpu", dtype="float32",
                              image_splitting=splitting, longest_edge=1024, vision_batch=3)  # fmt: skip
    model = predictor.loaded.model
    questions = [QUESTION, "<image>\nWhich diagnoses fit?"]  # different lengths: the batch is left padded
    rows = [predictor.encode_one(page, q, max_new_tokens=6) for page, q in zip(_pages(), questions)]
    tiles = [r["pixel_values"].shape[1] for r in rows]
    assert (tiles[0] > tiles[1] > 1) if splitting else tiles == [1, 1]
    assert rows[0]["input_ids"].shape[1] > rows[1]["input_ids"].shape[1]

    with torch.inference_mode():
        # greedy answers of the padded batch == model.generate on each row alone, token for token
        features = engine.image_features(model, rows, tiles_per_call=predictor.vision_batch)
        prompt = engine.prefill(model, rows, features, image_token_id=predictor.loaded.processor.image_token_id,
                                pad_id=predictor.pad_id)  # fmt: skip
        tokens = engine.greedy(model, prompt, max_new_tokens=6, stop_ids=predictor.stop_ids, pad_id=predictor.pad_id,
                               min_new_tokens=6)  # fmt: skip
        assert [len(t) for t in tokens] == [6, 6]  # min_new_tokens: a fixed length even for random weights
        assert tokens == [_generate_reference(model, r, predictor, 6, 6) for r in rows]
        free = engine.greedy(model, prompt, max_new_tokens=6, stop_ids=predictor.stop_ids, pad_id=predictor.pad_id)
        assert free == [_generate_reference(model, r, predictor, 6) for r in rows]

        # each continuation's log-probability == a from-scratch forward of prompt + continuation (within 1e-4)
        conts = [(0, *predictor._continuation("", "SB")), (1, *predictor._continuation("", "1dAVb")),
                 (0, *predictor._continuation("SB; ST", "AF")), (1, *predictor._continuation("RBBB", "LBBB"))]
        got = engine.continuation_logprobs(model, prompt, conts, pad_id=predictor.pad_id, batch=3)
        want = [_logprob_reference(model, rows[i], ids, n) for i, ids, n in conts]
        assert got == pytest.approx(want, abs=1e-4)
        assert all(w < -1.0 for w in want)  # random weights: log-probs far from 0, so the tolerance is tight

    if splitting:
        return  # the noisy-OR over slots does not depend on the tiles; it is checked once, below and unsplit
    answers = ["SB; ST", "AF"]
    scores = predictor.score_encoded(rows, LABELS, answers=answers)
    with torch.inference_mode():
        reference = [_noisy_or(predictor, r, a, model) for r, a in zip(rows, answers)]
    for mine, ref in zip(scores, reference):
        assert list(mine) == LABELS
        assert [mine[lab] for lab in LABELS] == pytest.approx([ref[lab] for lab in LABELS], abs=1e-4)


def test_label_probabilities_of_the_tiny_model_match_from_scratch_forwards():
    predictor = vlm.Predictor("tiny")
    model = predictor.loaded.model
    rows = [predictor.encode_one(page, QUESTION, max_new_tokens=8) for page in _pages()]
    answers, scores = predictor.run_encoded(rows, max_new_tokens=8, labels=LABELS)
    assert answers == predictor.generate_encoded(rows, max_new_tokens=8)
    with torch.inference_mode():
        assert answers == [predictor.tokenizer.decode(_generate_reference(model, r, predictor, 8),
                                                      skip_special_tokens=True).strip() for r in rows]  # fmt: skip
        reference = [_noisy_or(predictor, r, a, model) for r, a in zip(rows, answers)]
    for mine, ref in zip(scores, reference):
        assert [mine[lab] for lab in LABELS] == pytest.approx([ref[lab] for lab in LABELS], abs=1e-4)
    assert max(max(s.values()) for s in scores) > 1e-3  # a small vocabulary: probabilities well above the tolerance


def test_predict_rows_runs_the_vision_tower_once_per_tile(small_smolvlm_dir):
    import pandas as pd

    from ecg.render import to_bytes

    predictor = vlm.Predictor(f"random:{small_smolvlm_dir}", device="cpu", image_splitting=True, longest_edge=1024)
    seen = []
    vision = predictor.loaded.model.model.vision_model
    count = lambda module, args, kwargs, out: seen.append(kwargs["pixel_values"].shape[0])  # noqa: E731
    handle = vision.register_forward_hook(count, with_kwargs=True)
    try:
        pages = _pages()
        frame = pd.DataFrame({"id": ["a", "b"], "task": ["code15"] * 2, "image": [to_bytes(p) for p in pages],
                              "question": [QUESTION] * 2, "answer": ["NORM"] * 2})  # fmt: skip
        out = vlm.predict_rows(predictor, frame)
    finally:
        handle.remove()
    assert out["error"].isna().all() and out["label_scores"].notna().all()  # answered and scored
    tiles = sum(predictor.encode_one(p, QUESTION)["pixel_values"].shape[1] for p in pages)
    assert sum(seen) == tiles  # generation and label scoring share one pass: every tile exactly once
    assert len(seen) == math.ceil(tiles / predictor.vision_batch)  # tiles of both rows went through together


def test_left_pad_right_aligns_rows():
    ids, mask = engine.left_pad([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
