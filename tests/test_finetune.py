"""vlm.finetune without Ray: answer-only loss masking on a real batch, exact pixel caching, the schedule,
the loop (loss falls, stops like a crash, resumes at the checkpoint's step). Real tiny model, real rendered pages."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from ecg.render import render, to_bytes
from ecg.synth import generate
from ecgtasks import CODE15
from vlm import finetune as ft
from vlm.validation import Validator


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Eight real sample rows (synthetic records rendered to PNG pages)."""
    recs = list(generate(8, seed=5))
    return pd.DataFrame({
        "id": [r.id for r in recs],
        "image": [to_bytes(render(r)) for r in recs],
        "question": [CODE15.question] * len(recs),
        "answer": [CODE15.format_answer(r.labels) for r in recs],
    })


@pytest.fixture(scope="module")
def loaded():
    return ft.load_for_training("tiny")


@pytest.fixture(scope="module")
def cached(loaded, rows):
    return ft.encode_rows(loaded, rows)


def test_only_answer_tokens_carry_loss(loaded, rows, cached):
    batch = ft.Collator.for_loaded(loaded)(cached)
    tok = loaded.processor.tokenizer
    for i, answer in enumerate(rows["answer"]):
        kept = batch["labels"][i][batch["labels"][i] != -100]
        assert tok.decode(kept) == f" {answer}<end_of_utterance>"  # exactly the answer and the end-of-turn
        # the kept tokens are exactly the last real tokens of the row: prompt, image and padding are masked
        n_real = int(batch["attention_mask"][i].sum())
        assert torch.equal(batch["input_ids"][i, n_real - len(kept):n_real], kept)
    assert set(batch["labels"][batch["attention_mask"] == 0].tolist()) <= {-100}


def test_cached_pixels_are_exact(loaded, rows, cached):
    from vlm.training import collate

    ref = collate(loaded, [ft.decode_image(i, b) for i, b in zip(rows["id"], rows["image"])],
                  list(rows["question"]), list(rows["answer"]))
    # 4x smaller than float32, 12x for gray pages: one uint8 channel per tile
    assert all(p.dtype == np.uint8 and p.shape[1] == 1 for p in cached["pixels"])
    ours = ft.Collator.for_loaded(loaded)(cached)
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-5)
    assert torch.equal(ours["pixel_attention_mask"], ref["pixel_attention_mask"].bool())
    assert torch.equal(ours["labels"], ref["labels"])


def test_bad_image_is_named_counted_and_left_out_of_the_batch(loaded, rows):
    bad = rows.iloc[:3].copy()
    bad.loc[bad.index[1], "image"] = b"not a png"
    encoded = ft.encode_rows(loaded, bad)
    assert encoded["error"][0] == "" and encoded["error"][2] == ""
    assert str(bad["id"].iloc[1]) in encoded["error"][1] and "decode" in encoded["error"][1]
    collate = ft.Collator.for_loaded(loaded)
    batch = collate(encoded)
    assert batch["input_ids"].shape[0] == 2 and collate.failed == 1  # the good rows train; the bad one is counted
    good = collate(ft.encode_rows(loaded, bad.iloc[[0, 2]]))
    assert torch.equal(batch["labels"], good["labels"])


