"""``ecgvlm export --engine NAME``: convert a model for a compiled CPU engine ahead of a job, into its cache.

    ecgvlm export --engine openvino --model ./runs/tiny/export                    # beside the export
    ecgvlm export --engine openvino --dtype int8 --model random:../shared/models/SmolVLM-256M-Instruct
    ecgvlm export --engine onnxruntime --model tiny --cache-dir ./cpu-engines

Writes the converted graphs where ``ecgvlm evaluate`` / ``ecgvlm serve`` with the same ``--engine`` and
``--dtype`` look for them (vlm/cpu_cache.py: beside an export folder, else ``$ECGVLM_CPU_CACHE``); a model already
converted is left as it is. Prints the folder. docs/cpu-engines.md.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecgconfig import load_config


class ExportConfig(BaseModel):
    """What to convert, for which engine and precision."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="tiny, an export folder or random:PATH (Idefics3 / SmolVLM)")
    adapter: str | None = Field(None, description="LoRA adapter folder, merged before converting")
    engine: Literal["openvino", "onnxruntime"] = Field("openvino", description="the CPU runtime to convert for")
    dtype: str = Field("auto", description="auto (bf16 where the CPU has it), float32, bfloat16, int8 (int8 weights)")
    cache_dir: str | None = Field(None, description="where converted models go (default: beside an export folder, "
                                  "else $ECGVLM_CPU_CACHE or ~/.cache/ecgvlm/cpu-engines)")


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(ExportConfig, argv, prog="ecgvlm export", doc=__doc__)
    from vlm.cpu_cache import prepare
    from vlm.cpu_engine import cpu_dtype, require

    try:
        require(cfg.engine)
        dtype = cpu_dtype(cfg.dtype)
        folder, converted = prepare(cfg.model, engine=cfg.engine, dtype=dtype, adapter=cfg.adapter,
                                    cache_dir=cfg.cache_dir)  # fmt: skip
    except (ImportError, ValueError, FileNotFoundError) as err:
        print(f"ecgvlm export: {err}", file=sys.stderr)
        return 2
    print(f"export: {cfg.model} for {cfg.engine} ({dtype}) {'converted to' if converted else 'already in'} {folder}",
          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
