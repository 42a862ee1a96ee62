"""Write a loaded model as a folder that ``vlm.load`` (and ``ecgvlm evaluate --model``, serving) loads back.

The folder holds the Hugging Face model and processor files plus ``ecgvlm.json`` (the image preprocessing
recipe, so ``prepare_image`` is the same after a reload). ``out_dir`` may be local or ``s3://``.

Example::

    export(vlm.load("tiny", adapter="run/adapter"), "run/export")   # LoRA merged into the weights
    vlm.load("run/export").prepare_image(page)                      # same recipe as before
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from ecg import storage
from vlm.load import SIDECAR, Loaded

ADAPTER_SUBDIR = "adapter"  # where an unmerged LoRA adapter goes inside the export


def _has_adapter(model) -> bool:
    """True for a peft model: an adapter loaded with ``vlm.load(adapter=...)`` or LoRA layers added by training."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _write(loaded: Loaded, folder: Path, merge_adapter: bool) -> None:
    model = loaded.model
    sidecar = loaded.sidecar()
    adapter = _has_adapter(model)
    if adapter and merge_adapter:
        # merge a copy: merge_and_unload changes the weights in place and the caller may keep using `loaded`
        model = copy.deepcopy(model).merge_and_unload()
        sidecar["adapter"] = None
    elif adapter:
        model.save_pretrained(folder / ADAPTER_SUBDIR)  # peft writes the adapter only
        # the base weights without the injected LoRA layers (their keys would not load into a plain model)
        model = copy.deepcopy(model).unload()
        sidecar["adapter"] = ADAPTER_SUBDIR
    model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    sidecar["merged_from_adapter"] = (loaded.adapter or "trained") if adapter and merge_adapter else None
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")


def export(loaded: Loaded, out_dir: str, *, merge_adapter: bool = True) -> str:
    """Write ``loaded`` to ``out_dir`` (local or s3://); returns ``out_dir``.

    With an adapter: ``merge_adapter=True`` writes one merged model; False writes the base model plus the
    adapter in ``adapter/`` (``vlm.load`` applies it from the sidecar).
    """
    if storage.is_s3(out_dir):
        with tempfile.TemporaryDirectory(prefix="ecgvlm-export-") as tmp:
            _write(loaded, Path(tmp), merge_adapter)
            storage.upload_dir(tmp, out_dir)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        _write(loaded, Path(out_dir), merge_adapter)
    return out_dir
