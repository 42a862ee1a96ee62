"""Where a figure's rows come from, and whether a model saw them in training.

Every evaluation result names its data: the source of the references, real or synthetic, the split and the page
preset (:func:`describe`). A run on synthetic pages never reads as a CODE-15 result (:func:`comparable`).

A training run records the ids it trained on beside its export, compactly: sorted 64-bit hashes of the ids
(8 bytes an id: 19 KB for the demo's 2,400 rows, 9 MB for ECGInstruct's 1.16 M). Evaluation checks its ids against
them (:func:`overlap`) and warns when they meet: evaluating on training rows reads as a result and is not one.

Example::

    from ecg.provenance import describe, write_training_ids, overlap
    describe("./data/synth", "test")["label"]        # 'synthetic ECGs (ecg.synth, seed 0), clean pages, test split'
    write_training_ids("./runs/tiny/export", ["synth-0-000001", "synth-0-000002"], data="./data/synth", split="train")
    overlap("./runs/tiny/export", ["synth-0-000002", "x"])["n"]   # 1
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from ecg import storage

TRAINING_IDS = "training_ids.npz"
# Sources whose signals or pages are real recordings (what prepare reads); "synthetic" is the generator.
REAL_SOURCES = {"ptbxl", "code15", "ecgbench", "ecginstruct", "wfdb", "mimic-ecg", "clinical", "images"}


def describe(data_uri: str, split: str | None, *, task: str | None = None) -> dict:
    """``{"source", "real", "split", "pages", "uri", "label"}`` of the references under ``data_uri``/``split``,
    from the folder's ``_manifest.json`` (``source`` "unknown" without one)."""
    from ecg.manifest import manifest_uri

    uri = manifest_uri(data_uri)
    manifest = json.loads(storage.read_text(uri)) if uri else {}
    source = manifest.get("source") or "unknown"
    config = manifest.get("config") or {}
    pages = config.get("pages") or ("clean" if source == "synthetic" else None)
    real = None if source == "unknown" else source in REAL_SOURCES
    split_name = split or "(all splits)"
    if source == "synthetic":
        what = f"synthetic ECGs (ecg.synth, seed {manifest.get('seed', config.get('seed'))}), {pages} pages"
    elif source == "ecgbench":
        what = "ECGBench pages (real recordings)"
    elif real:
        what = f"real ECGs ({source}{', ' + str(pages) + ' pages' if pages else ''})"
    else:
        what = f"data of unknown origin ({data_uri})"
    return {"source": source, "real": real, "split": split_name, "pages": pages, "uri": data_uri,
            "task": task, "label": f"{what}, {split_name} split"}


def comparable(data: dict | None, dataset: str = "code15") -> bool:
    """Whether a run on ``data`` may stand in ``dataset``'s published table as a result on that dataset: real
    recordings of that dataset (its own files, or ECGBench's pages of it), never synthetic or other data."""
    if not data or not data.get("real"):
        return False
    return data.get("source") == dataset or (data.get("source") == "ecgbench" and data.get("task") == dataset)


def _hash_each(ids) -> np.ndarray:
    """The 64-bit hash (blake2b) of each id, in order: (n,) uint64."""
    return np.asarray([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                       for i in ids], dtype=np.uint64)


def _hashes(ids) -> np.ndarray:
    """Sorted unique 64-bit hashes of the ids: (n,) uint64."""
    return np.unique(_hash_each(ids))


def write_training_ids(export_uri: str, ids, *, data: str, split: str) -> str:
    """Record the training rows' ids beside an export (``training_ids.npz``); returns its URI."""
    hashes = _hashes(ids)
    buf = io.BytesIO()
    np.savez_compressed(buf, hashes=hashes, meta=np.frombuffer(
        json.dumps({"data": data, "split": split, "n": int(hashes.size), "hash": "blake2b-64"}).encode(), np.uint8))
    uri = storage.join(export_uri, TRAINING_IDS)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def training_ids(model_uri: str) -> tuple[np.ndarray, dict] | None:
    """``(hashes, meta)`` recorded beside a model export, or None (a preset, a hub id, an older export)."""
    uri = storage.join(model_uri, TRAINING_IDS)
    try:
        if not storage.exists(uri):
            return None
        with np.load(io.BytesIO(storage.read_bytes(uri))) as z:
            return z["hashes"], json.loads(bytes(z["meta"]).decode())
    except (OSError, ValueError):
        return None


def overlap(model_uri: str, ids) -> dict | None:
    """``{"n": ids seen in training, "of": ids checked, "examples": up to 5, "trained_on": meta}`` or None when the
    model records no training ids."""
    got = training_ids(model_uri)
    if got is None:
        return None
    hashes, meta = got
    ids = [str(i) for i in ids]
    if not ids:
        return {"n": 0, "of": 0, "examples": [], "trained_on": meta}
    h = _hash_each(ids)
    pos = np.clip(np.searchsorted(hashes, h), 0, max(len(hashes) - 1, 0))
    hit = (hashes[pos] == h) if len(hashes) else np.zeros(len(h), bool)
    return {"n": int(hit.sum()), "of": len(ids), "examples": [i for i, x in zip(ids, hit) if x][:5],
            "trained_on": meta}


def annotate(results: dict, *, data_uri: str, split: str | None, model: str, ids_by_task: dict[str, list]) -> list[str]:
    """Add ``data`` (what the references are) and ``training_overlap`` to each task's result; returns the warnings
    to print (also appended to the task's ``warnings``, so the report carries them)."""
    out = []
    for task, result in results.items():
        result["data"] = describe(data_uri, split, task=task)
        seen = overlap(model, ids_by_task.get(task, [])) if "://" in model or storage.exists(model) else None
        result["training_overlap"] = seen
        if seen and seen["n"]:
            warning = (f"{seen['n']} of {seen['of']} evaluation ids were in the model's training data "
                       f"({seen['trained_on'].get('data')}, {seen['trained_on'].get('split')} split), e.g. "
                       f"{', '.join(seen['examples'][:3])}: these figures are not a held-out result")
            result.setdefault("warnings", []).append(warning)
            out.append(f"{task}: {warning}")
    return out
