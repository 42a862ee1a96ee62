"""Tiny random models of the other open VLM families, built offline: ``tiny:qwen2_vl``, ``tiny:qwen2_5_vl``,
``tiny:llava``, ``tiny:llava_next``, ``tiny:idefics2`` (plain ``tiny`` is the SmolVLM / Idefics3 preset, vlm/tiny.py).

Each is the family's real transformers classes (config, model, processor, PIL image processor) at a few hundred
thousand parameters, with a word-level tokenizer built locally (vlm/tiny.py's, plus the family's special tokens
and a chat template in the family's own form). The weights are random and seeded: for tests and rehearsals of
evaluation, training and serving, not for diagnosis.

Example::

    model, processor = build("qwen2_vl")          # Qwen2VLForConditionalGeneration + Qwen2VLProcessor
    processor.apply_chat_template(chat_messages("<image>\\nWhich rhythm?"), add_generation_prompt=True)
    # '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>...'
"""

from __future__ import annotations

from vlm.tiny import build_tokenizer

SEED = 0
WIDTH, LAYERS, HEADS, MLP = 64, 2, 4, 128  # text model: hidden size, layers, heads, MLP width
VISION_WIDTH, VISION_LAYERS, VISION_HEADS = 32, 1, 2  # vision tower

# ---------------------------------------------------------------- chat templates, in each family's form
# Qwen2-VL / Qwen2.5-VL (ChatML, the default system turn, the image between vision start / end markers)
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# LLaVA-1.5 (llava-hf): "USER: <image>\nQuestion ASSISTANT:"; an assistant turn ends with </s> in training
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# LLaVA-NeXT (llava-v1.6-mistral-7b-hf): "[INST] <image>\nQuestion [/INST]"
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ ' [/INST]' }}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ ' ' + content['text'] + '</s>' }}{% endfor %}{% endif %}{% endfor %}"
)
# Idefics2: the SmolVLM form ("User:<image>Question<end_of_utterance>\nAssistant:")
IDEFICS2_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN_SPECIAL = ("<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")  # fmt: skip
LLAVA_SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "[INST]", "[/INST]")
IDEFICS2_SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<end_of_utterance>", "<image>", "<fake_token_around_image>")
CHAT_WORDS = ("system\nYou are a helpful assistant.", "user\n", "assistant\n", "USER: ASSISTANT:", "User: Assistant:")

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics2")


def _tokenizer(family: str):
    if family.startswith("qwen"):
        return build_tokenizer(special_tokens=QWEN_SPECIAL, extra_text=CHAT_WORDS, pad="<|endoftext|>",
                               bos="<|im_start|>", eos="<|im_end|>", chat_template=QWEN_TEMPLATE)  # fmt: skip
    if family.startswith("llava"):
        template = LLAVA_TEMPLATE if family == "llava" else LLAVA_NEXT_TEMPLATE
        return build_tokenizer(special_tokens=LLAVA_SPECIAL, extra_text=CHAT_WORDS, bos="<s>", eos="</s>",
                               chat_template=template)  # fmt: skip
    return build_tokenizer(special_tokens=IDEFICS2_SPECIAL, extra_text=CHAT_WORDS, bos="<s>", eos="</s>",
                           chat_template=IDEFICS2_TEMPLATE)  # fmt: skip


