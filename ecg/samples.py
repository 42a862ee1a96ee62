"""Records -> sample rows: rendering, split assignment and failure rows (kinds of failure). No Ray, no torch.

Every ``*_batch`` function is one stage of ``ecgvlm prepare``: a pure function from a batch of references
(dict of columns or a pandas DataFrame) to a ``pyarrow.Table`` of :data:`ROW_SCHEMA` rows (the sample-row
contract of ``ecg/rows.py`` plus the ``split`` the row goes to). A reference that cannot be turned into a
sample becomes a *failure row*: ``split == FAILED``, no image, ``meta`` = ``{"error": "..."}``; the job
counts and lists it, never drops it.

Example::

    rows = synthetic_batch({"start": [0], "count": [4]}, seed=0, splits={"train": 0.8, "test": 0.2})
    rows.num_rows                          # 4
    rows.column("split").to_pylist()       # e.g. ["train", "train", "test", "train"]
    rows.column("answer").to_pylist()[0]   # e.g. "SB; 1dAVb"
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa

from ecg.rows import SAMPLE_SCHEMA

FAILED = "_failed"  # the pseudo-split of failure rows (leading "_": pyarrow dataset discovery skips it)

# Kinds of failure, counted apart in the manifest (``meta["kind"]`` of a failure row).
BAD_JSON = "bad_json"  # a JSON Lines line or a JSON array element that does not parse as an object
NO_IMAGE = "no_image"  # the record names no image
IMAGE_NOT_FOUND = "image_not_found"  # the image file cannot be opened
UNREADABLE_IMAGE = "unreadable_image"  # the bytes do not decode as an image
ABSOLUTE_PATH = "absolute_path"  # an image path that is absolute (or a URI) instead of relative to the root
OUTSIDE_ROOT = "path_outside_root"  # an image path that climbs out of the dataset's root (``..``, a symlink)
BAD_CONVERSATION = "bad_conversation"  # no (human, gpt) pair, or turns out of order
UNREADABLE_RECORD = "unreadable_record"  # anything else (a truncated WFDB file, an HDF5 of the wrong shape, ...)


class RecordError(ValueError):
    """A record that cannot become a sample, with the ``kind`` of failure the manifest counts it under."""

    def __init__(self, message: str, kind: str = UNREADABLE_RECORD):
        super().__init__(message)
        self.kind = kind


ROW_SCHEMA = SAMPLE_SCHEMA.append(pa.field("split", pa.string()))
DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class RenderOptions:
    """How a record becomes an image. ``augment`` is the probability (0-1) that a page is augmented."""

    width: int = 1100  # px
    height: int = 850  # px
    layout: str = "3x4"
    augment: float = 0.0
    pages: str = "clean"  # a page preset of ecg.pages (clean, varied, photo) or a mix: "clean=0.3,varied=0.7"
    image_format: str = "PNG"  # PNG or JPEG
    quality: int = 90  # JPEG quality
    extra: dict = field(default_factory=dict)  # passed on to ecg.render.render


# ---- splits --------------------------------------------------------------------------------------------


def parse_splits(text: str | dict | None) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (fractions sum to 1).

    Example: ``parse_splits("train=3,test=1") == {"train": 0.75, "test": 0.25}`` (weights are normalised).
    """
    if text is None or text == "":
        return dict(DEFAULT_SPLITS)
    items = text.items() if isinstance(text, dict) else (p.split("=", 1) for p in str(text).split(",") if p.strip())
    out: dict[str, float] = {}
    for item in items:
        if len(item) != 2:
            raise ValueError(f"split {text!r}: expected NAME=FRACTION pairs separated by commas")
        name, value = str(item[0]).strip(), float(item[1])
        if not name or name.startswith("_") or value < 0:
            raise ValueError(f"split {text!r}: bad entry {name!r}={value}")
        out[name] = value
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"split {text!r}: fractions must sum to more than 0")
    return {k: v / total for k, v in out.items()}


def assign_split(key: str, splits: dict[str, float], seed: int = 0) -> str:
    """The split of a patient (or record) ``key``: a deterministic hash of ``(seed, key)`` into ``splits``.

    The same patient always lands in the same split, whichever worker renders it.
    Example: ``assign_split("patient-17", {"train": 0.8, "test": 0.2}, seed=0)`` -> ``"train"`` or ``"test"``.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    cumulative = 0.0
    for name, fraction in splits.items():
        cumulative += fraction
        if u < cumulative:
            return name
    return list(splits)[-1]  # rounding: u just below 1


def fold_split(fold, splits: dict[str, float]) -> str | None:
    """PTB-XL's recommended split: ``strat_fold`` 9 -> val, 10 -> test, 1-8 -> train (when those splits exist)."""
    if fold is None or not {"train", "val", "test"} <= set(splits):
        return None
    fold = int(fold)
    return "test" if fold == 10 else "val" if fold == 9 else "train"


