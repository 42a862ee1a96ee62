"""Parquet shards on a folder or ``s3://``: atomic writes, counting, ids already written, deduplicated reads.

No Ray, no torch: the pipelines call these on the driver, where only small columns (ids, labels, text) are
read; image bytes are never read here.

Example::

    writer = ShardWriter("s3://ecg/eval/predictions", rows_per_shard=256)
    writer.add(table); writer.close()             # <run>-00000.parquet, ... each visible only when complete
    done, duplicates = predicted_ids("s3://ecg/eval/predictions")
    frame = read_predictions("s3://ecg/eval/predictions")   # one row per id
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from ecg import storage


def strip_scheme(uri: str) -> str:
    """The path a pyarrow filesystem wants: ``s3://b/k`` -> ``b/k``; local paths unchanged."""
    return uri[len("s3://"):] if storage.is_s3(uri) else uri


def parquet_dataset(uri: str):
    """A ``pyarrow.dataset`` over the ``*.parquet`` files under ``uri`` (recursive), or None if there are none."""
    import pyarrow.dataset as pads

    fs, _ = storage.resolve(uri)
    files = [strip_scheme(f) for f in storage.list_files(uri, ".parquet")]
    return pads.dataset(files, filesystem=fs, format="parquet") if files else None


def file_batches(batch, *, columns: list[str], rows: int = 32):
    """A stage that reads Parquet shards as a stream: ``batch["path"]`` (file URIs, local or s3://) -> their rows,
    ``rows`` at a time (a generator of Arrow tables), so a reader holds one small batch, never a whole file.

    Ray Data's own Parquet read lists files in a task that takes a whole CPU; this stage runs on a fraction of
    one, which matters where long-lived actors (training workers, encoders) hold most CPUs of a small machine.
    Example: ``next(file_batches({"path": ["data/train/part-0.parquet"]}, columns=["id"])).num_rows`` -> ``32``.
    """
    for uri in batch["path"]:
        fs, path = storage.resolve(str(uri))
        with fs.open_input_file(path) as f:
            for chunk in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([chunk])


LATER_TURN = r"#t[1-9][0-9]*$"  # the id suffix of a record's turn k >= 1 (``<record id>#t<k>``)


def count_split(uri: str) -> dict:
    """``{"rows": n, "records": r, "labels": {label: n}, "tasks": {task: n}}`` of the sample shards under ``uri``.

    ``records`` counts rows that are a record's first turn (ids without a ``#t<k>`` suffix). Reads only the
    ``id``, ``labels`` and ``task`` columns (Parquet is columnar: no image bytes are read).
    """
    from collections import Counter

    import pyarrow.compute as pc

    data = parquet_dataset(uri)
    labels, tasks, rows, records = Counter(), Counter(), 0, 0
    for batch in data.to_batches(columns=["id", "labels", "task"]) if data is not None else ():
        rows += batch.num_rows
        later_turns = pc.sum(pc.match_substring_regex(batch.column("id"), LATER_TURN)).as_py() or 0
        records += batch.num_rows - later_turns
        labels.update(batch.column("labels").flatten().to_pylist())
        tasks.update(batch.column("task").to_pylist())
    return {"rows": rows, "records": records, "labels": dict(sorted(labels.items())),
            "tasks": dict(sorted(tasks.items()))}


def read_failures(uri: str) -> list[dict]:
    """``[{"id": ..., "error": ..., "kind": ...}]`` of the failure rows written under ``uri`` (from ``meta``), by id."""
    data = parquet_dataset(uri)
    if data is None:
        return []
    table = data.to_table(columns=["id", "meta"])
    metas = [json.loads(m or "{}") for m in table.column("meta").to_pylist()]
    out = [{"id": i, "error": m.get("error", ""), "kind": m.get("kind", "unreadable_record")}
           for i, m in zip(table.column("id").to_pylist(), metas)]
    return sorted(out, key=lambda f: f["id"])


def write_atomic(table: pa.Table, uri: str) -> None:
    """Write one Parquet file so that readers never see a partial one.

    Local disk: write ``.<name>.tmp`` beside it, then rename (atomic on POSIX). S3: a multipart upload
    becomes visible only when it completes, so the object is written directly.
    """
    fs, path = storage.resolve(uri)
    if storage.is_s3(uri):
        pq.write_table(table, path, filesystem=fs)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class ShardWriter:
    """Buffers Arrow batches and writes ``<uri>/<run>-<k:05d>.parquet`` every ``rows_per_shard`` rows.

    ``run`` is unique per writer (UTC time + random suffix), so reruns into the same folder never overwrite.
    A process killed mid-way loses only its unwritten buffer; those ids are simply predicted again.
    """

    def __init__(self, uri: str, *, rows_per_shard: int = 256, schema: pa.Schema | None = None):
        self.uri, self.rows_per_shard, self.schema = uri, rows_per_shard, schema
        self.run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self.buffer: list[pa.Table] = []
        self.buffered = self.written = 0

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        table = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
        if self.schema is not None:
            for field in self.schema:  # a nullable column the producer does not know yet is written as nulls
                if field.name not in table.column_names and field.nullable:
                    table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
            table = table.select(self.schema.names).cast(self.schema)
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer, promote_options="permissive")
        write_atomic(table, storage.join(self.uri, f"{self.run}-{self.written:05d}.parquet"))
        self.buffer, self.buffered, self.written = [], 0, self.written + 1

    def close(self) -> None:
        self.flush()


