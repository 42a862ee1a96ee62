"""CPU engines from the field's compiled runtimes (OpenVINO, ONNX Runtime) behind ``vlm.Predictor``'s interface.

The vision tower + connector and the Llama decoder (vlm/cpu_graphs.py) are converted once per model and cached
(:mod:`vlm.cpu_cache`); at run time :class:`CompiledVLM` stands in for the HF model inside ``vlm/engine.py``, so the
engine keeps what the HF engine does: one vision pass per page, the prompt once per row, our greedy loop, label
scores from the prompt's continuation on its KV cache, the prompt with its history. The token embedding table and
the LM head stay in torch float32 (a gather and one matmul per step; the logits keep float32 precision).

Example::

    p = cpu_predictor("random:../shared/models/SmolVLM-256M-Instruct", engine="openvino", dtype="bfloat16",
                      image_splitting=False)           # converts on the first call, reuses the cache after
    answers, scores = p.run_encoded([p.encode_one(page, q)], max_new_tokens=8, labels=["SB", "ST"])

``dtype``: ``float32`` (exact up to summation order), ``bfloat16`` (compute in bf16 where the CPU has it),
``int8`` (int8 weights, bf16 compute; OpenVINO via NNCF, ONNX Runtime via dynamic quantisation).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

ENGINES = ("openvino", "onnxruntime")
INSTALL = {
    "openvino": ("openvino", "the OpenVINO engine needs openvino (and nncf for int8), which is not installed: "
                 "pip install 'ecgvlm[openvino]'"),
    "onnxruntime": ("onnxruntime", "the ONNX Runtime engine needs onnxruntime and onnx, which are not installed: "
                    "pip install 'ecgvlm[onnxruntime]'"),
}  # fmt: skip
DTYPES = ("float32", "bfloat16", "int8")


def require(engine: str):
    """The runtime module of ``engine``, or an ImportError that says how to install it."""
    if engine not in INSTALL:
        raise ValueError(f"unknown CPU engine {engine!r}; choose one of {', '.join(ENGINES)}")
    module, message = INSTALL[engine]
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(message) from exc


def installed(engine: str) -> bool:
    """Whether ``engine``'s runtime imports."""
    try:
        require(engine)
        return True
    except ImportError:
        return False


def cpu_dtype(dtype: str) -> str:
    """The engine precision of a ``--dtype`` value: ``auto`` -> ``bfloat16`` where the CPU computes bf16 natively
    (AVX-512 BF16 or AMX), else ``float32``. Example: ``cpu_dtype("float32") == "float32"``."""
    dtype = str(dtype).replace("torch.", "")
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"CPU engine dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return dtype


def native_bf16() -> bool:
    """True on a CPU with bf16 instructions (Linux: ``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---- runtimes: run a converted graph on numpy arrays ------------------------------------------------------------
class OpenVINORunner:
    """One compiled OpenVINO model; ``__call__(*arrays) -> [arrays]`` in the graph's input / output order."""

    def __init__(self, path: str, dtype: str, threads: int | None):
        ov = require("openvino")
        config = {"INFERENCE_PRECISION_HINT": "f32" if dtype == "float32" else "bf16", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *arrays):
        out = self.request.infer(list(arrays), share_inputs=True, share_outputs=False)
        return [out[o] for o in self.compiled.outputs]


class OnnxRunner:
    """One ONNX Runtime CPU session; ``__call__(*arrays) -> [arrays]`` in the graph's input / output order."""

    def __init__(self, path: str, dtype: str, threads: int | None):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays):
        return self.session.run(None, dict(zip(self.names, arrays)))


RUNNERS = {"openvino": OpenVINORunner, "onnxruntime": OnnxRunner}


