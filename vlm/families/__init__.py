"""Open VLM families that run in-process, one small adapter each, chosen from ``config.model_type``.

| family | model_type | e.g. |
|---|---|---|
| Idefics3 / SmolVLM | ``idefics3`` | ``HuggingFaceTB/SmolVLM-256M-Instruct`` |
| Idefics2 | ``idefics2`` | ``HuggingFaceM4/idefics2-8b`` |
| Qwen2-VL | ``qwen2_vl`` | ``Qwen/Qwen2-VL-2B-Instruct`` |
| Qwen2.5-VL | ``qwen2_5_vl`` | ``Qwen/Qwen2.5-VL-3B-Instruct`` |
| LLaVA-1.5 | ``llava`` | ``llava-hf/llava-1.5-7b-hf`` |
| LLaVA-NeXT | ``llava_next`` | ``llava-hf/llava-v1.6-mistral-7b-hf`` |

Example::

    from vlm.families import family_of, get_family
    get_family("qwen2_vl").answer_text("SB", tokenizer)     # 'SB<|im_end|>'
    family_of(model).image_features(model, rows)            # the vision tower, the family's way
    get_family("mllama")                                    # UnsupportedModel: names the supported families
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm.families.base import Family, base_model
from vlm.families.llava import LLAVA, LLAVA_NEXT
from vlm.families.qwen import QWEN2_5_VL, QWEN2_VL


@dataclass(frozen=True)
class _Idefics2(Family):
    name: str = "idefics2"
    title: str = "Idefics2"
    model_types: tuple[str, ...] = ("idefics2",)


IDEFICS3 = Family()
IDEFICS2 = _Idefics2()
FAMILIES: dict[str, Family] = {f.name: f for f in (IDEFICS3, IDEFICS2, QWEN2_VL, QWEN2_5_VL, LLAVA, LLAVA_NEXT)}
_BY_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


class UnsupportedModel(ValueError):
    """A model whose ``config.model_type`` has no adapter here."""


def supported() -> str:
    """``"idefics3 (Idefics3 / SmolVLM), idefics2 (Idefics2), ..."``: for error messages and help text."""
    return ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


def get_family(model_type: str, *, model: str | None = None) -> Family:
    """The adapter for ``model_type``; :class:`UnsupportedModel` naming it and the supported families if none."""
    family = _BY_TYPE.get(str(model_type))
    if family is None:
        where = f"model {model!r}: " if model else ""
        raise UnsupportedModel(f"{where}model type {model_type!r} is not a supported VLM family; supported: "
                               f"{supported()}")  # fmt: skip
    return family


def family_of_config(path: str, *, model: str | None = None) -> Family:
    """The adapter for the model whose config is at ``path`` (a folder or hub id), from its ``model_type``; reads
    the config only. A type transformers does not know is read from ``config.json`` and reported the same way."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except ValueError:  # a model_type unknown to transformers
        config = Path(path) / "config.json"
        if not config.exists():
            raise
        model_type = json.loads(config.read_text()).get("model_type")
    return get_family(model_type, model=model)


def family_of(model) -> Family:
    """The adapter of a loaded model (a peft wrapper included), from its ``config.model_type``."""
    return get_family(base_model(model).config.model_type)


# processor class -> family, for code that holds a processor but no model (training's encoding stage)
_BY_PROCESSOR = {"Idefics3Processor": IDEFICS3, "Idefics2Processor": IDEFICS2, "Qwen2VLProcessor": QWEN2_VL,
                 "Qwen2_5_VLProcessor": QWEN2_5_VL, "LlavaProcessor": LLAVA, "LlavaNextProcessor": LLAVA_NEXT}


def family_of_processor(processor) -> Family:
    """The adapter of a processor, from its class (or the class it extends); Idefics3's for any other."""
    for cls in type(processor).__mro__:
        if cls.__name__ in _BY_PROCESSOR:
            return _BY_PROCESSOR[cls.__name__]
    return IDEFICS3


__all__ = ["FAMILIES", "IDEFICS3", "Family", "UnsupportedModel", "family_of", "family_of_config", "family_of_processor", "get_family", "supported"]
