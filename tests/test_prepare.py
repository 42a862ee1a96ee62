"""``ecgvlm prepare`` through the real CLI on a local Ray cluster: synthetic, PTB-XL, CODE-15, ECGBench, S3."""

from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import cli
from pipelines.prepare import PrepareConfig
from test_samples import make_code15, make_ecgbench, make_ptbxl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--width", "550", "--height", "425"]  # half-size pages keep the test fast


def _prepare(*args: str) -> dict:
    assert cli.main(["prepare", *args, *SMALL]) == 0
    out = args[list(args).index("--out") + 1]
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def _split_rows(out: str, split: str) -> list[dict]:
    files = glob.glob(os.path.join(out, split, "*.parquet"))
    return [r for f in files for r in pq.read_table(f, columns=["id", "labels", "meta", "task"]).to_pylist()]


def test_synthetic_through_the_cli(ray_cluster, tmp_path):
    out = str(tmp_path / "synth")
    manifest = _prepare("--source", "synthetic", "--n", "60", "--seed", "4", "--chunk", "20", "--out", out)
    assert manifest["rows"] == 60 and manifest["failed"] == 0 and manifest["failures"] == []
    assert set(manifest["versions"]) >= {"ecgvlm", "numpy", "pyarrow", "ray"} and manifest["wall_s"] > 0
    rows = {s: _split_rows(out, s) for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == manifest["counts"]["splits"]
    patients = {s: {json.loads(r["meta"])["patient_id"] for r in rs} for s, rs in rows.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])  # no patient in two splits
    for label, per_split in manifest["counts"]["labels"].items():
        assert per_split == {s: n for s, rs in rows.items() if (n := sum(label in r["labels"] for r in rs))}
    ids = sorted(r["id"] for rs in rows.values() for r in rs)
    assert ids == [f"synth-4-{i:06d}" for i in range(60)]
    train = ray_cluster.data.read_parquet(os.path.join(out, "train"))
    assert train.count() == len(rows["train"]) and set(train.schema().names) >= {"image", "question", "answer"}
    assert not os.path.exists(os.path.join(out, "_failed"))
    with pytest.raises(FileExistsError):  # never mixes two runs in one folder unless asked to
        cli.main(["prepare", "--source", "synthetic", "--n", "3", "--out", out])


def test_ptbxl_and_code15_with_bad_files(ray_cluster, tmp_path):
    ptb = _prepare("--source", "ptbxl", "--path", make_ptbxl(str(tmp_path / "ptbxl")), "--out", str(tmp_path / "p"))
    assert ptb["rows"] == 5 and ptb["failed"] == 1 and ptb["failures"][0]["id"] == "ptbxl-3"
    assert "00003_hr" in ptb["failures"][0]["error"]
    assert ptb["counts"]["splits"] == {"train": 3, "val": 1, "test": 1}  # strat_fold 9 and 10
    assert ptb["counts"]["labels"]["MI"] == {"train": 1, "val": 1}
    assert {r["task"] for r in _split_rows(str(tmp_path / "p"), "train")} == {"ptbxl-super"}

    c15 = _prepare("--source", "code15", "--path", make_code15(str(tmp_path / "code15")), "--out",
                   str(tmp_path / "c"), "--split", "train=0.5,test=0.5")
    assert c15["rows"] == 6 and c15["failed"] == 2
    assert [f["id"] for f in c15["failures"]] == ["code15-2000", "code15-2001"]
    assert all("(2, 4096, 8)" in f["error"] for f in c15["failures"])
    assert sum(c15["counts"]["splits"].values()) == 6
    # 2 of 8 records failed: over a 20% bound the job says so and exits 1, after writing everything
    strict = str(tmp_path / "strict")
    assert cli.main(["prepare", "--source", "code15", "--path", str(tmp_path / "code15"), "--out", strict,
                     "--split", "train=0.5,test=0.5", "--max-error-rate", "0.2", *SMALL]) == 1
    with open(os.path.join(strict, "manifest.json")) as f:
        assert json.load(f)["failed"] == 2
    assert len(_split_rows(strict, "train")) + len(_split_rows(strict, "test")) == 6


def test_ecgbench_json_and_s3_output(ray_cluster, s3_server, tmp_path):
    path = make_ecgbench(str(tmp_path / "bench"), n=3)
    assert cli.main(["prepare", "--source", "ecgbench", "--path", path, "--out", "s3://ecg/bench", *SMALL]) == 0
    from ecg import storage

    manifest = json.loads(storage.read_text("s3://ecg/bench/manifest.json"))
    assert manifest["rows"] == 3 and manifest["counts"]["splits"] == {"test": 3}
    assert {f["id"] for f in manifest["failures"]} == {"bad", "missing"} and manifest["failed"] == 2
    fs, root = storage.resolve("s3://ecg/bench/test")
    table = ray_cluster.data.read_parquet(root, filesystem=fs).to_pandas()
    assert sorted(table["id"]) == ["synth-9-000000", "synth-9-000001", "synth-9-000002"]
    assert set(table["task"]) == {"code15"}


def test_shipped_prepare_configs_load():
    for path in glob.glob(os.path.join(REPO, "configs", "prepare-*.yaml")):
        with open(path) as f:
            first = f.readline()
            assert first.startswith("# ecgvlm prepare"), path
            PrepareConfig(**yaml.safe_load(f.read()))