# ---- the stand-in model that vlm/engine.py drives --------------------------------------------------------------
class KV:
    """A KV cache as ``vlm.engine`` uses one: iterable of ``(keys, values)`` per layer, each (B, kv heads, W, head
    dim) float32, built from ``ddp_cache_data`` (``vlm.engine.select_rows``), grown in place by each forward."""

    def __init__(self, ddp_cache_data=()):
        self.layers = [(k, v) for k, v, *_ in ddp_cache_data]

    def __iter__(self):
        return iter(self.layers)


@dataclass
class _Output:
    logits: torch.Tensor  # (B, T kept, vocab) float32
    cache: KV


class CompiledVLM:
    """A converted Idefics3 model with the HF model's calling convention, as far as ``vlm/engine.py`` and
    ``vlm/families`` call it: ``config``, ``parameters()``, ``get_input_embeddings()``, ``get_image_features(...)``
    and ``__call__(input_ids | inputs_embeds, attention_mask, position_ids, cache, logits_to_keep)``."""

    def __init__(self, config, vision, decoder, embed: torch.Tensor, lm_head: torch.Tensor, engine: str, dtype: str):
        from vlm.cpu_graphs import vision_inputs

        self.config, self.vision, self.decoder, self.engine, self.dtype = config, vision, decoder, engine, dtype
        self._vision_inputs = vision_inputs
        self.embed = torch.nn.Embedding.from_pretrained(embed, freeze=True)
        self.lm_head = lm_head  # (vocab, hidden) float32
        tc = config.text_config
        self.layers, self.kv_heads = tc.num_hidden_layers, tc.num_key_value_heads
        self.head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads

    def parameters(self):
        yield self.embed.weight  # device and dtype of the inputs vlm/families casts pixels to: CPU float32

    def get_input_embeddings(self):
        return self.embed

    def get_image_features(self, pixel_values, pixel_attention_mask=None):
        """(1, N, 3, H, W) tiles -> (N, tokens per tile, text hidden) connector features."""
        masks = None if pixel_attention_mask is None else pixel_attention_mask[0].bool()
        pixels, positions, bias = self._vision_inputs(self.config, pixel_values[0], masks)
        (feats,) = self.vision(pixels.numpy(), positions.numpy(), bias.numpy())[:1]
        return torch.from_numpy(np.asarray(feats, dtype=np.float32))

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, use_cache=True,
                cache=None, logits_to_keep=0):  # fmt: skip
        embeds = inputs_embeds if inputs_embeds is not None else self.embed(input_ids)  # (B, T, hidden)
        b = embeds.shape[0]
        if cache is None:
            empty = torch.zeros((b, self.kv_heads, 0, self.head_dim), dtype=torch.float32)
            cache = KV([(empty, empty)] * self.layers)
        past = [t.contiguous().numpy() for kv in cache.layers for t in kv]
        out = self.decoder(embeds.float().contiguous().numpy(), attention_mask.long().numpy(),
                           position_ids.long().contiguous().numpy(), *past)  # fmt: skip
        hidden = torch.from_numpy(np.asarray(out[0], dtype=np.float32))
        new = [torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in out[1:]]
        cache.layers = [(torch.cat([k, new[2 * i]], dim=2), torch.cat([v, new[2 * i + 1]], dim=2))
                        for i, (k, v) in enumerate(cache.layers)]  # fmt: skip
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return _Output(hidden @ self.lm_head.T, cache)

    __call__ = forward


