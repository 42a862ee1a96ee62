"""The serving application's typed config: the ``args:`` of serving/config.yaml and of ``ecgvlm serve``.

Example::

    cfg = AppConfig.model_validate({"model": "tiny", "batching": {"enabled": False}})
    cfg.batching.effective()        # (1, 0.0): one request per model call
    cfg = load_serve_yaml("serving/config.yaml")[1]   # the app args of the shipped Serve config
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.inputs import Limits


class Batching(BaseModel):
    """``@serve.batch`` dynamic batching of model calls on each predictor replica."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: every request is its own model call (the benchmark baseline)")
    max_batch_size: int = Field(16, ge=1, description="most requests per model call")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="longest wait for a batch to fill, s")

    def effective(self) -> tuple[int, float]:
        """(max_batch_size, batch_wait_timeout_s) as applied: (1, 0.0) when batching is off."""
        return (self.max_batch_size, self.batch_wait_timeout_s) if self.enabled else (1, 0.0)


class VLLMOptions(BaseModel):
    """The vLLM engine (``engine: vllm``): continuous batching in vLLM's async engine, no ``@serve.batch``."""

    model_config = ConfigDict(extra="forbid")

    max_num_seqs: int = Field(64, ge=1, description="most sequences vLLM decodes at once (its running batch)")
    max_model_len: int = Field(4096, ge=64, description="context length vLLM reserves per sequence")
    label_scores: bool = Field(True, description="label scores from prompt log-probabilities (off: null)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="more vllm.AsyncEngineArgs fields, "
                                          "e.g. enforce_eager, gpu_memory_utilization, hf_overrides")


class PredictorScaling(BaseModel):
    """Resources and autoscaling of the predictor deployment (the replicas that hold the model)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica; fractional so a 2-CPU Ray fits more")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (1 on a GPU node)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(16, gt=0, description="requests per replica autoscaling aims at "
                                           "(about one full batch)")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica accepts before queueing")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per replica; default: "
                                      "Ray's OMP_NUM_THREADS (1 for a fractional num_cpus)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self

    def autoscaling(self) -> dict:
        """The Serve ``autoscaling_config`` dict."""
        out = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
               "target_ongoing_requests": self.target_ongoing_requests}
        if self.initial_replicas is not None:
            out["initial_replicas"] = self.initial_replicas
        return out


class IngressScaling(BaseModel):
    """The FastAPI ingress: parses and validates uploads, renders signals (CPU work, no model)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.25, ge=0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(128, ge=1, description="concurrent requests per ingress replica")


class PageGate(BaseModel):
    """The "is this an ECG page?" check (``ecg.pagegate``) on every image /v1/diagnose and chat receive."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["reject", "flag", "off"] = Field("reject", description='"reject": 422 "not an ECG page"; '
                                                  '"flag": answer anyway, with the check in the response; "off"')
    threshold: float = Field(0.6, ge=0, le=1, description="score at or above which an image counts as a page")


class AppConfig(BaseModel):
    """Everything ``serving.app:build_app`` needs. Field descriptions are the documentation."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description='"tiny", a Hugging Face id, an export folder, or "random:PATH"')
    engine: Literal["auto", "hf", "vllm", "openvino", "onnxruntime"] = Field(
        "auto", description='"auto": the fastest installed for the replica\'s device (openvino on a CPU where '
                            'installed, else hf); "hf": transformers with @serve.batch dynamic batching; "vllm": '
                            'vLLM\'s async engine, continuous batching; "openvino" / "onnxruntime": a compiled CPU '
                            'runtime with @serve.batch (docs/cpu-engines.md)')
    adapter: str | None = Field(None, description="LoRA adapter folder applied on top of the model")
    device: str = Field("auto", description='"auto", "cpu", "cuda"')
    dtype: str = Field("auto", description='"auto", "float32", "bfloat16", "int8" (CPU engines: int8 weights)')
    image_splitting: bool | None = Field(None, description="processor image splitting (None: as the model was "
                                         "trained, from its export's ecgvlm.json, else its processor's own)")
    longest_edge: int | None = Field(None, ge=1, description="px pages are resized to (None: as trained)")
    model_id: str | None = Field(None, description="the id clients see (/v1/models, responses); default: a "
                                 "short name: the export's model_id, else the folder's or preset's name")
    api_key_env: str = Field("ECGVLM_API_KEY", description="environment variable holding the API keys (comma-"
                             "separated); when it is set, every /v1 route needs 'Authorization: Bearer <key>'")
    require_api_key: bool = Field(False, description="refuse to start without a key in api_key_env (clusters)")
    page_gate: PageGate = Field(default_factory=PageGate)
    default_task: str = Field("code15", description="task of /v1/diagnose and chat when none is given")
    batching: Batching = Field(default_factory=Batching)
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    predictor: PredictorScaling = Field(default_factory=PredictorScaling)
    ingress: IngressScaling = Field(default_factory=IngressScaling)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("default_task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        from ecgtasks import get_task

        try:
            return get_task(name).name
        except KeyError as err:
            raise ValueError(err.args[0]) from None

    @model_validator(mode="after")
    def _engine_fits(self):
        if self.engine == "vllm":
            if self.model == "tiny":
                raise ValueError("engine vllm loads a folder, a HF id or random:DIR; the tiny preset exists only "
                                 "in memory: export it first (vlm.export) and pass the export folder")
            if self.adapter is not None:
                raise ValueError("engine vllm serves merged models: merge the adapter into an export first")
        return self


    def served_id(self, loaded_name: str | None = None) -> str:
        """The model id clients send and see: ``model_id``, else the export's own ``model_id`` (its ecgvlm.json),
        else the last part of the model's name ("tiny", "export", "SmolVLM-256M-Instruct")."""
        if self.model_id:
            return self.model_id
        return short_name(self.model)


def short_name(model: str) -> str:
    """A short id for a model reference. Example: ``short_name("/runs/x/export")`` -> the export's model_id or
    "export"; ``short_name("random:/m/SmolVLM-256M-Instruct")`` -> "SmolVLM-256M-Instruct"."""
    import json

    ref = model.split(":", 1)[1] if model.startswith("random:") else model
    meta = Path(ref) / "ecgvlm.json"
    if meta.is_file():
        try:
            given = json.loads(meta.read_text()).get("model_id")
        except (OSError, ValueError):
            given = None
        if isinstance(given, str) and given.strip():
            return given.strip()
    parts = [p for p in ref.rstrip("/").split("/") if p]
    if len(parts) > 1 and parts[-1] == "export":  # runs/<name>/export, as `ecgvlm train` writes it
        return parts[-2]
    return parts[-1] if parts else model


def check_model(cfg: AppConfig) -> None:
    """Fail fast, before Ray starts, on a model or adapter that cannot be found (ValueError, one line)."""
    if cfg.model.startswith("s3://"):
        return  # read by the replica from the object store
    from vlm.load import _family, _source

    try:
        src = _source(cfg.model, None, None)
        if src.kind == "random":
            _family(src, cfg.model)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(str(err).splitlines()[0]) from None
    if cfg.adapter and not cfg.adapter.startswith("s3://") and not Path(cfg.adapter).is_dir():
        raise ValueError(f"adapter {cfg.adapter!r}: no such folder")


def load_serve_yaml(path: str | Path) -> tuple[dict, AppConfig]:
    """(http_options, AppConfig) from a Serve config file whose first application is ``build_app``."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    apps = doc.get("applications") or []
    if not apps:
        raise ValueError(f"{path}: no applications")
    return dict(doc.get("http_options") or {}), AppConfig.model_validate(apps[0].get("args") or {})
