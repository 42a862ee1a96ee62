"""Prediction shards under storage errors: a transient error is retried and never moves a healthy shard aside;
only a file whose footer is really torn is moved aside (``_<name>.corrupt``). The filesystem is a real local one (fsspec's)
behind pyarrow, failing its first opens the way a flaky object store does."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from ecg import shards
from ecg.rows import one_per_id


class Flaky(LocalFileSystem):
    """The local disk, except that each file's first ``failures`` opens fail with a connection error."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.seen = failures, {}

    def _open(self, path, *args, **kwargs):
        self.seen[path] = self.seen.get(path, 0) + 1
        if self.seen[path] <= self.failures:
            raise ConnectionResetError(f"connection reset by peer reading {path}")
        return super()._open(path, *args, **kwargs)


def _shard(folder, name: str) -> str:
    path = os.path.join(folder, name)
    pq.write_table(pa.table({"id": ["a"], "error": pa.array([None], pa.string())}), path)
    return path


def test_transient_errors_are_retried_and_never_move_a_shard(tmp_path):
    good = _shard(tmp_path, "run-00000.parquet")
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(Flaky(failures=2)))
    assert shards._readable(str(tmp_path), fs) == [good]
    assert os.listdir(tmp_path) == ["run-00000.parquet"]  # nothing moved aside

    always = pafs.PyFileSystem(pafs.FSSpecHandler(Flaky(failures=100)))
    with pytest.raises(OSError, match=r"run-00000.parquet: still failing after 4 attempts: .*connection reset"):
        shards.with_retries(lambda: pq.read_metadata(good, filesystem=always), good, wait_s=0.01)
    with pytest.raises(OSError):
        shards._readable(str(tmp_path), always)
    assert os.listdir(tmp_path) == ["run-00000.parquet"]  # a lasting outage moves nothing


def test_only_a_torn_footer_is_moved_aside(tmp_path):
    good = _shard(tmp_path, "run-00000.parquet")
    torn = tmp_path / "run-00001.parquet"
    torn.write_bytes(open(good, "rb").read()[:-10])  # a writer killed before the footer was complete
    assert shards._readable(str(tmp_path)) == [good]
    assert os.path.exists(shards.aside_name(str(torn))) and not torn.exists()


def test_one_row_per_id_prefers_the_answer_then_the_first():
    import pandas as pd

    frame = pd.DataFrame({"id": ["a", "a", "b", "b", "c"], "prediction": ["", "SB", "ST", "AF", ""],
                          "error": ["record a: out of memory", None, None, None, "record c: bad image"]})
    kept, dropped = one_per_id(frame)
    assert list(zip(kept["id"], kept["prediction"])) == [("a", "SB"), ("b", "ST"), ("c", "")] and dropped == 2
    plain, dropped = one_per_id(frame.drop(columns="error"))  # reference-output JSONL: no error column
    assert list(plain["prediction"]) == ["", "ST", ""] and dropped == 2