def open_cached(folder: Path, model: str, *, engine: str, dtype: str, threads: int | None = None,
                image_splitting: bool | None = None, longest_edge: int | None = None):  # fmt: skip
    """A ``vlm.Loaded`` whose ``model`` is a :class:`vlm.cpu_engine.CompiledVLM` over the graphs in ``folder``;
    the processor and image recipe are ``model``'s own (:func:`vlm.load.load_processor`)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from vlm.cpu_cache import SUFFIX
    from vlm.load import load_processor

    runner = RUNNERS[engine]
    head = load_file(str(folder / "head.safetensors"))
    vision = runner(str(folder / f"vision{SUFFIX[engine]}"), dtype, threads)
    decoder = runner(str(folder / f"decoder{SUFFIX[engine]}"), dtype, threads)
    shim = CompiledVLM(AutoConfig.from_pretrained(str(folder)), vision, decoder, head["embed"], head["lm_head"], engine,
                       dtype)  # fmt: skip
    loaded = load_processor(model, image_splitting=image_splitting, longest_edge=longest_edge)
    loaded.model, loaded.device, loaded.dtype = shim, torch.device("cpu"), torch.float32
    return loaded


def cpu_predictor(model: str, *, engine: str = "openvino", dtype: str = "auto", adapter: str | None = None,
                  image_splitting: bool | None = None, longest_edge: int | None = None, threads: int | None = None,
                  label_scores: bool = True, cache_dir: str | None = None, max_prompt_tokens: int | None = None,
                  score_batch: int = 32, vision_batch: int = 32, **_ignored):  # fmt: skip
    """A ``vlm.Predictor`` whose model runs on ``engine`` (``openvino`` / ``onnxruntime``) at ``dtype``; the
    converted graphs come from the cache (:func:`vlm.cpu_cache.prepare` converts on a miss). Idefics3 / SmolVLM
    models only. ``threads``: the runtime's threads (None: its own choice, every core)."""
    from vlm.cpu_cache import prepare
    from vlm.predict import Predictor

    require(engine)
    dtype = cpu_dtype(dtype)
    folder, converted = prepare(model, engine=engine, dtype=dtype, adapter=adapter, cache_dir=cache_dir)
    loaded = open_cached(folder, model, engine=engine, dtype=dtype, threads=threads,
                         image_splitting=image_splitting, longest_edge=longest_edge)  # fmt: skip
    print(f"{model}: {engine} engine, {dtype}, graphs {'converted to' if converted else 'reused from'} {folder}",
          file=sys.stderr, flush=True)  # fmt: skip
    p = Predictor.from_loaded(loaded, max_prompt_tokens=max_prompt_tokens, score_batch=score_batch,
                              vision_batch=vision_batch)  # fmt: skip
    p.label_scores = label_scores and p.family.label_scoring
    p.engine, p.converted, p.cache_folder = engine, converted, folder
    return p


PREFERENCE = ("openvino", "onnxruntime")  # fastest first, as benchmarks/cpu_engines.py measured on this CPU


def choose_engine(engine: str, *, model: str, device: str = "auto", num_gpus: float = 0.0,
                  decoding: str | None = None) -> tuple[str, str]:  # fmt: skip
    """``(engine to run, why)`` for ``--engine`` (``auto`` picks; any other name is kept as asked).

    ``auto``: ``hf`` on a GPU (``device`` cuda, ``num_gpus`` > 0, or a visible GPU), for beam search
    (``decoding`` smolvlm-study) and for families other than Idefics3; else the fastest installed CPU runtime
    (:data:`PREFERENCE`), else ``hf``. Example: ``choose_engine("auto", model="tiny", device="cpu")`` ->
    ``("openvino", "...")`` where openvino is installed.
    """
    if engine != "auto":
        return engine, "as asked"
    if decoding == "smolvlm-study":
        return "hf", "beam search runs in transformers"
    if device == "cuda" or num_gpus > 0 or (device == "auto" and torch.cuda.is_available()):
        return "hf", "a GPU: transformers on CUDA"
    from vlm.load import load_processor

    family = load_processor(model).family
    if family != "idefics3":
        return "hf", f"the CPU runtimes run Idefics3 / SmolVLM; this is {family}"
    for name in PREFERENCE:
        if installed(name):
            return name, "the fastest CPU runtime installed (docs/cpu-engines.md)"
    return "hf", "no CPU runtime installed (pip install 'ecgvlm[openvino]' runs SmolVLM several times faster)"