def _unit(seed: int, key: str, salt: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}:{key}".encode()).digest()[:8], "big") / 2**64


# ---- rows ----------------------------------------------------------------------------------------------


def render_page(record, options: RenderOptions, *, seed: int = 0) -> tuple[bytes, dict]:
    """The record's page, encoded, and its recipe (preset, seed and every drawn choice, for the row's meta).

    The preset is drawn per record from ``options.pages``; a ``clean`` page is augmented with probability
    ``options.augment``. Everything is seeded by ``(seed, record.id)``, so a rerun draws the same pages.
    """
    from ecg import pages

    preset = pages.pick_preset(pages.presets_mix(options.pages), _unit(seed, record.id, "preset"))
    augment = options.augment > 0 and _unit(seed, record.id, "augment") < options.augment
    page_seed = int(_unit(seed, record.id, "render-seed") * 2**31)
    if preset == "clean" and options.extra:
        from ecg import render

        data = render.render_bytes(record, width=options.width, height=options.height, layout=options.layout,
                                   augment=augment, seed=page_seed, format=options.image_format,
                                   quality=options.quality, **options.extra)
        return data, {"preset": "clean", "seed": page_seed, "layout": options.layout, "augment": augment}
    return pages.page_bytes(record, preset, seed=page_seed, width=options.width, height=options.height,
                            layout=options.layout, augment=augment, format=options.image_format,
                            quality=options.quality)


def render_bytes(record, options: RenderOptions, *, seed: int = 0) -> bytes:
    """The record's paper page, encoded (PNG or JPEG bytes): :func:`render_page` without the recipe."""
    return render_page(record, options, seed=seed)[0]


def sample_row(*, id: str, task: str, image: bytes | None, question: str, answer: str, labels=(),
               source: str, split: str, meta: dict | None = None) -> dict:
    """One :data:`ROW_SCHEMA` row as a dict (``meta`` is stored as a JSON string)."""
    return {"id": str(id), "task": task, "image": image, "question": question, "answer": answer,
            "labels": [str(label) for label in labels], "source": source,
            "meta": json.dumps(meta or {}, sort_keys=True, default=str), "split": split}


def failure_row(id: str, error: BaseException | str, *, task: str = "", source: str = "", meta=None,
                kind: str | None = None) -> dict:
    """A row that stands for a reference that could not be made into a sample (``split == FAILED``).

    ``meta`` holds the ``error`` message and its ``kind`` (``error.kind`` for a :class:`RecordError`).
    """
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    kind = kind or getattr(error, "kind", UNREADABLE_RECORD)
    return sample_row(id=id, task=task, image=None, question="", answer="", source=source, split=FAILED,
                      meta={**(meta or {}), "error": message, "kind": kind})


def record_row(record, *, task, source: str, split: str, options: RenderOptions, seed: int = 0) -> dict:
    """A :class:`ecg.record.Record` -> a sample row: rendered page, the task's question and gold answer.

    ``task`` is a ``ecgtasks.Task``; the answer is ``task.format_answer(record.labels)``
    (``"NORM"``, ``"ABNORMAL"`` or labels joined by ``"; "``).
    """
    image, page = render_page(record, options, seed=seed)
    meta = {**record.meta, "patient_id": record.patient_id, "fs": record.fs,
            "duration_s": round(record.duration, 3), "split": split, "record": record.id, "page": page}
    if str(record.meta.get("generator", "")).startswith("ecg.synth"):  # its measurements, asked after the answer
        from ecg.synth import followups

        meta["followups"] = followups(record.meta)
    return sample_row(id=record.id, task=task.name, image=image,
                      question=task.question, answer=task.format_answer(record.labels), labels=record.labels,
                      source=source, split=split, meta=meta)


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _guard(ref_id: str, make, *, task: str, source: str):
    """``make()``, or a failure row naming ``ref_id`` when it raises (the job goes on)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - any bad record is counted, never fatal
        error = f"{type(exc).__name__}: {exc}"
        error = error if ref_id in error else f"{ref_id}: {error}"  # the message must name the record
        return failure_row(ref_id, error, task=task, source=source, kind=getattr(exc, "kind", UNREADABLE_RECORD))


# ---- stages ---------------------------------------------------------------------------------------------


def _columns(batch) -> dict[str, list]:
    """A Ray/pandas/dict batch -> dict of plain Python lists."""
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return {c: batch[c].tolist() for c in batch.columns}
    return {k: list(v.tolist() if hasattr(v, "tolist") else v) for k, v in batch.items()}


def synthetic_records(start: int, count: int, seed: int = 0):
    """Records ``start .. start+count-1`` of ``ecg.synth.generate(n, seed)``, made without the ones before.

    Example: ``[r.id for r in synthetic_records(3, 2)]`` -> ``["synth-0-000003", "synth-0-000004"]``.
    """
    from ecg import synth

    return (synth.record(i, seed) for i in range(start, start + count))


def synthetic_batch(batch, *, seed: int = 0, task: str = "code15", splits=None,
                    options: RenderOptions | None = None) -> pa.Table:
    """Generate and render synthetic records. ``batch`` columns: ``start``, ``count`` (record index ranges).

    Rows equal those of ``ecg.synth.generate(n, seed)``; the split is drawn per patient (groups of three).
    """
    from ecgtasks import get_task

    task_, splits, options = get_task(task), parse_splits(splits), options or RenderOptions()
    cols, rows = _columns(batch), []
    for start, count in zip(cols["start"], cols["count"]):
        start, count = int(start), int(count)
        made = 0
        try:
            for record in synthetic_records(start, count, seed):
                split = assign_split(record.patient_id, splits, seed)
                rows.append(_guard(record.id, lambda: record_row(record, task=task_, source="synthetic",
                                                                 split=split, options=options, seed=seed),
                                   task=task_.name, source="synthetic"))
                made += 1
        except Exception as exc:  # noqa: BLE001 - the generator failed: one failure row per missing record
            rows += [failure_row(f"synth-{seed}-{i:06d}", f"generator, record {i}: {type(exc).__name__}: {exc}",
                                 task=task_.name, source="synthetic") for i in range(start + made, start + count)]
    return to_table(rows)


def synthetic_references(n: int, chunk: int = 50) -> list[dict]:
    """``[{"start": 0, "count": 50}, {"start": 50, "count": 50}, ...]`` covering ``n`` records."""
    return [{"start": s, "count": min(chunk, n - s)} for s in range(0, n, chunk)]


# ---- signal datasets: PTB-XL (WFDB) and CODE-15% (HDF5) ---------------------------------------------------


def _csv(uri: str, needed: tuple[str, ...], **kwargs):
    """A CSV as a DataFrame; ``ValueError`` naming the file and every missing column."""
    import io

    import pandas as pd

    from ecg import storage

    frame = pd.read_csv(io.BytesIO(storage.read_bytes(uri)), **kwargs)
    missing = [c for c in needed if c not in frame.columns and c != frame.index.name]
    if missing:
        raise ValueError(f"{uri}: missing column(s) {missing}; has {list(frame.columns)}")
    return frame


def ptbxl_references(root: str, *, sampling_rate: int = 500) -> list[dict]:
    """One reference per row of ``ptbxl_database.csv``: WFDB path, patient, superclass labels, strat_fold.

    Labels come from ``ecg.readers.ptbxl_superclasses`` over ``scp_statements.csv``; a row whose
    ``scp_codes`` does not parse becomes a reference carrying its ``error``.
    """
    import ast

    from ecg import readers, storage

    column = "filename_hr" if sampling_rate == 500 else "filename_lr"
    db = _csv(storage.join(root, "ptbxl_database.csv"), ("ecg_id", "patient_id", "scp_codes", "strat_fold", column))
    stm = _csv(storage.join(root, "scp_statements.csv"), ("diagnostic", "diagnostic_class"), index_col=0)
    diag = stm[stm["diagnostic"] == 1]["diagnostic_class"].to_dict()
    refs = []
    for row in db.to_dict("records"):
        rid, error, labels, codes = f"ptbxl-{int(row['ecg_id'])}", "", [], {}
        try:
            codes = ast.literal_eval(str(row["scp_codes"]))
            labels = list(readers.ptbxl_superclasses(codes, diag))
        except (ValueError, SyntaxError) as exc:
            error = f"{rid}: bad scp_codes {row['scp_codes']!r}: {exc}"
        patient = None if row["patient_id"] != row["patient_id"] else str(int(row["patient_id"]))
        meta = {"ecg_id": int(row["ecg_id"]), "strat_fold": int(row["strat_fold"]), "scp_codes": codes,
                "report": str(row.get("report", ""))}
        refs.append({"kind": "ptbxl", "id": rid, "path": storage.join(root, str(row[column])), "index": -1,
                     "patient_id": patient, "labels": labels, "fold": int(row["strat_fold"]),
                     "row": json.dumps(meta, default=str), "error": error})
    return refs


def code15_references(root: str) -> list[dict]:
    """One reference per exam in the ``*.hdf5`` files under ``root`` (exam ids read here; tracings later).

    The ``exams.csv`` row travels with the reference (labels, patient). A file that cannot be opened or
    lacks ``exam_id`` is one reference carrying its error; an exam missing from ``exams.csv`` too.
    The all-zero padding row CODE-15 files end with (exam_id 0) is not an exam and is skipped.
    """
    import h5py
    import numpy as np

    from ecg import storage

    needed = ("exam_id", "patient_id", "1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
    exams = _csv(storage.join(root, "exams.csv"), needed).set_index("exam_id", drop=False)
    refs = []
    for path in storage.list_files(root, ".hdf5") + storage.list_files(root, ".h5"):
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        try:
            fs, p = storage.resolve(path)
            with h5py.File(fs.open_input_file(p), "r") as f:
                ids = np.asarray(f["exam_id"][:]).astype(np.int64)  # (N,)
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... for a bad file
            refs.append({"kind": "code15", "id": stem, "path": path, "index": -1, "patient_id": None,
                         "labels": [], "fold": None, "row": "{}",
                         "error": f"{stem}: cannot read exam ids from {path}: {type(exc).__name__}: {exc}"})
            continue
        for index, exam_id in enumerate(ids.tolist()):
            if exam_id == 0:
                continue  # the documented padding row
            known = exam_id in exams.index
            row = exams.loc[exam_id].to_dict() if known else {}
            refs.append({"kind": "code15", "id": f"code15-{exam_id}", "path": path, "index": index,
                         "patient_id": None if not known else str(int(row["patient_id"])), "labels": [],
                         "fold": None, "row": json.dumps(row, default=str),
                         "error": "" if known else f"code15-{exam_id}: not in exams.csv ({path}[{index}])"})
    return refs


def signal_references(source: str, root: str, task: str | None = None) -> list[dict]:
    """References of a signal dataset: ``source`` is ``"ptbxl"``, ``"code15"`` or ``"wfdb"`` (labelled for ``task``)."""
    if source == "ptbxl":
        return ptbxl_references(root)
    if source == "code15":
        return code15_references(root)
    if source == "wfdb":
        from ecg.challenge import references

        return references(root, task)
    raise ValueError(f"unknown signal source {source!r}")


def load_reference(ref: dict, task: str = "code15"):
    """Read the record a reference points to (``ecg.readers``), labelled and keyed as the reference says
    (a ``wfdb`` reference: labelled for ``task`` from its SNOMED-CT codes)."""
    import pandas as pd

    from ecg import challenge, readers

    if ref.get("error"):
        raise ValueError(ref["error"])
    if ref["kind"] == "wfdb":
        return challenge.read_record(ref["path"], task=task, rid=ref["id"])
    if ref["kind"] == "ptbxl":
        record = readers.read_wfdb(ref["path"])
        record.labels, record.patient_id = tuple(ref["labels"]), ref["patient_id"]
        record.meta.update(json.loads(ref["row"]))
    else:
        row = json.loads(ref["row"])
        exams = pd.DataFrame([row]).set_index("exam_id", drop=False)
        record = readers.read_code15_hdf5(ref["path"], int(ref["index"]), exams=exams)
        if record.id != ref["id"]:
            raise ValueError(f"{ref['id']}: {ref['path']}[{ref['index']}] holds {record.id}")
    record.id = ref["id"]
    return record


def signal_batch(batch, *, task: str | None = None, seed: int = 0, splits=None, folds: bool = True,
                 options: RenderOptions | None = None) -> pa.Table:
    """Read and render PTB-XL / CODE-15 references (columns of :func:`ptbxl_references` rows).

    Split: PTB-XL's ``strat_fold`` (9 val, 10 test) when ``folds`` and the splits are train/val/test,
    else the hash of the patient id (the record id when there is none).
    """
    from ecgtasks import get_task

    splits, options = parse_splits(splits), options or RenderOptions()
    cols = _columns(batch)
    rows = []
    for i in range(len(cols["id"])):
        ref = {k: v[i] for k, v in cols.items()}
        task_ = get_task(task or ("ptbxl-super" if ref["kind"] == "ptbxl" else "code15"))

        def make(ref=ref, task_=task_):
            record = load_reference(ref, task_.name)
            split = (fold_split(ref["fold"], splits) if folds and ref["kind"] == "ptbxl" else None) \
                or assign_split(record.patient_id or record.id, splits, seed)
            return record_row(record, task=task_, source=ref["kind"], split=split, options=options, seed=seed)

        rows.append(_guard(ref["id"], make, task=task_.name, source=ref["kind"]))
    return to_table(rows)
