"""``ecgvlm prepare`` through the real CLI on a local Ray cluster: synthetic, PTB-XL, CODE-15, ECGBench,
ECGInstruct (JSON and JSONL), S3; every prepared folder read back by ordinary Parquet readers."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from ecg import manifest as manifests
from ecg import samples
from pipelines import cli
from pipelines.prepare import PrepareConfig
from test_ecgbench import make_ecginstruct, make_hub_parquet
from test_samples import make_code15, make_ecgbench, make_ptbxl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--width", "550", "--height", "425"]  # half-size pages keep the test fast


def _prepare(*args: str) -> dict:
    assert cli.main(["prepare", *args, *SMALL]) == 0
    out = args[list(args).index("--out") + 1]
    assert not os.path.exists(os.path.join(out, "manifest.json"))  # side files start with "_"
    with open(os.path.join(out, "_manifest.json")) as f:
        return json.load(f)


def _split_rows(out: str, split: str) -> list[dict]:
    files = glob.glob(os.path.join(out, split, "*.parquet"))
    return [r for f in files for r in pq.read_table(f, columns=["id", "labels", "meta", "task"]).to_pylist()]


def _read_like_anyone(out: str, splits: list[str], rows: int) -> None:
    """The folder and each split folder open with pandas and pyarrow.dataset given only the path; and, where
    installed (none is a dependency of this project), Hugging Face ``datasets`` given the folder, polars given
    a split folder (polars skips no side file: the whole folder takes a glob), DuckDB given a glob."""
    assert len(pd.read_parquet(out)) == rows and pads.dataset(out).count_rows() == rows
    assert sum(len(pd.read_parquet(os.path.join(out, s))) for s in splits) == rows
    by_folder = pads.dataset(out, partitioning=["split"]).to_table(columns=["split"]).column("split").to_pylist()
    assert sorted(set(by_folder)) == sorted(splits)  # directory partitioning: the folder is the split
    try:
        import polars
        assert sum(polars.read_parquet(os.path.join(out, s)).height for s in splits) == rows
        assert polars.read_parquet(os.path.join(out, "**", "*.parquet")).height == rows
    except ImportError:
        pass
    try:
        import duckdb
        assert duckdb.sql(f"select count(*) from read_parquet('{out}/*/*.parquet')").fetchone()[0] == rows
    except ImportError:
        pass
    try:
        import datasets
        loaded = datasets.load_dataset("parquet", data_dir=out)
        assert sum(len(v) for v in loaded.values()) == rows
    except ImportError:
        pass


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
    _read_like_anyone(out, ["train", "val", "test"], 60)
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
    assert manifests.read_manifest(strict)["failed"] == 2
    assert len(_split_rows(strict, "train")) + len(_split_rows(strict, "test")) == 6


def test_ecgbench_json_and_s3_output(ray_cluster, s3_server, tmp_path):
    path = make_ecgbench(str(tmp_path / "bench"), n=3)
    assert cli.main(["prepare", "--source", "ecgbench", "--path", path, "--out", "s3://ecg/bench", *SMALL]) == 0
    from ecg import storage

    manifest = manifests.read_manifest("s3://ecg/bench")
    assert storage.exists("s3://ecg/bench/_manifest.json")
    assert manifest["rows"] == 3 and manifest["counts"]["splits"] == {"test": 3}
    assert {f["id"] for f in manifest["failures"]} == {"bad", "missing"} and manifest["failed"] == 2
    assert manifest["counts"]["failures"] == {"image_not_found": 1, "unreadable_image": 1}
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


# ---- ECGInstruct and ECGBench as published ------------------------------------------------------------------------

INSTRUCT_TASKS = {"code15": 1, "cpsc": 1, "csn": 1, "ecgqa": 2, "freetext": 4, "ptbxl-report": 1, "ptbxl-super": 1}
INSTRUCT_FAILURES = {"absolute_path": ["bad-absolute"], "bad_conversation": ["bad-turns"],
                     "image_not_found": ["bad-missing"], "no_image": ["bad-noimage"],
                     "path_outside_root": ["bad-climb"], "unreadable_image": ["bad-truncated"]}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_ecginstruct_through_the_cli(ray_cluster, tmp_path, form):
    path, out = make_ecginstruct(str(tmp_path / "ecginstruct"), form), str(tmp_path / "out")
    manifest = _prepare("--source", "ecginstruct", "--path", path, "--out", out, "--split", "train=0.5,val=0.5",
                        "--chunk", "4")
    rows = {s: _split_rows(out, s) for s in ("train", "val")}
    every = [r for rs in rows.values() for r in rs]
    assert len(every) == manifest["rows"] == 11 and manifest["records"] == 8
    tasks: dict[str, dict[str, int]] = {}
    for split, rs in rows.items():
        for r in rs:
            tasks.setdefault(r["task"], {}).setdefault(split, 0)
            tasks[r["task"]][split] += 1
    assert manifest["counts"]["tasks"] == tasks
    assert {t: sum(per.values()) for t, per in tasks.items()} == INSTRUCT_TASKS
    for split, rs in rows.items():  # the split is drawn per image: all turns of a record together
        for r in rs:
            meta = json.loads(r["meta"])
            assert samples.assign_split(f"images/{meta['record_id']}.png", {"train": 0.5, "val": 0.5}, 0) == split
    by_id = {r["id"]: r for r in every}
    assert sorted(i for i in by_id if "#t" in i) == ["code15-1001#t1", "mimic-7#t1", "mimic-7#t2"]
    assert [by_id[i]["task"] for i in ("mimic-7", "mimic-7#t1", "mimic-7#t2")] == ["freetext", "freetext", "ecgqa"]
    history = json.loads(by_id["mimic-7#t2"]["meta"])["history"]
    assert [h["role"] for h in history] == ["user", "assistant"] * 2
    assert history[0]["text"].startswith("<image>\nWrite a report") and history[3]["text"] == "About 70 bpm."
    assert by_id["code15-1001"]["labels"] == ["1dAVb", "SB"] and by_id["csn-JS0004"]["labels"] == ["B"]
    bad_json = [f"ECGInstruct.json#14"] if form == "json" else ["ECGInstruct.jsonl:15", "ECGInstruct.jsonl:16"]
    kinds = {**INSTRUCT_FAILURES, "bad_json": bad_json}
    assert manifest["counts"]["failures"] == {k: len(v) for k, v in sorted(kinds.items())}
    assert {f["id"]: f["kind"] for f in manifest["failures"]} == {i: k for k, ids in kinds.items() for i in ids}
    assert manifest["failed"] == len(manifest["failures"]) == 7 + (form == "jsonl")
    errors = {f["id"]: f["error"] for f in manifest["failures"]}
    assert "'../outside.png' leaves the dataset root" in errors["bad-climb"] and "is absolute" in errors["bad-absolute"]
    assert "bad-truncated" in errors["bad-truncated"] and "missing.png" in errors["bad-missing"]
    _read_like_anyone(out, ["train", "val"], 11)


@pytest.mark.slow
def test_ecgbench_hub_parquet_with_task_auto(ray_cluster, tmp_path):
    root, out = make_hub_parquet(str(tmp_path / "ECGBench")), str(tmp_path / "bench")
    manifest = _prepare("--source", "ecgbench", "--path", root, "--out", out, "--task", "auto")
    assert manifest["counts"]["tasks"] == {"code15": {"test": 3}, "csn": {"test": 1}}
    assert [(f["id"], f["kind"]) for f in manifest["failures"]] == [("csn-test-no-cot-1", "unreadable_image")]
    labels = {r["id"]: r["labels"] for r in _split_rows(out, "test")}
    assert labels == {"code15-test-0": ["NORM"], "code15-test-1": ["SB"], "code15-test-2": ["RBBB", "AF"],
                      "csn-test-no-cot-0": ["B"]}
    _read_like_anyone(out, ["test"], 4)


def test_old_manifest_name_still_loads(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"rows": 3}))
    assert manifests.read_manifest(str(tmp_path)) == {"rows": 3}
    (tmp_path / "_manifest.json").write_text(json.dumps({"rows": 4}))
    assert manifests.read_manifest(str(tmp_path)) == {"rows": 4}
    with pytest.raises(FileNotFoundError, match="_manifest.json"):
        manifests.read_manifest(str(tmp_path / "nothing"))


def _readme_prepare(source: str) -> list[str]:
    """The README data table's ``ecgvlm prepare --source SOURCE ...`` command, as arguments."""
    with open(os.path.join(REPO, "README.md")) as f:
        for line in f:
            found = re.search(rf"`ecgvlm prepare (--source {source} [^`]*)`", line)
            if found:
                return shlex.split(found.group(1))
    raise AssertionError(f"README has no `ecgvlm prepare --source {source}` command")


