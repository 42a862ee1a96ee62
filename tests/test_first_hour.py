"""A newcomer's first hour: ``ecgvlm --version``; a wrong --model, --data, --split, --path or --out is one line and exit
status 2 before Ray starts (in-process, so no cluster is involved); --help puts the main flags first, the
endpoint-only ones last, each default once and no module names; Ray's core lines are recognised for filtering."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import cli, evaluate, launch, prepare, serve, train

JOBS = ("prepare", "train", "evaluate", "score", "serve", "demo")


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert re.fullmatch(r"ecgvlm \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def _one_line_exit_2(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    return err[0]


@pytest.fixture
def shards(tmp_path):
    """A prepared folder with a train split only: one real Parquet shard of two sample rows."""
    (tmp_path / "data" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "task": ["code15"] * 2}), tmp_path / "data" / "train" / "0.parquet")
    (tmp_path / "data" / "_manifest.json").write_text("{}")
    return tmp_path / "data"


def test_wrong_paths_are_one_line_before_ray(capsys, tmp_path, shards):
    out = str(tmp_path / "eval")
    line = _one_line_exit_2(capsys, evaluate.main, ["--data", "/wrong", "--out", out])
    assert line == "ecgvlm evaluate: --data /wrong: no such file or folder"
    line = _one_line_exit_2(capsys, evaluate.main, ["--model", "/wrong", "--data", str(shards), "--out", out])
    assert line.startswith("ecgvlm evaluate: --model /wrong: no such folder")
    line = _one_line_exit_2(capsys, evaluate.main, ["--data", str(shards), "--out", out])  # --split test
    assert line == f"ecgvlm evaluate: --split test: {shards} has no such split; it has train"
    (tmp_path / "file").write_text("")
    line = _one_line_exit_2(capsys, evaluate.main, ["--data", str(shards), "--split", "train", "--out",
                                                   str(tmp_path / "file")])
    assert line.endswith("is a file; give a folder")
    line = _one_line_exit_2(capsys, evaluate.main, ["--model", str(tmp_path), "--data", str(shards), "--split",
                                                   "train", "--out", out])
    assert "a folder without config.json" in line
    (tmp_path / "unprepared" / "train").mkdir(parents=True)
    line = _one_line_exit_2(capsys, train.main, ["--data", str(tmp_path / "unprepared"), "--out", out])
    assert line.startswith("ecgvlm train: --data") and "no sample shards" in line
    line = _one_line_exit_2(capsys, prepare.main, ["--source", "ptbxl", "--path", "/nope", "--out", out])
    assert line == "ecgvlm prepare: --path /nope: no such file or folder"
    assert prepare.main(["--source", "code15", "--out", out]) == 2
    assert "needs --path" in capsys.readouterr().err
    assert serve.main(["--model", "tiny:nope"]) == 2  # serve's own check of the model and key, before Ray
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ecgvlm serve: error: model 'tiny:nope': no such tiny family"), err
    assert not (tmp_path / "eval").exists()  # nothing was started, nothing written


@pytest.mark.parametrize("job", JOBS)
def test_help_is_for_users(job, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([job, "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and text.startswith(f"usage: ecgvlm {job}")
    sections = re.findall(r"^(\S[^\n]*options[^\n]*):$", text, re.M)
    assert sections[0] == "main options", sections
    module = r"(?<!-m )\b(vlm|ecg|metrics|serving|pipelines|ecgtasks|ecgconfig)\.(?!png|json|yaml|csv)[a-zA-Z_]+"
    assert not re.search(module, text), "module names in --help"  # python -m pipelines.X is a command
    assert "(default: null)" not in text and "default: None" not in text
    flags = re.split(r"\n  --", text)
    assert all(f.count("(default") <= 1 for f in flags), [f for f in flags if f.count("(default") > 1]


def test_evaluate_help_puts_model_first_and_endpoint_flags_last(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = capsys.readouterr().out
    main, rest = text.split("main options:", 1)[1].split("other options:", 1)
    assert main.split()[0] == "--model" and "--data" in main and "--decoding" in main
    endpoint = rest.split("options for --model openai:NAME", 1)[1]
    for flag in ("--concurrency", "--requests-per-min", "--api-base", "--retries", "--price-input-per-mtok"):
        assert flag in endpoint and flag not in main


def test_ray_core_lines_are_recognised():
    core = [b"[2026-12-06 03:40:43,291 E 13483 13483] core_worker.cc:2465: Actor with class name: 'MapWorker'",
            b"\x1b[36m(TrainController pid=28431)\x1b[0m [2026-12-06 03:46:24,932 E 28431 28578] core_worker.cc:2465: ",
            b"\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries",
            b"\x1b[36m(PlacementGroupCleaner pid=7722)\x1b[0m Failed to query Ray Train Controller actor state. State "
            b"API may be temporarily unavailable. Continuing to monitor."]
    ours = [b"evaluate: 4 rows to predict", b"Traceback (most recent call last):",
            b"(RayTrainWorker pid=28791) step 100 loss 1.7301 lr 6.98e-05",
            b"[2026-12-06 03:40:43,291 F 13483 13483] core_worker.cc:1: a fatal error stays"]
    assert all(launch._CORE_LINE.match(line) for line in core)
    assert not any(launch._CORE_LINE.match(line) for line in ours)
