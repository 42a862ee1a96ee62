"""The ``tiny`` preset: a small Idefics3 (SmolVLM architecture) built offline, with a local word-level tokenizer.

The recipe is the one measured in ../shared/FINDINGS.md (a from-scratch model that learns ECG rhythm on this
CPU in minutes): grayscale page, contrast stretch that whitens the grid, resize to a square, back to RGB;
image processor with ``image_mean=1.0`` so white paper maps to 0; each label one token; 0.9 M parameters.

Example::

    from vlm.tiny import TinySpec, build
    model, processor = build(TinySpec())          # same weights every call (seeded)
    processor.image_seq_len                        # 49 image tokens at 224 px, patch 16, scale_factor 2
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

# The SmolVLM-256M-Instruct chat template, verbatim: the tiny model speaks the same prompt format as the real one.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

PAD, UNK, IM_START, EOU = "<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>"
IMAGE, FAKE_IMAGE, GLOBAL_IMAGE = "<image>", "<fake_token_around_image>", "<global-img>"
# Tile position tokens the processor emits when image splitting is on (it looks up rows/cols 1..6).
ROW_COL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
SPECIAL_TOKENS = (PAD, UNK, IM_START, EOU, IMAGE, FAKE_IMAGE, GLOBAL_IMAGE, *ROW_COL)

# Words the prompts and answers need beyond the task questions and labels (chat roles, separators).
EXTRA_TEXT = ("User: Assistant: ; , . : ? ! ( ) - / \n yes no Yes No A B C D E F", "Answer:")


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults: the FINDINGS.md recipe (0.9 M parameters, 49 image tokens).

    Image tokens per image = (image_size / patch_size) ** 2 / scale_factor ** 2; keep it near 49 when raising the
    resolution for conduction findings (e.g. 336 px with scale_factor 3, or 448 px with scale_factor 4).
    """

    image_size: int = 224  # px, square side of the prepared page (and the vision tower's input)
    patch_size: int = 16  # px per vision patch: 224/16 = 14 x 14 patches
    vision_width: int = 96  # vision tower hidden size
    vision_layers: int = 2
    vision_heads: int = 3
    vision_mlp: int = 384
    scale_factor: int = 2  # pixel shuffle: 14x14 patches -> 7x7 = 49 image tokens
    text_width: int = 128  # Llama hidden size
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 512
    max_positions: int = 2048  # room for a split page (up to 36 tiles x ~50 tokens)
    white_fraction: float = 0.5  # contrast stretch: gray levels above lo + f*(background-lo) become white
    flatten: bool = False  # divide by the local paper level before the stretch (photographed pages)
    measurements: bool = False  # the tokenizer also knows the words of synthetic rows' measurements follow-up
    seed: int = 0  # torch.manual_seed for the weights: same spec -> same weights

    @property
    def image_seq_len(self) -> int:
        """Image tokens per image (tile) after the pixel-shuffle connector."""
        side = self.image_size // self.patch_size
        if side % self.scale_factor:
            raise ValueError(f"TinySpec: image_size/patch_size={side} is not divisible by scale_factor")
        return (side // self.scale_factor) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TinySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _label_atoms() -> list[str]:
    """Labels of registered tasks that punctuation splitting would break (e.g. cpsc's "I-AVB"), longest first."""
    from ecgtasks import all_tasks

    labels = {label for task in all_tasks() for label in task.labels}
    return sorted((lab for lab in labels if re.search(r"[^\w]", lab)), key=lambda lab: (-len(lab), lab))


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    # Newlines stand alone, spaces become a "▁" prefix of the next word (Metaspace), punctuation is split off,
    # except inside a label: "SB; 1dAVb" -> ["SB", ";", "▁1dAVb"], "I-AVB; AF" -> ["I-AVB", ";", "▁AF"].
    # The Metaspace decoder turns the pieces back into the same text exactly.
    atoms = "|".join(re.escape(lab) for lab in _label_atoms())
    label = rf"▁?(?<![\w-])(?:{atoms})(?![\w-])|" if atoms else ""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Split(Regex(label + r"[^\w▁\s]"), behavior="isolated"),
        ]
    )


