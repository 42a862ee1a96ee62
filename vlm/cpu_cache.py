"""Convert a model's graphs for a CPU engine once, and find them again: the cache of vlm/cpu_engine.py.

A converted model is a folder ``<engine>-<variant>-<key>`` holding ``vision.*`` and ``decoder.*`` (OpenVINO IR
``.xml``/``.bin`` or ONNX ``.onnx``), ``head.safetensors`` (token embeddings and LM head, float32),
``config.json`` and ``meta.json``. ``key`` is a hash of what the weights come from: the weight files of an export
folder (and its adapter), the config of ``random:DIR`` (its weights are seeded), the tiny preset's spec. The
folder lives beside an export (``<export>/cpu-engines/``) when that is writable, else in ``$ECGVLM_CPU_CACHE``
(default ``~/.cache/ecgvlm/cpu-engines``). A rerun, a second actor or ``ecgvlm export --engine`` finds it and
converts nothing; two processes converting at once each write a temporary folder and the first rename wins.

Example::

    folder, converted = prepare("runs/x/export", engine="openvino", dtype="int8")   # (Path, True) the first time
    prepare("runs/x/export", engine="openvino", dtype="int8")[1]                     # False: reused
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

GRAPH_VERSION = 1  # bump when vlm/cpu_graphs.py changes what a converted graph computes
SUFFIX = {"openvino": ".xml", "onnxruntime": ".onnx"}


def _hash_files(h, folder: Path, patterns=("*.safetensors", "*.bin", "config.json", "ecgvlm.json")) -> None:
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)


def source_key(model: str, adapter: str | None = None) -> str:
    """16 hex digits naming the weights of ``model`` (+ ``adapter``). Example: ``source_key("tiny")`` is the same
    on every machine (the preset is seeded); an export's changes when any weight file does."""
    h = hashlib.sha256(f"v{GRAPH_VERSION}".encode())
    if model == "tiny":
        from vlm.tiny import TinySpec

        h.update(json.dumps(TinySpec().to_dict(), sort_keys=True).encode())
    elif model.startswith("random:"):
        h.update(b"random-seed-0" + (Path(model[len("random:"):]) / "config.json").read_bytes())
    elif Path(model).is_dir():
        _hash_files(h, Path(model))
    else:
        h.update(model.encode())  # a hub id: its name (the hub is not reached from here)
    if adapter:
        h.update(b"adapter")
        _hash_files(h, Path(adapter), ("*.safetensors", "*.bin", "adapter_config.json"))
    return h.hexdigest()[:16]


def cache_root(model: str, cache_dir: str | None = None) -> Path:
    """Where converted models of ``model`` go: ``cache_dir``, else beside an export folder if writable, else
    ``$ECGVLM_CPU_CACHE`` or ``~/.cache/ecgvlm/cpu-engines``."""
    if cache_dir:
        return Path(cache_dir)
    if Path(model).is_dir() and os.access(model, os.W_OK):
        return Path(model) / "cpu-engines"
    return Path(os.environ.get("ECGVLM_CPU_CACHE") or Path.home() / ".cache" / "ecgvlm" / "cpu-engines")


def variant(engine: str, dtype: str) -> str:
    """The files a precision needs: float32 and bfloat16 share one float32 graph (bf16 is a compile-time hint of
    OpenVINO); int8 has its own (int8 weights). ONNX Runtime has no bf16 CPU kernels: it refuses bfloat16."""
    if engine == "onnxruntime" and dtype == "bfloat16":
        raise ValueError("the onnxruntime engine runs float32 or int8 on a CPU (it has no bfloat16 CPU kernels)")
    return "int8" if dtype == "int8" else "fp32"


def prepare(model: str, *, engine: str, dtype: str, adapter: str | None = None,
            cache_dir: str | None = None) -> tuple[Path, bool]:  # fmt: skip
    """``(folder of the converted model, whether it was converted now)``; converts on a miss."""
    name = f"{engine}-{variant(engine, dtype)}-{source_key(model, adapter)}"
    root = cache_root(model, cache_dir)
    folder = root / name
    if (folder / "meta.json").exists():
        return folder, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        convert(model, tmp, engine=engine, int8=dtype == "int8", adapter=adapter)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its folder
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


def convert(model: str, out: Path, *, engine: str, int8: bool, adapter: str | None = None) -> None:
    """Build the float32 HF model once and write its graphs for ``engine`` into ``out`` (meta.json last)."""
    import torch
    from safetensors.torch import save_file

    import vlm
    from vlm.cpu_graphs import DecoderGraph, VisionGraph, decoder_example, vision_example

    start = time.perf_counter()
    loaded = vlm.load(model, adapter=adapter, device="cpu", dtype="float32")
    net = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model
    if net.config.model_type != "idefics3":
        raise ValueError(f"{model}: the CPU engines run Idefics3 / SmolVLM models, not {net.config.model_type}")
    graphs = {"vision": (VisionGraph(net).eval(), vision_example(net)),
              "decoder": (DecoderGraph(net).eval(), decoder_example(net))}  # fmt: skip
    with torch.inference_mode(False), torch.no_grad():
        for part, (graph, example) in graphs.items():
            (_to_openvino if engine == "openvino" else _to_onnx)(graph, example, out / f"{part}{SUFFIX[engine]}", int8)
    save_file({"embed": net.get_input_embeddings().weight.detach().float().contiguous(),
               "lm_head": net.lm_head.weight.detach().float().contiguous()}, str(out / "head.safetensors"))  # fmt: skip
    net.config.to_json_file(str(out / "config.json"))
    meta = {"source": model, "adapter": adapter, "engine": engine, "int8": int8, "graph_version": GRAPH_VERSION,
            "convert_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _to_openvino(graph, example, path: Path, int8: bool) -> None:
    import openvino as ov

    ov_model = ov.convert_model(graph, example_input=example)
    if int8:
        import nncf

        ov_model = nncf.compress_weights(ov_model)  # int8 asymmetric weights, per output channel; data-free
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def _to_onnx(graph, example, path: Path, int8: bool) -> None:
    import torch

    n = len(example)
    vision = n == 3
    names = ["pixels", "positions", "bias"] if vision else ["embeds", "mask", "positions"] + [
        f"past_{i}" for i in range(n - 3)]  # fmt: skip
    outputs = ["features"] if vision else ["hidden"] + [f"new_{i}" for i in range(n - 3)]
    if vision:
        axes = {"pixels": {0: "n", 2: "h", 3: "w"}, "positions": {0: "n", 1: "p"}, "bias": {0: "n", 3: "p"},
                "features": {0: "n"}}  # fmt: skip
    else:
        axes = {"embeds": {0: "b", 1: "t"}, "mask": {0: "b", 1: "wt"}, "positions": {0: "b", 1: "t"},
                "hidden": {0: "b", 1: "t"}}  # fmt: skip
        axes.update({f"past_{i}": {0: "b", 2: "w"} for i in range(n - 3)})
        axes.update({f"new_{i}": {0: "b", 2: "t"} for i in range(n - 3)})
    target = path.with_suffix(".fp32.onnx") if int8 else path
    torch.onnx.export(graph, example, str(target), input_names=names, output_names=outputs, dynamic_axes=axes,
                      opset_version=17, dynamo=False)  # fmt: skip
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(target), str(path), weight_type=QuantType.QInt8)
        target.unlink()
