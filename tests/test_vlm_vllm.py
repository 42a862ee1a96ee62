"""vlm.vllm_engine: request building with the real SmolVLM processor, prompt log-probability sums, the clear error
without the ``vllm`` extra, and rows without label scores; with vLLM installed (its own environment: see
``make test-vllm``), the engine itself on the real architecture with dummy weights."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
from PIL import Image

import vlm
from metrics.tasks import get_task
from vlm import vllm_engine
from vlm.vllm_engine import build_request, continuation_request, engine_args, tail_logprob

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
QUESTION = get_task("code15").question
LABELS = list(get_task("code15").labels)


@pytest.fixture(scope="module")
def processor(smolvlm_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(smolvlm_dir)


def test_engine_args_map_model_names_and_splitting():
    args = engine_args("random:/models/smol", image_splitting=False, dtype="bfloat16")
    assert args["model"] == "/models/smol" and args["load_format"] == "dummy"  # random weights, no checkpoint
    assert args["mm_processor_kwargs"] == {"do_image_splitting": False}
    assert args["limit_mm_per_prompt"] == {"image": 1} and args["enable_prefix_caching"]
    hub = engine_args("HuggingFaceTB/SmolVLM-256M-Instruct", image_splitting=True, enforce_eager=True)
    assert hub["model"] == "HuggingFaceTB/SmolVLM-256M-Instruct" and hub["load_format"] == "auto"
    assert hub["mm_processor_kwargs"] == {"do_image_splitting": True} and hub["enforce_eager"] is True


def test_requests_use_the_prompt_of_the_hf_engine(processor, smolvlm_dir):
    page = Image.new("RGB", (1100, 850), "white")
    request = build_request(processor, page, QUESTION)
    assert request["multi_modal_data"]["image"] is page
    # the same chat text the HF engine tokenizes (vlm.prompt.chat_prompt through the processor's template)
    hf = vlm.Predictor.from_loaded(vlm.load(f"random:{smolvlm_dir}", device="meta"))
    text = hf.tokenizer.decode(hf.encode_one(page, QUESTION)["input_ids"][0])
    assert request["prompt"].startswith("<|im_start|>User:<image>")
    assert request["prompt"].endswith("<end_of_utterance>\nAssistant:")
    assert text.endswith(request["prompt"].split("<image>", 1)[1])  # after the image block, identical
    longer = continuation_request(request, " SB; ST")
    assert longer["prompt"] == request["prompt"] + " SB; ST"
    assert longer["multi_modal_data"] is request["multi_modal_data"]
    assert request["prompt"].endswith("Assistant:")  # the original request is left as it was


def test_tail_logprob_sums_the_last_prompt_tokens():
    lp = lambda x: SimpleNamespace(logprob=x)  # noqa: E731 - vLLM's Logprob objects carry .logprob
    ids = [5, 9, 7, 3]
    prompt_logprobs = [None, {9: lp(-0.5), 1: lp(-0.1)}, {7: lp(-1.25)}, {3: lp(-2.0), 8: lp(-0.2)}]
    assert tail_logprob(prompt_logprobs, ids, 2) == pytest.approx(-3.25)  # tokens 7 and 3, not the top ones
    assert tail_logprob(prompt_logprobs, ids, 1) == pytest.approx(-2.0)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_without_the_extra_the_engine_says_how_to_install_it():
    with pytest.raises(ImportError, match=r"pip install 'ecgvlm\[vllm\]'"):
        vllm_engine.VLLMPredictor("random:/nowhere")


def test_the_in_memory_tiny_preset_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="export it first"):
        vllm_engine.VLLMPredictor("tiny")


def test_rows_scored_without_labels_carry_no_label_scores():
    import pandas as pd

    from ecg.render import render, to_bytes
    from ecg.synth import generate

    predictor = vlm.Predictor("tiny", label_scores=False)  # any engine: predict_rows honours label_scores
    page = to_bytes(render(next(generate(1, seed=2))))
    frame = pd.DataFrame({"id": ["a"], "task": ["code15"], "image": [page], "question": [QUESTION], "answer": [""]})
    out = vlm.predict_rows(predictor, frame)
    assert out["error"].isna().all() and out["label_scores"].isna().all()
    predictor.label_scores = True
    scores = json.loads(vlm.predict_rows(predictor, frame)["label_scores"].iat[0])
    assert list(scores) == LABELS


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM not installed (make test-vllm runs this in its own environment)")
@pytest.mark.parametrize("splitting", [False, True])
def test_vllm_engine_answers_and_scores_the_real_architecture(smolvlm_dir, splitting):
    import pandas as pd

    from ecg.render import render, to_bytes
    from ecg.synth import generate

    predictor = vllm_engine.VLLMPredictor(f"random:{smolvlm_dir}", image_splitting=splitting, dtype="bfloat16",
                                          enforce_eager=True, max_num_seqs=8)  # fmt: skip
    pages = [render(r) for r in generate(2, seed=4)]
    rows = [predictor.encode_one(p, QUESTION, max_new_tokens=6) for p in pages]
    answers, scores = predictor.run_encoded(rows, max_new_tokens=6, min_new_tokens=6, labels=LABELS)
    assert len(answers) == 2 and all(a for a in answers)  # dummy weights: some text, 6 tokens long
    assert all(list(s) == LABELS and all(0.0 <= v <= 1.0 for v in s.values()) for s in scores)
    frame = pd.DataFrame({"id": ["a", "b"], "task": ["code15"] * 2, "image": [to_bytes(p) for p in pages],
                          "question": [QUESTION] * 2, "answer": [""] * 2,
                          "meta": ["{}", json.dumps({"history": [{"role": "user", "text": "<image>\\nRate?"},
                                                                 {"role": "assistant", "text": "60 bpm"}]})]})
    out = vlm.predict_rows(predictor, frame)
    assert out["error"].isna().all() and out["label_scores"].notna().all(), out["error"].tolist()
    assert (out["prompt_tokens"] > 0).all()
    assert out["prompt_tokens"].iat[1] > out["prompt_tokens"].iat[0]  # the earlier turns are in the prompt
