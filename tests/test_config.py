"""The one config layer (ecgconfig) through the real CLI and every job's parser: a mistyped flag is one
line naming the closest flag (exit 2, no traceback), --help lists every field, nested flags, YAML + flag
precedence, today's spellings, and every shipped YAML loads with the command on its first line."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import demo, evaluate, prepare, score, serve, train
from ecgconfig import flag_kinds, load_config

REPO = Path(__file__).resolve().parents[1]
JOBS = {  # job -> (its config model, the function its main() parses argv with)
    "prepare": (prepare.PrepareConfig, lambda a: load_config(prepare.PrepareConfig, a, prog="ecgvlm prepare")),
    "train": (train.TrainConfig, train.parse_config),
    "evaluate": (evaluate.EvaluateConfig, lambda a: load_config(evaluate.EvaluateConfig, a, prog="ecgvlm evaluate")),
    "score": (score.ScoreConfig, score.parse_args),
    "serve": (serve.ServeJob, serve.parse_args),
    "demo": (demo.DemoConfig, demo.parse_args),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_mistyped_flag_is_one_line_naming_the_closest_flag():
    out = cli("train", "--workers", "2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "ecgvlm train: unknown flag --workers; did you mean --num-workers? (--help lists every flag)"]
    out = cli("serve", "--app.batching.max-batchsize", "4")
    assert out.returncode == 2 and "did you mean --app.batching.max-batch-size?" in out.stderr
    bad = cli("evaluate", "--data", "d", "--out", "o", "--batch-size", "many")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("ecgvlm evaluate: --batch-size: Input should be a valid integer")


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_lists_every_field_with_its_description_and_default(job, capsys):
    from pipelines.cli import main

    model, _ = JOBS[job]
    with pytest.raises(SystemExit) as exit_:  # in-process: the same parser, without an interpreter start per job
        main([job, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help lines wrap
    for flag, (kind, path) in flag_kinds(model).items():
        shown = f"-{flag} " if len(flag) == 1 else f"--{flag} "  # a one-letter field is -n (--n works too)
        assert shown in text, f"{job}: {shown}missing from --help"
    for name, field in model.model_fields.items():
        if field.description:
            assert " ".join(field.description.split())[:40] in text, f"{job}: {name}'s description"
    assert "(default: " in text and "--config FILE" in text


def test_nested_flags_and_todays_spellings(tmp_path):
    job = serve.parse_args(["--app.batching.max-batch-size", "4", "--app.predictor.max-replicas", "3"])
    assert (job.app.batching.max_batch_size, job.app.predictor.max_replicas) == (4, 3)
    job = serve.parse_args(["--config", "serving/config.yaml", "--no-batching", "--model", "tiny", "--port", "8123"])
    assert not job.app.batching.enabled and job.app.model == "tiny" and job.port == 8123
    cfg = train.parse_config(["--data", "d", "--out", "o", "--tiny.image-size", "448", "--num-workers", "2",
                              "--freeze-vision", "false", "--config-overrides", "{text_config: {num_hidden_layers: 2}}"])
    assert cfg.tiny == {"image_size": 448} and cfg.num_workers == 2 and cfg.freeze_vision is False
    assert cfg.config_overrides == {"text_config": {"num_hidden_layers": 2}}
    assert train.parse_config(["--data", "d", "--out", "o", "--tiny", "{image_size: 448}"]).tiny == {"image_size": 448}
    assert train.parse_config(["--data=d", "--out=o", "--lora-targets", "q_proj"]).lora_targets == "q_proj"
    got = score.parse_args(["--task", "csn", "--predictions", "p", "--json", "--drawn-before", "mmmu=12"])
    assert got.json_out and got.drawn_before == {"mmmu": 12}
    assert load_config(prepare.PrepareConfig, ["--overwrite"], prog="p").overwrite
    assert not load_config(prepare.PrepareConfig, ["--no-ptbxl-folds"], prog="p").ptbxl_folds


def test_flags_override_yaml_and_nested_dicts_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: ./d\nout: ./o\nnum_workers: 3\nlr: 0.001\ntiny: {image_size: 224, patch_size: 32}\n")
    cfg = train.parse_config(["--config", str(path), "--num-workers", "2", "--tiny.image-size", "448"])
    assert cfg.num_workers == 2 and cfg.lr == 0.001 and cfg.tiny == {"image_size": 448, "patch_size": 32}
    assert cfg.data == str(Path("./d").resolve())  # workers run elsewhere: local paths become absolute
    path.write_text("data: ./d\nout: ./o\nnum_workrs: 3\n")
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--config", str(path)])
    assert exit_.value.code == 2


def shipped() -> list[tuple[str, list[str]]]:
    """(job, argv) from the command on the first line of every YAML file in configs/ and serving/."""
    out = []
    for path in sorted([*REPO.glob("configs/*.yaml"), REPO / "serving" / "config.yaml"]):
        words = shlex.split(path.read_text().splitlines()[0].lstrip("# ").split("  ")[0])
        if words[:2] == ["serve", "run"]:
            out.append(("serve", ["--config", words[2]]))
            continue
        at = next(i for i, w in enumerate(words) if w == "ecgvlm" or w.startswith("pipelines."))
        job = words[at + 1] if words[at] == "ecgvlm" else words[at].split(".")[1]
        out.append((job, words[at + (2 if words[at] == "ecgvlm" else 1):]))
    return out


@pytest.mark.parametrize("job,argv", shipped(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_shipped_yaml_loads_with_its_first_line(job, argv, monkeypatch):
    monkeypatch.chdir(REPO)
    _, parse = JOBS[job]
    for flag in ("--data", "--out") if job in ("train", "evaluate") else ():
        argv = argv if flag in argv else argv + [flag, "placeholder"]  # given at run time (README)
    cfg = parse(argv)
    assert type(cfg) is JOBS[job][0]