def aside_name(uri: str) -> str:
    """Where a torn shard is moved: ``<folder>/_<name>.corrupt``. pyarrow.dataset, pandas and ``datasets`` skip
    names starting with ``_``, and a ``*.parquet`` glob (polars, DuckDB) misses it: the folder stays readable."""
    folder, _, name = uri.rpartition("/")
    return f"{folder}/_{name}.corrupt" if folder else f"_{name}.corrupt"


def torn(exc: BaseException) -> bool:
    """True when reading a Parquet file failed because the file itself is broken (no footer, bad metadata:
    pyarrow's ``ArrowInvalid``), not because storage failed to answer (an ``OSError``: retried instead)."""
    return isinstance(exc, pa.ArrowInvalid)


def with_retries(fn, what: str, *, attempts: int = 4, wait_s: float = 0.5):
    """``fn()``, retried after a transient storage error (waits 0.5, 1, 2 s); a torn file's error is raised at
    once; the last error is raised naming ``what``."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - sorted below: torn files fail fast, storage errors retry
            if torn(exc):
                raise
            if attempt == attempts - 1:
                raise OSError(f"{what}: still failing after {attempts} attempts: {exc}") from exc
            print(f"warning: {what}: {exc}; retrying", file=sys.stderr)
            time.sleep(wait_s * 2**attempt)


def _readable(uri: str, fs=None) -> list[str]:
    """The ``*.parquet`` files under ``uri`` that have a valid footer. A file whose footer is torn (another
    writer killed mid-file) is moved aside (``aside_name``, warned); a transient read error is retried and, if
    it lasts, raised: a healthy shard is never moved aside because storage hiccupped."""
    fs = fs or storage.resolve(uri)[0]
    good = []
    for f in storage.list_files(uri, ".parquet"):
        try:
            with_retries(lambda: pq.read_metadata(strip_scheme(f), filesystem=fs), f)
            good.append(f)
        except Exception as exc:  # noqa: BLE001 - only a torn file is moved; anything else propagates
            if not torn(exc):
                raise
            aside = aside_name(f)
            print(f"warning: {f} is not a complete Parquet file ({exc}); moved to {aside}", file=sys.stderr)
            fs.move(strip_scheme(f), strip_scheme(aside))
    return good


def predicted_ids(uri: str) -> tuple[set[str], int]:
    """``(ids, duplicates)``: the ids in the prediction shards under ``uri`` and how many repeat."""
    fs, _ = storage.resolve(uri)
    ids: set[str] = set()
    total = 0
    for f in _readable(uri, fs):
        column = with_retries(lambda: pq.read_table(strip_scheme(f), columns=["id"], filesystem=fs), f)
        column = column.column("id").to_pylist()
        total += len(column)
        ids.update(column)
    return ids, total - len(ids)


def read_predictions(uri: str, columns: list[str] | None = None, first_files: int | None = None):
    """The prediction rows under ``uri`` (or its first ``first_files`` shards) as a DataFrame, one row per id.

    Should an id appear twice (two runs writing into one folder at once), ``ecg.rows.one_per_id`` decides:
    the first row without an error, shards in name (run time) order. Rows come sorted by id.
    """
    import pandas as pd

    from ecg.rows import PREDICTION_SCHEMA, one_per_id

    fs, _ = storage.resolve(uri)
    files = _readable(uri, fs)[:first_files]
    if not files:
        return PREDICTION_SCHEMA.empty_table().to_pandas()
    read = [with_retries(lambda f=f: pq.read_table(strip_scheme(f), columns=columns, filesystem=fs), f) for f in files]
    frame = pd.concat([t.to_pandas() for t in read], ignore_index=True)
    frame, _ = one_per_id(frame)
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def keep_rows(batch: pa.Table, *, done=(), tasks=None) -> pa.Table:
    """The rows of ``batch`` whose id is not in ``done`` and whose task is in ``tasks`` (None: any).

    ``done`` may be a set or, cheaper to ship to many tasks, a ``pyarrow`` string array.
    """
    import pyarrow.compute as pc

    done = done if isinstance(done, pa.Array) else pa.array(list(done), pa.string())
    mask = pc.invert(pc.is_in(batch.column("id"), value_set=done))
    if tasks:
        mask = pc.and_(mask, pc.is_in(batch.column("task"), value_set=pa.array(sorted(tasks), pa.string())))
    return batch.filter(mask)