def test_schedule_warms_up_then_decays():
    f = [ft.lr_factor(p / 100, warmup_fraction=0.1) for p in range(101)]
    assert f[0] == 0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.0, abs=1e-9)
    assert ft.lr_factor(0.55, warmup_fraction=0.1, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert ft.lr_factor(0.9, warmup_fraction=0.0, cosine=False) == 1.0


def test_loop_learns_stops_and_resumes(loaded, cached, tmp_path):
    torch.manual_seed(0)
    model = ft.configure_trainable(loaded.model, mode="full", freeze_vision=False)
    opt = ft.build_optimizer(model, lr=3e-3)
    collate = ft.Collator.for_loaded(loaded)
    batches = lambda epoch: ft.iter_cached(cached, batch_size=4, seed=epoch, collate=collate)  # noqa: E731
    saved = []
    hooks = ft.Hooks(log=lambda line: None,
                     checkpoint=lambda st: saved.append(ft.save_checkpoint(str(tmp_path / f"c{st.step}"), model, opt, st)))
    settings = ft.LoopSettings(max_steps=8, lr=3e-3, warmup_fraction=0.0, log_every=1, checkpoint_every=4,
                               stop_after_steps=4)
    state = ft.train_loop(model, opt, batches, settings, hooks=hooks)
    assert state.interrupted and state.step == 4 and saved == [str(tmp_path / "c4")]
    # a fresh process: same architecture, restored weights, optimizer and step
    model2 = ft.configure_trainable(ft.load_for_training("tiny").model, mode="full", freeze_vision=False)
    opt2 = ft.build_optimizer(model2, lr=3e-3)
    resumed = ft.load_checkpoint(saved[0], model2, opt2)
    assert resumed.step == 4 and torch.equal(next(model2.parameters()), next(model.parameters()))
    # tensors and JSON only, no pickle; the optimizer's moments, step counters and groups come back exactly
    assert sorted(os.listdir(saved[0])) == ["optimizer.json", "optimizer.safetensors", "state.json",
                                            "trainable.safetensors"]
    before, after = opt.state_dict(), opt2.state_dict()
    assert before["param_groups"] == after["param_groups"] and before["state"].keys() == after["state"].keys()
    for index, entries in before["state"].items():
        assert all(torch.equal(v, after["state"][index][k]) for k, v in entries.items())
    settings.stop_after_steps = None
    final = ft.train_loop(model2, opt2, batches, settings, resumed, hooks)
    assert final.start_step == 4 and final.step == 8 and not final.interrupted
    losses = [loss for _, loss, _ in final.losses]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5  # from ~5.5 (uniform over the vocabulary)


def test_bf16_autocast_learns_and_keeps_float32_weights(cached):
    from vlm.cpu_engine import native_bf16

    assert ft.autocast_bf16(None, use_gpu=True) and not ft.autocast_bf16(None, use_gpu=False)
    assert ft.autocast_bf16("auto", use_gpu=False) == native_bf16() and not ft.autocast_bf16(False, use_gpu=True)
    torch.manual_seed(0)
    fresh = ft.load_for_training("tiny")
    model = ft.configure_trainable(fresh.model, mode="full", freeze_vision=False)
    opt = ft.build_optimizer(model, lr=3e-3)
    collate = ft.Collator.for_loaded(fresh)
    settings = ft.LoopSettings(max_steps=8, lr=3e-3, warmup_fraction=0.0, log_every=1, bf16=True)
    state = ft.train_loop(model, opt, lambda e: ft.iter_cached(cached, batch_size=4, seed=e, collate=collate),
                          settings, hooks=ft.Hooks(log=lambda line: None))
    losses = [loss for _, loss, _ in state.losses]
    assert len(losses) == 8 and np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights; bf16 only inside autocast


def test_lora_targets_text_attention_only(loaded):
    fresh = ft.load_for_training("tiny").model
    model = ft.configure_trainable(fresh, mode="lora", lora_rank=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and "text_model" in n for n in names)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_gradient_checkpointing_with_lora_gives_the_same_loss_and_adapter_gradients(loaded, cached):
    """Recomputing activations must not cut the adapters off: with a frozen base no block input requires grad,
    so reentrant checkpointing alone would leave every LoRA gradient empty."""
    batch = ft.Collator.for_loaded(loaded)({k: v[:4] for k, v in cached.items()})
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ft.configure_trainable(ft.load_for_training("tiny").model, mode="lora", lora_rank=4,
                                       lora_dropout=0.0)
        if checkpointing:
            ft.enable_gradient_checkpointing(model)
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                                    if p.requires_grad and p.grad is not None}))
        if checkpointing:
            base = ft.unwrap(model).get_base_model()
            assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    (loss_plain, plain), (loss_ckpt, ckpt) = grads
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    lora = [n for n in plain if "lora_B" in n]
    assert lora and set(ckpt) == set(plain)  # every adapter got a gradient through the recomputed blocks
    assert any(plain[n].abs().sum() > 0 for n in lora)
    for name in plain:
        assert torch.allclose(ckpt[name], plain[name], atol=1e-6), name


def test_validation_scores_each_row_with_its_own_task(loaded, rows):
    """Rows of three tasks in one val split: each scored by its own task's rules, reported per task."""
    import json

    from ecgtasks import get_task

    ptb, mc = get_task("ptbxl-super"), get_task("csn")
    val = rows.iloc[:6].copy()
    val["task"] = ["code15", "code15", "ptbxl-super", "ptbxl-super", "csn", "nope"]
    val.loc[val.index[2:4], "question"] = ptb.question
    val.loc[val.index[2:4], "answer"] = ["NORM", "MI"]
    val.loc[val.index[4], "question"] = mc.question or "<image>\nWhich? A. x B. y"
    val.loc[val.index[4], "answer"] = "A"
    val["meta"] = [json.dumps({})] * 6
    model = ft.configure_trainable(ft.load_for_training("tiny").model, mode="full")
    result = Validator(loaded, model, val, task="ptbxl-super")()
    assert result["rows"] == 5 and result["failed"] == 1  # the unregistered task is counted, not scored
    assert {"code15/f1", "ptbxl-super/f1", "csn/accuracy"} <= set(result)
    assert result["f1"] == result["ptbxl-super/f1"]  # the headline is the named task
