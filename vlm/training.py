"""Training batches with the loss on the assistant's answer only (the training loop is vlm/finetune.py).

Example::

    batch = collate(loaded, [page], ["<image>\\nWhich rhythm?"], ["SB; 1dAVb"])
    loss = loaded.model(**batch).loss
    # batch["labels"]: -100 everywhere except the tokens of " SB; 1dAVb<end_of_utterance>"
"""

from __future__ import annotations

import torch

from vlm.prompt import answer_text, chat_prompt, encode

IGNORE = -100  # the label value torch's cross-entropy skips


def collate(loaded, images, questions, answers) -> dict[str, torch.Tensor]:
    """Processor batch (right padded) of prompt + answer, with ``labels`` masking all but the answer.

    Kept: the answer tokens and the closing ``<end_of_utterance>`` (without loss on it generation never stops,
    FINDINGS.md). Masked to -100: the prompt, the image tokens and the padding. Images go through
    ``loaded.prepare_image`` first. Tensors stay on the CPU (the caller moves them).
    """
    if not (len(images) == len(questions) == len(answers)):
        raise ValueError(f"collate: {len(images)} images, {len(questions)} questions, {len(answers)} answers")
    processor = loaded.processor
    pages = [loaded.prepare_image(im) for im in images]
    prompts = [chat_prompt(processor, q) for q in questions]
    batch = dict(encode(processor, pages, [p + answer_text(a) for p, a in zip(prompts, answers)], padding_side="right"))
    tok = processor.tokenizer
    labels = batch["input_ids"].clone()  # (batch, tokens)
    labels[batch["attention_mask"] == 0] = IGNORE
    for i, answer in enumerate(answers):
        answer_ids = tok(answer_text(answer), add_special_tokens=False)["input_ids"]
        n_real = int(batch["attention_mask"][i].sum())
        start = n_real - len(answer_ids)  # right padding: the answer is the last real tokens
        if batch["input_ids"][i, start:n_real].tolist() != answer_ids:  # tokenizer merged across the boundary
            raise ValueError(f"collate: row {i}: answer {answer!r} does not tokenize the same inside the prompt")
        labels[i, :start] = IGNORE
    batch["labels"] = labels
    return batch
