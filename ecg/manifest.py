"""The manifest of a prepared dataset: ``<out>/_manifest.json`` beside the ``<out>/<split>/*.parquet`` shards.

Side files start with ``_`` so that every prepared folder is an ordinary Parquet dataset: pyarrow.dataset,
pandas and Hugging Face ``datasets`` skip names starting with ``_`` or ``.`` (polars skips none: it reads
a split folder as it is, the whole folder through a ``**/*.parquet`` glob, as DuckDB always does). Folders
written before this convention hold ``manifest.json``; :func:`read_manifest` reads either. No Ray, no torch.

Example::

    manifest = read_manifest("./data/synth")
    manifest["counts"]["splits"]        # {"train": 1600, "val": 200, "test": 200}
    manifest["counts"]["tasks"]         # {"code15": {"train": 1600, "val": 200, "test": 200}}
    manifest["counts"]["failures"]      # {"unreadable_image": 2, "path_outside_root": 1}
"""

from __future__ import annotations

import json
from collections import Counter

from ecg import storage

MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # the name before side files took a leading underscore


def versions() -> dict:
    """Versions of the packages that decide the bytes of a shard."""
    from importlib import metadata

    out = {}
    for name in ("ecgvlm", "numpy", "pyarrow", "ray", "pillow", "wfdb", "h5py", "ijson"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _by_split(per_split: dict[str, dict], key: str) -> dict[str, dict[str, int]]:
    """``{split: {"labels": {label: n}}}`` -> ``{label: {split: n}}`` (splits where n == 0 left out)."""
    out: dict[str, dict[str, int]] = {}
    for split, counts in per_split.items():
        for name, n in counts[key].items():
            out.setdefault(name, {})[split] = n
    return dict(sorted(out.items()))


def build_manifest(out_uri: str, splits, *, info: dict) -> dict:
    """Counts per split, task and label, failures with their kinds, versions, plus ``info``.

    ``counts.labels`` and ``counts.tasks`` are ``{name: {split: n}}``; ``counts.failures`` is
    ``{kind: n}`` over the failure rows (``ecg.samples`` kinds: ``bad_json``, ``no_image``, ...);
    ``failures`` lists every record that could not be made, with its ``error`` and ``kind``; ``failed`` is
    their count. Example::

        build_manifest("./data/synth", ["train", "val", "test"], info={"source": "synthetic", "n": 10})
        # {"source": "synthetic", "n": 10, "rows": 10, "failed": 0, "counts": {"splits": {"train": 8, ...},
        #  "labels": {"AF": {"train": 1, ...}, ...}, "tasks": {"code15": {...}}, "failures": {}}, ...}
    """
    from ecg.samples import FAILED
    from ecg.shards import count_split, read_failures

    per_split = {s: count_split(storage.join(out_uri, s)) for s in splits}
    failures = read_failures(storage.join(out_uri, FAILED))
    return {
        **info,
        "rows": sum(c["rows"] for c in per_split.values()),
        "records": sum(c["records"] for c in per_split.values()),  # rows that are a record's first turn
        "failed": len(failures),
        "counts": {"splits": {s: c["rows"] for s, c in per_split.items()},
                   "labels": _by_split(per_split, "labels"),
                   "tasks": _by_split(per_split, "tasks"),
                   "failures": dict(sorted(Counter(f["kind"] for f in failures).items()))},
        "failures": failures,
        "versions": versions(),
    }


def manifest_uri(out_uri: str) -> str | None:
    """The manifest file of a prepared folder: ``_manifest.json``, else the older ``manifest.json``, else None."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        uri = storage.join(out_uri, name)
        if storage.exists(uri):
            return uri
    return None


def read_manifest(out_uri: str) -> dict:
    """The manifest of a prepared folder (either name); ``FileNotFoundError`` naming the folder if none."""
    uri = manifest_uri(out_uri)
    if uri is None:
        raise FileNotFoundError(f"{out_uri}: no {MANIFEST} (or {LEGACY_MANIFEST}); is it a prepared folder?")
    return json.loads(storage.read_text(uri))


def write_manifest(out_uri: str, manifest: dict) -> str:
    """Write ``<out>/_manifest.json``; returns its URI."""
    uri = storage.join(out_uri, MANIFEST)
    storage.write_text(uri, json.dumps(manifest, indent=2, default=str))
    return uri


def clear_output(out_uri: str, overwrite: bool) -> None:
    """Make ``out_uri`` ready for a new dataset: nothing to do when it holds no shards and no manifest; else its
    contents are deleted with ``overwrite``, and without it :class:`FileExistsError` says so."""
    if not storage.list_files(out_uri, ".parquet") and manifest_uri(out_uri) is None:
        return
    if not overwrite:
        raise FileExistsError(f"{out_uri} already holds shards or a manifest; pass --overwrite to replace them")
    fs, path = storage.resolve(out_uri)
    fs.delete_dir_contents(path)


def finish(out_uri: str, splits, *, info: dict, wall_s: float) -> dict:
    """Build and write ``_manifest.json`` for the shards just written (:func:`build_manifest`), the failure rows
    folded into it and their folder removed; ``n`` is the records attempted. Returns the manifest.
    Example: ``finish("./data/synth", ["train", "val"], info={"source": "synthetic"}, wall_s=12.5)["rows"]``."""
    from ecg.samples import FAILED

    manifest = build_manifest(out_uri, list(splits), info=info)
    if storage.exists(storage.join(out_uri, FAILED)):
        fs, path = storage.resolve(storage.join(out_uri, FAILED))
        fs.delete_dir(path)  # failures now live in the manifest; the folder would only confuse readers
    manifest["n"] = manifest["n"] or manifest["records"] + manifest["failed"]  # records attempted
    manifest["wall_s"] = round(wall_s, 2)
    write_manifest(out_uri, manifest)
    return manifest
