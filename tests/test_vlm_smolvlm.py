"""The real SmolVLM-256M-Instruct processor and architecture (config files only, no weights, no network):
prompts are formatted as the model expects, and ``random:`` builds the 256 M architecture."""

from __future__ import annotations

import pytest
from PIL import Image

import vlm
from vlm.prompt import chat_prompt, encode

# A short question: its prompt is 1,139 tokens with image splitting and 79 without on a 2200 x 1700 page
# (FINDINGS.md). The code15 question adds 110 text tokens (1,249 / 189).
QUESTION = "<image>\nWhat is shown?"


@pytest.fixture(scope="module")
def smolvlm(smolvlm_dir):
    # device="meta": the real architecture and processor without allocating 256 M random weights
    return vlm.load(f"random:{smolvlm_dir}", device="meta", image_splitting=True)


def test_random_builds_the_256m_architecture(smolvlm):
    n = sum(p.numel() for p in smolvlm.model.parameters())
    assert abs(n - 256.5e6) < 0.5e6, n  # FINDINGS.md: 256.5 M parameters
    assert type(smolvlm.model).__name__ == "Idefics3ForConditionalGeneration"
    assert smolvlm.prep.kind == "identity"  # a pretrained model keeps its own normalisation
    page = Image.new("RGB", (40, 30), "white")
    assert smolvlm.prepare_image(page) is page


def test_prompt_is_the_smolvlm_chat_format(smolvlm):
    prompt = chat_prompt(smolvlm.processor, QUESTION)
    assert prompt == "<|im_start|>User:<image>What is shown?<end_of_utterance>\nAssistant:"


@pytest.mark.parametrize("splitting, tiles, tokens", [(True, 17, 1139), (False, 1, 79)])
def test_image_token_block_and_prompt_length(smolvlm, splitting, tiles, tokens):
    processor = smolvlm.processor
    processor.image_processor.do_image_splitting = splitting
    try:
        page = Image.new("RGB", (2200, 1700), "white")
        batch = encode(processor, [page], [chat_prompt(processor, QUESTION)])
    finally:
        processor.image_processor.do_image_splitting = True
    assert batch["pixel_values"].shape[:2] == (1, tiles)  # 4 x 4 tiles of 512 px + the global image
    assert batch["input_ids"].shape == (1, tokens)
    tok = processor.tokenizer
    text = tok.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>User:<fake_token_around_image>")
    assert text.endswith("<fake_token_around_image>What is shown?<end_of_utterance>\nAssistant:")
    assert text.count("<image>") == 64 * tiles  # image_seq_len 64 per tile
    assert text.count("<global-img>") == 1
    assert ("<row_4_col_4>" in text) == splitting


def test_collate_with_the_real_processor_keeps_only_the_answer(smolvlm):
    smolvlm.processor.image_processor.do_image_splitting = False
    try:
        pages = [Image.new("RGB", (1100, 850), "white"), Image.new("RGB", (800, 600), "white")]
        batch = vlm.training.collate(smolvlm, pages, [QUESTION, "<image>\nWhich rhythm?"], ["SB; 1dAVb", "NORM"])
    finally:
        smolvlm.processor.image_processor.do_image_splitting = True
    tok = smolvlm.processor.tokenizer
    for row, answer in enumerate(["SB; 1dAVb", "NORM"]):
        labels = batch["labels"][row]
        assert tok.decode(labels[labels != -100]) == f" {answer}<end_of_utterance>"


def test_rows_with_different_tile_counts_left_pad_into_one_batch(smolvlm):
    from vlm import engine

    predictor = vlm.Predictor.from_loaded(smolvlm)  # splitting on: tiles depend on the page size
    pages = [Image.new("RGB", (2200, 1700), "white"), Image.new("RGB", (600, 400), "white")]
    rows = [predictor.encode_one(page, QUESTION, max_new_tokens=8) for page in pages]
    tiles = [r["pixel_values"].shape[1] for r in rows]
    lengths = [r["input_ids"].shape[1] for r in rows]
    assert tiles[0] == 17 and tiles[1] < 17
    # the vision tower's output for a row's tiles (64 tokens each) fills exactly that row's image tokens
    image_token = smolvlm.processor.image_token_id
    assert [int((r["input_ids"] == image_token).sum()) for r in rows] == [64 * t for t in tiles]
    ids, mask = engine.left_pad([r["input_ids"][0].tolist() for r in rows], predictor.pad_id)
    assert ids.shape == (2, max(lengths))
    # the short row is padded on the left
    assert mask[1].tolist() == [0] * (lengths[0] - lengths[1]) + [1] * lengths[1]
    assert ids[1, lengths[0] - lengths[1] :].tolist() == rows[1]["input_ids"][0].tolist()
