"""Beam search, one row at a time: the decoding of the prior SmolVLM study's evaluator (``--decoding smolvlm-study``:
4 beams, 32 new tokens, ``do_sample=False``), through the model's own ``generate`` on each encoded row.

The greedy engine (``vlm/engine.py``) decodes a whole batch on one prompt pass and stays the default; this path is
for reproducing a protocol that searched beams, not for speed: one ``generate`` call per row, as the study ran it.
With ``num_beams=1`` it is plain greedy ``generate`` and gives the engine's answers (the tests check both).

Example::

    rows = [predictor.encode_one(page, STUDY_QUESTION)]
    answers, cut = beam_answers(predictor, rows, num_beams=4, max_new_tokens=32)   # ["SB, AF"], [False]
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def beam_tokens(predictor, row: dict, *, num_beams: int, max_new_tokens: int) -> list[int]:
    """The new token ids of the best beam for one row of :meth:`vlm.Predictor.encode_one` (batch dim 1), up to
    (not including) the first stop id."""
    model, device = predictor.loaded.model, predictor.loaded.device
    dtype = next(model.parameters()).dtype
    inputs = {k: v.to(device) for k, v in row.items() if isinstance(v, torch.Tensor)}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)  # (1, tiles, 3, H, W), the model's dtype
    out = model.generate(**inputs, num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=predictor.stop_ids, pad_token_id=predictor.pad_id)  # (1, T + new)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stops = set(predictor.stop_ids)
    return new[: next((i for i, t in enumerate(new) if t in stops), len(new))]


def beam_answers(predictor, rows: list[dict], *, num_beams: int, max_new_tokens: int
                 ) -> tuple[list[str], list[bool]]:
    """``(answers, cut)`` for encoded rows, one ``generate`` call per row: the best beam's text (special tokens
    dropped, stripped) and whether it ended at the ``max_new_tokens`` budget rather than at a stop token."""
    answers, cut = [], []
    for row in rows:
        tokens = beam_tokens(predictor, row, num_beams=num_beams, max_new_tokens=max_new_tokens)
        answers.append(predictor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        cut.append(len(tokens) >= max_new_tokens)
    return answers, cut
