"""Chat prompts and processor batches shared by prediction and training (one format, so they cannot disagree).

A question in ECGBench form carries an ``<image>`` placeholder ("<image>\\nWhich of ..."); the placeholder is
removed and the image put first, as SmolVLM was trained::

    chat_prompt(processor, "<image>\\nWhich rhythm?")
    # '<|im_start|>User:<image>Which rhythm?<end_of_utterance>\\nAssistant:'
    answer_text("SB; 1dAVb")   # ' SB; 1dAVb<end_of_utterance>' (what follows the prompt in training)
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"


def chat_messages(question: str, history=None, system: str | None = None) -> list[dict]:
    """Chat messages for one row: a ``system`` message if given, the earlier turns (``history``), then
    ``question``; the image goes first in the first user turn, as SmolVLM was trained.

    ``history``: a multi-turn record's earlier turns, ``[{"role": "user"|"assistant", "text": str}, ...]`` as
    ``ecgvlm prepare`` writes them to ``meta["history"]`` (any shape ``ecgtasks.conversation`` reads), or None.
    Example: ``chat_messages("And the rate?", [{"role": "user", "text": "<image>Rhythm?"},
    {"role": "assistant", "text": "AF"}])`` -> three messages, the image in the first.
    """
    from ecgtasks.conversation import dialogue

    messages = [{"role": "system", "content": [{"type": "text", "text": system.strip()}]}] if system else []
    for k, turn in enumerate(dialogue(question, history)):
        content = [{"type": "text", "text": str(turn.text or "").replace(IMAGE_TOKEN, "").strip()}]
        messages.append({"role": turn.role, "content": [{"type": "image"}, *content] if k == 0 else content})
    return messages


def chat_prompt(processor, question: str, history=None, system: str | None = None) -> str:
    """The prompt for one row through the processor's own chat template: the ``system`` message (served chats
    may send one), the earlier turns (``history``), the user turn with ``question`` and the generation prompt;
    one image, in the first user turn."""
    return processor.apply_chat_template(chat_messages(question, history, system), add_generation_prompt=True)


def row_history(meta) -> list | None:
    """The earlier turns of a sample row from its ``meta`` (JSON text or dict): ``meta["history"]`` as typed
    turns (``ecgtasks.conversation.history``), or None."""
    from ecgtasks.conversation import history

    return history(meta)


def answer_text(answer: str, processor=None) -> str:
    """The assistant's reply as the chat template writes it after the generation prompt: for SmolVLM a space, the
    answer, ``<end_of_utterance>``; with ``processor``, in its model family's form (vlm/families/: Qwen writes
    ``SB<|im_end|>``, LLaVA `` SB</s>``)."""
    if processor is None:
        return f" {answer.strip()}{END_OF_UTTERANCE}"
    from vlm.families import family_of_processor

    return family_of_processor(processor).answer_text(answer, processor.tokenizer)


def budget_cut(new_ids, stop_ids) -> list[bool]:
    """Per row of generated ids (batch, new tokens): True where no stop token was generated, i.e. generation
    ended at the ``max_new_tokens`` budget (or the model's length limit) rather than by the model's choice.

    Example: ``budget_cut(torch.tensor([[5, 7, 2], [5, 2, 0]]), [2]) == [False, False]``; ``[[5, 7, 9]]`` -> ``[True]``.
    """
    import torch

    stops = torch.tensor(sorted(stop_ids), device=new_ids.device)
    return (~torch.isin(new_ids, stops).any(dim=1)).tolist()


def encode(processor, images, texts: list[str], *, padding_side: str = "left"):
    """Processor batch (``input_ids``, ``attention_mask``, ``pixel_values``, ...) as torch tensors.

    A blank page normalised with image_mean 1.0 is all zeros, which Idefics3 takes for a padding image and drops
    (then the image-token count no longer matches): one value is nudged off zero so it counts as a real image.
    Other families' pixel layouts (vlm/families/) are left as their processor made them.
    """
    import torch

    batch = processor(
        text=texts, images=[[im] for im in images], return_tensors="pt", padding=True, padding_side=padding_side
    )
    from vlm.families import family_of_processor

    if not family_of_processor(processor).nudge_blank():
        return batch
    pixels = batch["pixel_values"]  # (batch, images, 3, H, W)
    mask = batch.get("pixel_attention_mask")  # (batch, images, H, W), 0 on padding images
    real = mask.flatten(2).any(-1) if mask is not None else torch.ones(pixels.shape[:2], dtype=torch.bool)
    blank = real & pixels.flatten(2).eq(0).all(-1)
    if blank.any():
        pixels[blank, 0, 0, 0] = 1e-3
    return batch