def _text(tokenizer, **extra) -> dict:
    """The small decoder's config fields, shared by every family (ids from the local tokenizer)."""
    return dict(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=HEADS // 2, max_position_embeddings=4096,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **extra)  # fmt: skip


def build_processor(family: str):
    """The family's real processor with small image sizes and the local tokenizer (no download)."""
    tok = _tokenizer(family)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from vlm.families.qwen import processor_class

        # pages are resized to at most 112 x 112 px worth of 14 px patches: 4 to 16 image tokens after 2x2 merge
        ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)  # fmt: skip
        return processor_class(family)(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    if family == "llava":
        from transformers import LlavaProcessor
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        ip = LlavaImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        # CLIP keeps its class token; "default" drops it: (56 / 14) ** 2 = 16 image tokens
        return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)  # fmt: skip
    if family == "llava_next":
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        # anyres: a page becomes its base view plus 1-2 x 2-1 tiles of 56 px (image_grid_pinpoints)
        ip = LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                        image_grid_pinpoints=PINPOINTS)  # fmt: skip
        return LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=LLAVA_NEXT_TEMPLATE)  # fmt: skip
    if family == "idefics2":
        from transformers import Idefics2Processor
        from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

        ip = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": 42, "longest_edge": 84})
        return Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=IDEFICS2_LATENTS,
                                 chat_template=IDEFICS2_TEMPLATE)  # fmt: skip
    raise ValueError(f"tiny:{family}: no such tiny family; choose one of {', '.join(FAMILIES)} (or plain 'tiny')")


PINPOINTS = [[56, 112], [112, 56], [112, 112]]
IDEFICS2_LATENTS = 8  # perceiver latents = image tokens per image


def build_config(family: str, tokenizer):
    """The family's config class at tiny sizes, token ids from ``tokenizer``."""
    ids = tokenizer.convert_tokens_to_ids
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

        # M-RoPE: the head's 8 rotary frequencies split over (time, height, width)
        text = _text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 3, 3]})  # fmt: skip
        if family == "qwen2_vl":
            vision = dict(depth=VISION_LAYERS, embed_dim=VISION_WIDTH, hidden_size=WIDTH, num_heads=VISION_HEADS,
                          mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
            cls = Qwen2VLConfig
        else:
            vision = dict(depth=VISION_LAYERS, hidden_size=VISION_WIDTH, out_hidden_size=WIDTH,
                          intermediate_size=2 * VISION_WIDTH, num_heads=VISION_HEADS, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                          fullatt_block_indexes=[0])  # fmt: skip
            cls = Qwen2_5_VLConfig
        return cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                   video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                   vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)  # fmt: skip
    vision = dict(model_type="clip_vision_model", hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH,
                  num_hidden_layers=VISION_LAYERS + 1, num_attention_heads=VISION_HEADS, image_size=56,
                  patch_size=14)  # fmt: skip
    if family == "llava":
        from transformers import LlavaConfig

        return LlavaConfig(vision_config=vision, text_config=_text(tokenizer, model_type="llama"),
                           image_token_id=ids("<image>"), vision_feature_layer=-2,
                           vision_feature_select_strategy="default", tie_word_embeddings=False)  # fmt: skip
    if family == "llava_next":
        from transformers import LlavaNextConfig

        return LlavaNextConfig(vision_config=vision, text_config=_text(tokenizer, model_type="mistral"),
                               image_token_id=ids("<image>"), vision_feature_layer=-2,
                               vision_feature_select_strategy="default", image_grid_pinpoints=PINPOINTS,
                               tie_word_embeddings=False)  # fmt: skip
    if family == "idefics2":
        from transformers import Idefics2Config

        return Idefics2Config(
            vision_config=dict(hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH,
                               num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=84,
                               patch_size=14),
            perceiver_config=dict(hidden_size=WIDTH, resampler_n_latents=IDEFICS2_LATENTS, resampler_depth=1,
                                  resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1),
            text_config=_text(tokenizer, model_type="mistral"),
            image_token_id=ids("<image>"), tie_word_embeddings=False,
        )  # fmt: skip
    raise ValueError(f"tiny:{family}: no such tiny family; choose one of {', '.join(FAMILIES)} (or plain 'tiny')")


def build(family: str, processor=None):
    """``(model, processor)`` of the tiny ``family``; the same random weights every call (seeded)."""
    import torch
    from transformers import AutoModelForImageTextToText

    processor = processor if processor is not None else build_processor(family)
    tok = processor.tokenizer
    config = build_config(family, tok)
    state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)  # do not disturb the caller's random stream
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor
