"""Decoding budgets (``--decoding``, ``--max-new-tokens``) and answers cut by the budget, counted per task."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from metrics.score import score_frame
from metrics.tasks import PUBLISHED_MAX_NEW_TOKENS, budgets, get_task
from vlm.prompt import budget_cut


def test_budgets_published_fast_and_overrides():
    assert PUBLISHED_MAX_NEW_TOKENS == 1024 and set(budgets("ecgbench").values()) == {1024}
    fast = budgets("fast")
    assert fast["code15"] == get_task("code15").max_new_tokens and fast["mmmu"] == get_task("mmmu").max_new_tokens
    mixed = budgets("ecgbench", "code15-test=64, ecgqa=128")  # aliases name their task
    assert (mixed["code15"], mixed["ecgqa"], mixed["cpsc"]) == (64, 128, 1024)
    with pytest.raises(ValueError, match="'code15=0' is not TASK=N"):
        budgets("fast", "code15=0")
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        budgets("fast", "nope=3")
    with pytest.raises(ValueError, match="decoding must be one of"):
        budgets("greedy")


def test_budget_cut_is_no_stop_token():
    new = torch.tensor([[5, 7, 9], [5, 2, 0], [3, 4, 8]])  # (batch, new tokens); 2 and 8 stop
    assert budget_cut(new, [2, 8]) == [True, False, False]


def test_random_tiny_model_runs_out_its_budget_and_rows_say_so(one_torch_thread):
    import vlm
    from ecg import samples

    rows = samples.synthetic_batch({"start": [0], "count": [3]}, seed=1, splits={"test": 1.0},
                                   options=samples.RenderOptions(width=400, height=310)).to_pandas()
    out = vlm.predict_rows(vlm.Predictor("tiny", label_scores=False), rows, budgets={"code15": 4})
    # random weights never choose <end_of_utterance>: every answer fills its 4-token budget
    assert out["truncated"].tolist() == [True, True, True] and out["error"].isna().all()


def test_truncated_answers_are_counted_per_task():
    frame = pd.DataFrame({"id": list("abc"), "answer": ["SB", "ST", "AF"], "prediction": ["SB", "ST ST ST", "AF"],
                          "truncated": [False, True, None]})
    r = score_frame("code15", frame)
    assert r["truncated"] == 1 and "1 of 3 answers ended at the token budget" in " ".join(r["warnings"])
    assert score_frame("code15", frame.drop(columns="truncated"))["truncated"] == 0  # shards from before the column
