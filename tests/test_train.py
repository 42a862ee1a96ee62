"""``ecgvlm train`` through its real CLI on real Ray Train: one worker (interrupted after its first checkpoint,
rerun resumes at that step, exports a model that vlm loads and that generates), and every shipped training YAML
parses. Real tiny model, real Parquet shards, real Ray. Two DDP workers with the default CPU shares on a 2-CPU
laptop: tests/test_train_streaming.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecg.render import render, to_bytes
from ecg.rows import SAMPLE_SCHEMA
from ecg.synth import generate
from ecgtasks import CODE15
from pipelines import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """A sample-shard folder: 24 train rows, 6 val rows (synthetic records rendered to PNG pages)."""
    root = tmp_path_factory.mktemp("shards")
    for split, n, seed in (("train", 24, 1), ("val", 6, 2)):
        rows = [{"id": f"{split}-{r.id}", "task": "code15", "image": to_bytes(render(r)), "question": CODE15.question,
                 "answer": CODE15.format_answer(r.labels), "labels": list(r.labels), "source": "synthetic",
                 "meta": json.dumps({"split": split})} for r in generate(n, seed=seed)]
        (root / split).mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), root / split / "part-0.parquet")
    return str(root)


def _argv(shards: str, out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny", "--data", shards, "--out", str(out), "--finetune", "full", "--freeze-vision", "false",
            "--lr", "3e-3", "--warmup-fraction", "0", "--batch-size", "4", "--log-every", "1", "--val-rows", "4",
            "--validate-every", "1000", *extra]


def _summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def test_one_worker_resumes_after_interruption_and_exports(ray_cluster, shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it: workers run elsewhere and must not lose it
    out = tmp_path / "run"
    argv = _argv(shards, Path("run"), "--max-steps", "6", "--checkpoint-every", "3", "--patch-init", "pca")
    assert train.main(argv + ["--stop-after-steps", "3", "--tracking", "none"]) == 0  # "crashes" after a checkpoint
    first = _summary(out)
    assert first["interrupted"] and first["step"] == 3 and "export" not in first
    assert not (out / "export").exists()

    store = f"file:{tmp_path / 'mlruns'}"
    assert train.main(argv + ["--tracking", store]) == 0  # the same command again, tracked in MLflow
    done = _summary(out)
    assert done["start_step"] == 3 and done["step"] == 6 and not done["interrupted"]
    # the patch filters came from the 24 train pages (tiny: 96 filters of 16 x 16 px gray patches)
    assert done["patch_init"]["filters"] == 96 and done["patch_init"]["gray"]
    assert done["patch_init"]["patches"] == 24 * 14 * 14 and 0 < done["patch_init"]["explained"] <= 1
    losses = [loss for _, loss, _ in done["losses"]]  # steps 1-3 from the first run (restored), 4-6 from this one
    assert [s for s, _, _ in done["losses"]] == [1, 2, 3, 4, 5, 6]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert 0 <= done["validation"]["f1"] <= 100
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ecgvlm-train").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (s, pytest.approx(v)) for s, v, _ in done["losses"]]
    assert client.get_metric_history(run.info.run_id, "val/f1")[-1].value == pytest.approx(done["validation"]["f1"])
    # logged live by the rank-0 worker: every loss point and the validation stand before the final summary
    final = client.get_metric_history(run.info.run_id, "samples")[-1].timestamp
    live = client.get_metric_history(run.info.run_id, "loss") + client.get_metric_history(run.info.run_id, "val/f1")
    assert len({m.step for m in live}) > 1 and all(m.timestamp < final for m in live), (final, live)
    assert run.data.params["finetune"] == "full" and run.info.status == "FINISHED"
    assert {"config.json", "train_summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    from ecg import provenance  # the export records what it trained on; evaluation checks ids against it

    trained = pq.read_table(Path(shards) / "train" / "part-0.parquet", columns=["id"]).column("id").to_pylist()
    seen = provenance.overlap(str(out / "export"), trained[:5] + ["val-synth-2-000000", "never-seen"])
    assert (seen["n"], seen["of"], seen["trained_on"]["split"], seen["trained_on"]["n"]) == (5, 7, "train", 24)

    import vlm

    loaded = vlm.load(str(out / "export"))
    assert loaded.prep.kind == "ecg_gray"
    page = render(next(generate(1, seed=9)))
    answer = vlm.Predictor(str(out / "export")).generate([page], [CODE15.question], max_new_tokens=8)
    assert isinstance(answer[0], str)


def test_a_failed_job_ends_its_mlflow_run_as_failed(ray_cluster, shards, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)  # a shard of no rows: the path checks pass, the job fails after its MLflow
    pq.write_table(SAMPLE_SCHEMA.empty_table(), data / "train" / "part-0.parquet")  # run opened
    store = f"file:{tmp_path / 'mlruns'}"
    with pytest.raises(ValueError, match="train: no rows"):
        train.main(_argv(str(data), tmp_path / "run", "--max-steps", "2", "--tracking", store))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ecgvlm-train").experiment_id])
    assert run.info.status == "FAILED" and run.data.params["max_steps"] == "2"  # the config, logged at the start


def test_cached_rows_come_in_a_new_order_every_epoch(ray_cluster, shards, tmp_path):
    """Cached rows are read from the object store once, by the worker that trains on them, and every epoch is a new
    permutation of them (what ``stages.raytrain.run_worker`` iterates): every epoch holds every row once, in whole
    batches, in its own order, and a rerun with the same seed sees the same orders."""
    import hashlib

    from stages.ingest import EpochBatches, datasets_for
    from vlm.load import load_processor
    from vlm.training import Collator

    cfg = train.parse_config(_argv(shards, tmp_path / "run", "--max-steps", "1"))
    datasets, n_train, ingest = datasets_for(cfg)
    assert (n_train, ingest["mode"]) == (24, "memory")
    collate = Collator.for_loaded(load_processor(cfg.model, tiny=cfg.tiny or None))

    def passes() -> list[list[str]]:
        shard = datasets["train"].streaming_split(1)[0]  # what a Ray Train worker iterates
        epochs = EpochBatches(shard, ingest, batch_size=cfg.batch_size, seed=cfg.seed, rank=0)
        out = []
        for epoch in range(3):
            batches = list(epochs(epoch, collate))
            assert [len(b["labels"]) for b in batches] == [cfg.batch_size] * (24 // cfg.batch_size)
            out.append([hashlib.sha1(pixels.numpy().tobytes() + labels[labels != -100].numpy().tobytes()).hexdigest()
                        for b in batches for pixels, labels in zip(b["pixel_values"], b["labels"])])  # unpadded
        return out

    first = passes()
    assert all(sorted(p) == sorted(first[0]) and len(set(p)) == 24 for p in first)  # every row once an epoch
    assert len({tuple(p) for p in first}) == 3, "every epoch in its own order"
    assert passes() == first, "the same seed, the same orders"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("t*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    assert path.read_text().startswith("#")  # the first line is the command that runs it
    cfg = train.parse_config(["--config", str(path), "--data", "d", "--out", "o"])
    assert cfg.data == os.path.abspath("d") and cfg.out == os.path.abspath("o")  # local paths made absolute
