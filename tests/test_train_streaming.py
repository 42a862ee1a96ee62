"""Streamed training ingest keeps the object store bounded: 2 DDP workers train for an epoch on more encoded rows
than a deliberately small object store (80 MiB) could hold if they were materialized, and nothing spills.

``ecgvlm train --num-workers 2`` runs as a laptop user types it: it starts its own local Ray (2 CPUs, the small
store) with the default CPU shares, which do not fit (2 x 1 + 0.5 > 2) and are scaled down, saying so; two DDP
workers on gloo train and their loss falls.

The rows are ordinary sample shards (real rendered pages); the tiny model reads them at 896 px (0.77 MiB a row once
encoded), so 208 rows are ~180 MiB encoded.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PlasmaPeak

from ecg.render import render, to_bytes
from ecg.rows import SAMPLE_SCHEMA
from ecg.synth import generate
from metrics.tasks import CODE15
from pipelines import train

pytestmark = pytest.mark.slow
STORE_MIB = 80
ROWS = 208
TINY = "{image_size: 896, patch_size: 64}"  # 0.77 MiB per encoded row (one uint8 channel), 49 image tokens


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """ROWS train rows over 4 shards (12 distinct pages, each under many ids), 4 val rows."""
    root = tmp_path_factory.mktemp("shards")
    pages = [(to_bytes(render(r)), r.labels) for r in generate(12, seed=3)]
    for split, n in (("train", ROWS), ("val", 4)):
        (root / split).mkdir()
        rows = [{"id": f"{split}-{k}", "task": "code15", "image": pages[k % 12][0], "question": CODE15.question,
                 "answer": CODE15.format_answer(pages[k % 12][1]), "labels": list(pages[k % 12][1]),
                 "source": "synthetic", "meta": "{}"} for k in range(n)]
        for part in range(4 if split == "train" else 1):
            chunk = rows[part::4] if split == "train" else rows
            pq.write_table(pa.Table.from_pylist(chunk, schema=SAMPLE_SCHEMA), root / split / f"part-{part}.parquet")
    return str(root)


def test_two_workers_with_defaults_stream_an_epoch_bigger_than_the_store(shards, tmp_path, capsys):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "run"
    argv = ["--model", "tiny", "--tiny", TINY, "--data", shards, "--out", str(out), "--finetune", "full",
            "--lr", "1e-3", "--batch-size", "8", "--num-workers", "2", "--ray-cpus", "2",
            "--object-store-gb", str(STORE_MIB / 1024), "--threads-per-worker", "1", "--epochs", "1",
            "--val-rows", "4", "--validate-every", "1000", "--checkpoint-every", "1000", "--log-every", "2"]
    with PlasmaPeak() as store:
        assert train.main(argv) == 0
    assert "scaled to fit the local Ray" in capsys.readouterr().out
    assert not ray.is_initialized()  # the Ray it started is stopped
    summary = json.loads((out / "train_summary.json").read_text())
    row_mib = summary["ingest_row_mib"]
    materialized_mib = row_mib * ROWS
    print(f"\nstreamed: {ROWS} rows x {row_mib:.2f} MiB = {materialized_mib:.0f} MiB if materialized; object store "
          f"{STORE_MIB} MiB, peak {store.peak_mib} MiB over {store.samples} samples, spilled {store.spilled_mib} MiB")
    assert summary["ingest"] == "stream"  # chosen by size: the cache would not fit a quarter of the store
    assert summary["samples"] == ROWS // 16 * 16 and summary["failed_rows"] == 0  # one epoch, every row seen
    assert materialized_mib > 2 * STORE_MIB
    assert store.samples >= 10 and 0 < store.peak_mib < STORE_MIB and not store.spilled
    assert summary["workers"] == 2
    losses = [loss for _, loss, _ in summary["losses"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
