"""Other VLM families in-process (vlm/families/): for each tiny random model of Qwen2-VL, Qwen2.5-VL, LLaVA-1.5,
LLaVA-NeXT and Idefics2, our engine's greedy answers on a left-padded batch equal ``model.generate`` token for token,
label log-probabilities on the prompt cache equal a from-scratch forward pass, one LoRA step through vlm.training
lowers the loss with labels on the answer only, predict_rows runs, and an export reloads. Then an unsupported
model type fails before its weights load, and ``ecgvlm evaluate --model tiny:qwen2_vl`` writes predictions."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import vlm
from ecg.render import render
from ecg.synth import generate
from metrics.tasks import get_task
from vlm import engine
from vlm.families import UnsupportedModel, get_family
from vlm.load import load_processor
from vlm.tiny_families import FAMILIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK = get_task("code15")
QUESTIONS = [TASK.question, "<image>\nWhich diagnoses fit?", "<image>\nRhythm?"]  # three prompt lengths


@pytest.fixture(scope="module")
def pages():
    records = list(generate(3, seed=3))
    return [render(records[0]), render(records[1], width=1000, height=350), render(records[2], width=600, height=900)]


def _image_inputs(row: dict, extra_tokens: int = 0) -> dict:
    """The row's processor outputs other than the text, ``mm_token_type_ids`` extended over appended text."""
    out = {k: v for k, v in row.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in out and extra_tokens:
        out["mm_token_type_ids"] = torch.cat([out["mm_token_type_ids"],
                                              out["mm_token_type_ids"].new_zeros((1, extra_tokens))], dim=1)
    return out


def _reference_logprob(model, row, ids: list[int], n: int) -> float:
    full = torch.cat([row["input_ids"], torch.tensor([ids])], dim=1)  # (1, T + len(ids))
    logits = model(input_ids=full, attention_mask=torch.ones_like(full),
                   **_image_inputs(row, len(ids))).logits[0].float()  # fmt: skip
    t = row["input_ids"].shape[1]
    logp = torch.log_softmax(logits[t - 1 :], dim=-1)  # position t - 1 + m predicts ids[m]
    return sum(float(logp[m, ids[m]]) for m in range(len(ids) - n, len(ids)))


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_equals_generate_and_full_forward(family, pages):
    predictor = vlm.Predictor(f"tiny:{family}", device="cpu", dtype="float32")
    model = predictor.loaded.model
    assert predictor.loaded.family == family == predictor.family.name
    rows = [predictor.encode_one(page, q, max_new_tokens=6) for page, q in zip(pages, QUESTIONS)]
    lengths = [r["input_ids"].shape[1] for r in rows]
    assert len(set(lengths)) == 3  # the batch is left padded
    with torch.inference_mode():
        features = engine.image_features(model, rows)
        prompt = engine.prefill(model, rows, features, image_token_id=predictor.loaded.processor.image_token_id,
                                pad_id=predictor.pad_id)  # fmt: skip
        tokens = engine.greedy(model, prompt, max_new_tokens=6, stop_ids=predictor.stop_ids, pad_id=predictor.pad_id,
                               min_new_tokens=6)  # fmt: skip
        want = [model.generate(**r, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                               eos_token_id=predictor.stop_ids, pad_token_id=predictor.pad_id)
                [0, r["input_ids"].shape[1]:].tolist() for r in rows]  # fmt: skip
        assert tokens == want and all(len(t) == 6 for t in tokens)

        conts = [(0, *predictor._continuation("", "SB")), (1, *predictor._continuation("", "1dAVb")),
                 (2, *predictor._continuation("SB; ST", "AF")), (1, *predictor._continuation("RBBB", "LBBB"))]
        got = engine.continuation_logprobs(model, prompt, conts, pad_id=predictor.pad_id, batch=3)
        ref = [_reference_logprob(model, rows[i], ids, n) for i, ids, n in conts]
        assert got == pytest.approx(ref, abs=1e-4)
        assert all(r < -1.0 for r in ref)  # random weights: far from 0, so the tolerance is tight
    if family.startswith("qwen"):  # M-RoPE: the text after an image does not go on from the token count
        assert prompt.next_positions is not None and not torch.equal(prompt.next_positions, prompt.lengths)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_step_on_the_answer_only(family, pages):
    from vlm.finetune import build_optimizer, configure_trainable
    from vlm.training import Collator, encode_rows

    loaded = vlm.load(f"tiny:{family}", device="cpu", dtype="float32")
    frame = pd.DataFrame({"id": ["a", "b"], "image": [_png(pages[0]), _png(pages[1])],
                          "question": QUESTIONS[:2], "answer": ["SB; 1dAVb", "AF"]})  # fmt: skip
    encoded = encode_rows(loaded, frame)
    assert list(encoded["error"]) == ["", ""]
    batch = Collator.for_loaded(loaded)(encoded)
    tok = loaded.processor.tokenizer
    end = get_family(family).end_token(tok)  # <|im_end|>, </s> or <end_of_utterance>
    for i, answer in enumerate(["SB; 1dAVb", "AF"]):
        kept = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert tok.decode(kept).strip() == answer + end  # the answer and the end-of-turn token, nothing else

    model = configure_trainable(loaded.model.train(), mode="lora", lora_rank=4)
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = build_optimizer(model, lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llava_next"])
def test_predict_rows_and_export_roundtrip(family, pages, tmp_path):
    predictor = vlm.Predictor(f"tiny:{family}", device="cpu", dtype="float32")
    frame = pd.DataFrame({"id": ["r0", "r1", "bad"], "task": ["code15"] * 3,
                          "image": [_png(pages[0]), _png(pages[2]), b"not an image"],
                          "question": [TASK.question] * 3, "answer": ["SB"] * 3})  # fmt: skip
    out = vlm.predict_rows(predictor, frame, budgets={"code15": 4})
    assert out["error"].isna().tolist() == [True, True, False] and "bad" in out.loc[2, "error"]
    scores = json.loads(out.loc[0, "label_scores"])
    assert list(scores) == list(TASK.labels) and all(0.0 <= v <= 1.0 for v in scores.values())

    folder = vlm.export(predictor.loaded, str(tmp_path / "export"))
    again = vlm.Predictor(folder, device="cpu", dtype="float32")
    assert again.family.name == family
    assert vlm.predict_rows(again, frame.iloc[:2], budgets={"code15": 4})["prediction"].tolist() == \
        out["prediction"].iloc[:2].tolist()  # fmt: skip
    random = vlm.load(f"random:{folder}", device="cpu", dtype="float32")  # the config folder, random weights
    assert random.family == family


def test_unsupported_model_type_names_it_and_the_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    for model in (f"random:{tmp_path}", str(tmp_path)):
        with pytest.raises(UnsupportedModel, match=r"'paligemma'.*qwen2_vl.*llava_next"):
            vlm.load(model, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(UnsupportedModel, match="'not-a-model'.*idefics3"):
        load_processor(str(tmp_path))
    with pytest.raises(ValueError, match="tiny:qwen2_vl"):
        vlm.load("tiny:nope")


def test_evaluate_cli_on_tiny_qwen2_vl(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    from ecg import samples, shards
    from ecg.rows import SAMPLE_SCHEMA
    from pipelines import cli

    table = samples.synthetic_batch({"start": [0], "count": [4]}, seed=2, splits={"test": 1.0},
                                    options=samples.RenderOptions(width=550, height=425))  # fmt: skip
    (tmp_path / "data" / "test").mkdir(parents=True)
    pq.write_table(table.drop(["split"]).cast(SAMPLE_SCHEMA), tmp_path / "data" / "test" / "part-0.parquet")
    out = str(tmp_path / "eval")
    assert cli.main(["evaluate", "--model", "tiny:qwen2_vl", "--data", str(tmp_path / "data"), "--out", out,
                     "--decoding", "fast", "--progress-s", "0", "--tracking", "none"]) == 0  # fmt: skip
    frame = shards.read_predictions(out + "/predictions")
    assert sorted(frame["id"]) == sorted(table.column("id").to_pylist())
    assert frame["error"].isna().all() and (frame["model"] == "tiny:qwen2_vl").all()