def _with(args: list[str], **values: str) -> list[str]:
    args = list(args)
    for flag, value in values.items():
        args[args.index(f"--{flag}") + 1] = value
    return args


@pytest.mark.slow
def test_readme_prepare_commands_run_as_written(ray_cluster, tmp_path):
    """The README's ECGInstruct and ECGBench commands, with only --path and --out pointing at local copies."""
    instruct = _readme_prepare("ecginstruct")
    assert instruct[instruct.index("--path") + 1] == "ECGInstruct.json"
    path = make_ecginstruct(str(tmp_path / "ecginstruct"))
    manifest = _prepare(*_with(instruct, path=path, out=str(tmp_path / "instruct")))
    assert manifest["rows"] == 11 and set(manifest["counts"]["splits"]) == {"train", "val"}
    bench = _readme_prepare("ecgbench")
    assert bench[bench.index("--path") + 1] == "ECGBench/code15-test"
    root = make_hub_parquet(str(tmp_path / "ECGBench"))
    manifest = _prepare(*_with(bench, path=os.path.join(root, "code15-test"), out=str(tmp_path / "bench")))
    assert manifest["counts"]["tasks"] == {"code15": {"test": 3}} and manifest["failed"] == 0


@pytest.mark.slow
def test_real_sources_through_the_cli(ray_cluster, real_ecgs, tmp_path):
    """--source wfdb (cpsc), clinical and images on real or library-written files: rows, labels and the bad files
    named and counted by kind in _manifest.json."""
    from test_ecg_challenge import _mortara_mv, write_challenge
    from test_ecg_sources import make_clinical_folder, make_image_folder

    tree, x = tmp_path / "cpsc", _mortara_mv()
    write_challenge(tree / "g1", "A0001", x, ["Dx: 164889003,59118001"])
    write_challenge(tree / "g1", "A0002", x, ["Dx: 426783006"], mat=False)
    write_challenge(tree / "g1", "A0003", x, ["Dx: not-a-code"])
    manifest = _prepare("--source", "wfdb", "--task", "cpsc", "--path", str(tree), "--out", str(tmp_path / "w"),
                        "--split", "test=1", "--max-error-rate", "0.5")
    assert manifest["counts"]["labels"] == {"AF": {"test": 1}, "NORM": {"test": 1}, "RBBB": {"test": 1}}
    assert manifest["counts"]["failures"] == {"unreadable_record": 1} and manifest["failures"][0]["id"] == "wfdb-g1/A0003"

    root = make_clinical_folder(real_ecgs, tmp_path / "exports")
    manifest = _prepare("--source", "clinical", "--path", root, "--labels", os.path.join(root, "labels.csv"),
                        "--out", str(tmp_path / "c"))
    assert manifest["counts"]["splits"] == {"test": 4} and manifest["source"] == "clinical"
    assert manifest["counts"]["failures"] == {"bad_label": 1, "unknown_format": 1, "unreadable_record": 1}
    rows = pd.read_parquet(os.path.join(tmp_path, "c", "test"))
    assert sorted(rows["answer"]) == ["", "AF", "NORM", "SB"]

    root = make_image_folder(real_ecgs, tmp_path / "pages")
    manifest = _prepare("--source", "images", "--path", root, "--labels", os.path.join(root, "labels.csv"),
                        "--out", str(tmp_path / "i"))
    assert manifest["rows"] == 7 and manifest["counts"]["failures"] == {"unreadable_image": 1}
    # --source mimic-ecg runs the same plan with sources.mimic_batch (tests/test_ecg_sources.py); left out for time