def corpus_words(extra_text: tuple[str, ...] = (), special_tokens: tuple[str, ...] = SPECIAL_TOKENS) -> list[str]:
    """Every pre-token of every registered task's question, labels and formatted answers (sorted, unique), plus
    those of ``extra_text`` (another model family's chat words, the measurements follow-up's words)."""
    from ecgtasks import all_tasks

    texts = list(EXTRA_TEXT) + list(extra_text)
    for task in all_tasks():
        texts.append(task.question)
        for label in task.labels:
            # a label is one token both at the start of an answer and after "; " or ": "
            texts += [label, f" {label}", f"{label};", f": {label}"]
        texts.append(task.format_answer(task.labels))
    pre = _pre_tokenizer()
    pieces = {piece for text in texts for piece, _ in pre.pre_tokenize_str(text)}
    # every word both bare (after a newline, a special token or punctuation) and with its "▁" space prefix
    words = {form for p in pieces for form in (p.lstrip("▁") or p, "▁" + p.lstrip("▁")) if p != "\n"}
    return sorted((words | {"\n", "▁"}) - set(special_tokens))


def build_tokenizer(*, special_tokens: tuple[str, ...] = SPECIAL_TOKENS, extra_text: tuple[str, ...] = (),
                    pad: str = PAD, unk: str = UNK, bos: str = IM_START, eos: str = EOU,
                    chat_template: str = CHAT_TEMPLATE):
    """A word-level fast tokenizer: special tokens first (fixed ids), then the sorted corpus words.

    The defaults are the tiny SmolVLM preset's; other model families (vlm/tiny_families.py) pass their own special
    tokens, chat words (``extra_text``), bos / eos and chat template.

    Example::

        tok = build_tokenizer()
        tok.decode(tok("SB; 1dAVb")["input_ids"]) == "SB; 1dAVb"
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*special_tokens, *corpus_words(extra_text, special_tokens)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    named = {pad, unk, bos, eos}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=unk,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        extra_special_tokens=[t for t in special_tokens if t not in named],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _spec_words(spec: TinySpec) -> tuple[str, ...]:
    """Text whose words the spec's tokenizer knows beyond the tasks' (``ecgvlm train --followups`` sets
    ``measurements``: the synthetic rows' measurements follow-up, ``ecg.synth.measurements_text``)."""
    if not spec.measurements:
        return ()
    from ecg.synth import measurements_vocabulary

    return (measurements_vocabulary(),)


def build_processor(spec: TinySpec, tokenizer=None):
    """The real ``Idefics3Processor`` with the PIL image processor set up for already-prepared square pages."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
        # white paper (1.0 after rescale) -> 0, ink -> -2: only the traces carry signal (FINDINGS.md)
        image_mean=[1.0, 1.0, 1.0],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(extra_text=_spec_words(spec)),
        image_seq_len=spec.image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(spec: TinySpec, tokenizer):
    from transformers import Idefics3Config

    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    return Idefics3Config(
        vision_config=dict(
            hidden_size=spec.vision_width,
            intermediate_size=spec.vision_mlp,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=spec.text_width,
            intermediate_size=spec.text_mlp,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_heads,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=False,
            pad_token_id=pad_id,
            bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
            eos_token_id=tokenizer.convert_tokens_to_ids(EOU),
        ),
        scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,
        pad_token_id=pad_id,
    )


def build(spec: TinySpec | None = None, processor=None):
    """Build ``(model, processor)`` for the tiny preset; weights are seeded by ``spec.seed`` (deterministic).
    ``processor``: one already built by :func:`build_processor` for the same spec (saves building it twice)."""
    import torch
    from transformers import Idefics3ForConditionalGeneration

    spec = spec or TinySpec()
    processor = processor if processor is not None else build_processor(spec)
    config = build_config(spec, processor.tokenizer)
    state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        model = Idefics3ForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)  # do not disturb the caller's random stream
    eou = processor.tokenizer.convert_tokens_to_ids(EOU)
    model.generation_config.eos_token_id = eou
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model, processor
