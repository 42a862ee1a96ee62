"""The tiny preset: offline build, seeded weights, word-level tokenizer round trip, image recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate
from ecgtasks import all_tasks, get_task


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return vlm.load("tiny")


def test_tiny_builds_offline_on_cpu_with_the_findings_recipe(tiny):
    assert tiny.device.type == "cpu" and tiny.dtype == torch.float32
    n = sum(p.numel() for p in tiny.model.parameters())
    assert 0.8e6 < n < 1.1e6  # FINDINGS.md: 0.9 M parameters
    assert tiny.spec.image_seq_len == 49 and tiny.processor.image_seq_len == 49
    ip = tiny.processor.image_processor
    assert list(ip.image_mean) == [1.0, 1.0, 1.0] and list(ip.image_std) == [0.5, 0.5, 0.5]
    assert ip.do_image_splitting is False
    config = tiny.model.config
    assert config.text_config.tie_word_embeddings is False
    assert config.vision_config.patch_size == 16 and config.scale_factor == 2


def test_same_weights_every_time(tiny):
    again = vlm.load("tiny")
    a, b = tiny.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and building it does not disturb the caller's random stream
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    vlm.load("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_every_label_is_one_token_and_answers_round_trip(tiny):
    tok = tiny.processor.tokenizer
    for task in all_tasks():
        for label in task.labels:
            for text in (label, " " + label):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert len(ids) == 1 and ids[0] != tok.unk_token_id, (task.name, text)
    code15 = get_task("code15")
    answers = ["SB; 1dAVb", "NORM", "ABNORMAL", code15.format_answer(code15.labels[:6]), "I-AVB; AF", "A"]
    answers += [task.format_answer(task.labels) for task in all_tasks() if task.labels]
    for answer in answers:
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == answer
    # every word of every task question is in the vocabulary
    for task in all_tasks():
        assert tok.unk_token_id not in tok(task.question, add_special_tokens=False)["input_ids"], task.name


def test_chat_prompt_is_smolvlm_form_with_49_image_tokens(tiny):
    from vlm.prompt import chat_prompt

    prompt = chat_prompt(tiny.processor, "<image>\nWhich of the following diagnoses fit this 12-lead ECG?")
    assert prompt == (
        "<|im_start|>User:<image>Which of the following diagnoses fit this 12-lead ECG?<end_of_utterance>\nAssistant:"
    )
    page = render(next(generate(1, seed=0)))
    batch = tiny.processor(text=[prompt], images=[[tiny.prepare_image(page)]], return_tensors="pt")
    tok = tiny.processor.tokenizer
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert tokens.count("<image>") == 49 and tok.unk_token not in tokens
    assert tokens[:4] == ["<|im_start|>", "User", ":", "<fake_token_around_image>"]
    assert tokens[-4:] == ["<end_of_utterance>", "\n", "Assistant", ":"]


def test_prepare_image_whitens_grid_and_keeps_traces(tiny):
    page = render(next(generate(1, seed=3)))  # 1100 x 850 RGB, pink grid
    prepared = tiny.prepare_image(page)
    assert prepared.size == (224, 224) and prepared.mode == "RGB"
    gray = np.asarray(prepared.convert("L"))  # (224, 224), 0 ink .. 255 paper
    assert (gray == 255).mean() > 0.8  # paper and grid are white
    assert 0.005 < (gray < 128).mean() < 0.1  # the traces (a few % of the page) stay dark
    assert prepared.getpixel((0, 0))[0] == prepared.getpixel((0, 0))[2]  # gray copied to RGB


def test_flat_field_turns_the_table_around_a_photographed_page_white():
    """A phone photo or scan (ecg.pages' photo preset) lies on a darker table: flat-fielded, the table and the
    paper's edge turn white like the paper, and the traces stay as dark as on the clean page of the same record."""
    from ecg.pages import draw, recipe
    from vlm.load import ImagePrep

    prep = ImagePrep(kind="ecg_gray", size=448, white_fraction=0.7, flatten=True)
    frame = np.zeros((448, 448), bool)
    frame[:37], frame[-37:], frame[:, :37], frame[:, -37:] = True, True, True, True  # the outer 1/12: no traces
    for i, record in enumerate(generate(6, seed=5)):
        photo = np.asarray(prep(draw(record, recipe("photo", 100 + i))).convert("L")) < 128  # dark pixels
        clean = np.asarray(prep(draw(record, recipe("clean", 0))).convert("L")) < 128
        assert photo[frame].mean() < 0.05, (i, photo[frame].mean())  # a dark band along the edge was 0.03-0.21
        assert photo[~frame].mean() > 0.7 * clean[~frame].mean(), (i, photo[~frame].mean(), clean[~frame].mean())


def test_generate_batched_on_the_random_tiny_model(tiny):
    predictor = vlm.Predictor.from_loaded(tiny)
    pages = [render(r) for r in generate(2, seed=1)]
    q = get_task("code15").question
    out = predictor.generate(pages, [q, "<image>\nWhich rhythm?"], max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    # left padding: a row answers the same alone as in a batch with a longer prompt
    assert predictor.generate(pages[1:], ["<image>\nWhich rhythm?"], max_new_tokens=3) == out[1:]
