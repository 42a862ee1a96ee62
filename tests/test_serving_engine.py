"""The serving app's engine choice without vLLM installed: config validation of ``engine`` and its options, the
vLLM app graph built without importing vLLM, and the vLLM replica's clear error when vLLM is missing (the engine
itself runs in tests/test_serving_vllm.py, in make test-vllm's environment)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from pydantic import ValidationError

from serving.config import AppConfig

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def test_auto_is_the_default_engine_and_vllm_options_keep_theirs():
    # auto: the replica picks the fastest installed engine for its device (hf where no CPU runtime is installed)
    cfg = AppConfig.model_validate({})
    assert cfg.engine == "auto" and cfg.vllm.label_scores and cfg.vllm.max_num_seqs == 64


def test_engine_names_and_vllm_options_are_validated(smolvlm_dir):
    with pytest.raises(ValidationError, match="engine"):
        AppConfig.model_validate({"engine": "tgi"})
    with pytest.raises(ValidationError, match="export it first"):
        AppConfig.model_validate({"engine": "vllm"})  # the default model is the in-memory tiny preset
    with pytest.raises(ValidationError, match="merge the adapter"):
        AppConfig.model_validate({"engine": "vllm", "model": f"random:{smolvlm_dir}", "adapter": "/runs/lora"})
    with pytest.raises(ValidationError, match="max_num_seqs"):
        AppConfig.model_validate({"engine": "vllm", "model": f"random:{smolvlm_dir}", "vllm": {"max_num_seqs": 0}})
    with pytest.raises(ValidationError, match="max_num_sequences"):  # a misspelt option is refused, not ignored
        AppConfig.model_validate({"model": f"random:{smolvlm_dir}", "vllm": {"max_num_sequences": 8}})
    cfg = AppConfig.model_validate({"engine": "vllm", "model": f"random:{smolvlm_dir}",
                                    "vllm": {"label_scores": False, "engine_kwargs": {"enforce_eager": True}}})
    assert cfg.vllm.engine_kwargs == {"enforce_eager": True} and not cfg.vllm.label_scores


def test_the_cli_takes_the_engine_as_a_flag(smolvlm_dir):
    from pipelines.serve import parse_args

    job = parse_args(["--model", f"random:{smolvlm_dir}", "--app.engine", "vllm", "--app.vllm.max-num-seqs", "8"])
    assert job.app.engine == "vllm" and job.app.vllm.max_num_seqs == 8


def test_the_vllm_app_builds_without_importing_vllm(smolvlm_dir):
    from serving.app import build_app

    app = build_app({"engine": "vllm", "model": f"random:{smolvlm_dir}", "vllm": {"max_num_seqs": 96}})
    predictor = app._bound_deployment.init_args[0]  # Ingress(predictor, config)
    assert predictor._bound_deployment.name == "Predictor"
    assert predictor._bound_deployment.func_or_class.__name__ == "VLLMReplica"
    assert predictor._bound_deployment.max_ongoing_requests == 96  # the whole running batch can be in flight
    hf = build_app({"model": "tiny"})._bound_deployment.init_args[0]._bound_deployment
    assert hf.func_or_class.__name__ == "Predictor"
    assert HAVE_VLLM or "vllm" not in sys.modules


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_replica_says_how_to_install_it(smolvlm_dir):
    from serving.vllm_replica import VLLMReplica

    with pytest.raises(ImportError, match=r"pip install 'ecgvlm\[vllm\]'"):
        VLLMReplica.func_or_class({"engine": "vllm", "model": f"random:{smolvlm_dir}"})


def test_serve_refuses_a_missing_model_or_key_in_one_line_before_ray(capsys, monkeypatch):
    from pipelines import cli

    assert cli.main(["serve", "--model", "/no/such/folder"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/no/such/folder" in err and err.startswith("ecgvlm serve: error:")
    monkeypatch.delenv("ECGVLM_API_KEY", raising=False)
    assert cli.main(["serve", "--config", "configs/serve-cluster.yaml", "--model", "tiny"]) == 2
    assert "set ECGVLM_API_KEY" in capsys.readouterr().err
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_the_served_id_is_a_short_name(tmp_path):
    assert AppConfig.model_validate({}).served_id() == "tiny"
    assert AppConfig.model_validate({"model_id": "ecg-1"}).served_id() == "ecg-1"
    export = tmp_path / "runs" / "smol-ecg" / "export"
    export.mkdir(parents=True)
    assert AppConfig.model_validate({"model": str(export)}).served_id() == "smol-ecg"
    (export / "ecgvlm.json").write_text('{"model_id": "smol-ecg-v2"}')
    assert AppConfig.model_validate({"model": str(export)}).served_id() == "smol-ecg-v2"
