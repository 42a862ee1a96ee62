"""Upload parsing and validation for the online endpoint: pure functions, no Ray, no HTTP.

An upload is a list of files ``(filename, bytes)`` plus text fields. It becomes an :class:`Upload`:
PNG/JPEG bytes the model reads, the task, the question and a short description of the input. Images
pass through unchanged once their header and pixels are checked; signals (CSV, ``.npy``, a WFDB
``.hea`` + ``.dat`` pair, a CODE-15 HDF5 file with an ``index``) are read with ``ecg.readers``, clinical exports
(DICOM waveforms, MUSE / CardioSoft / HL7 aECG / Philips Sierra XML, told apart by content) with ``ecg.clinical``,
and drawn with ``ecg.render``, the same renderer the batch job uses.

Everything wrong with an upload raises :class:`InputError`, whose ``status`` is the HTTP code
(400 malformed, 413 too large, 415 unknown type, 422 a well-formed but impossible value).

Example::

    up = parse_upload([("ecg.png", png_bytes)], {"task": "code15"}, Limits())
    up.kind, up.task, up.meta       # ("png", "code15", {"width": 1100, "height": 850})
    up = parse_upload([("x.csv", csv_bytes)], {"sampling_rate": "500"}, Limits())
    up.kind, up.meta["leads"]       # ("csv", 12)
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
NPY_MAGIC, HDF5_MAGIC = b"\x93NUMPY", b"\x89HDF\r\n\x1a\n"
FIELDS = ("task", "question", "sampling_rate", "fs", "leads", "index")  # the text fields /v1/diagnose takes
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # WFDB names written to disk


class Limits(BaseModel):
    """What the endpoint accepts; everything else is a 4xx. The YAML ``limits:`` block of serving/config.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(10 * 2**20, gt=0, description="request body cap, bytes (all files together)")
    max_files: int = Field(2, ge=1, description="files per upload (a WFDB pair is 2)")
    max_pixels: int = Field(20_000_000, gt=0, description="width x height cap of an image, checked from the header")
    fs_range: tuple[float, float] = Field((50.0, 5000.0), description="allowed sampling rates, Hz (inclusive)")
    lead_counts: tuple[int, ...] = Field((12,), description="allowed numbers of leads in a signal")
    seconds_range: tuple[float, float] = Field((2.0, 120.0), description="allowed signal duration, s")
    max_question_chars: int = Field(4000, gt=0, description="longest question text, characters")
    max_new_tokens: int = Field(256, gt=0, description="cap on max_tokens of a chat request")


class InputError(ValueError):
    """A bad upload. ``status`` is the HTTP status to answer with; ``field`` names the culprit if one."""

    def __init__(self, message: str, *, status: int = 422, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass
class Upload:
    """A validated upload: ``image`` PNG/JPEG bytes for the model, the task name and question to ask."""

    kind: str  # "png" | "jpeg" | "csv" | "npy" | "wfdb" | "hdf5" | "dicom" | "xml"
    image: bytes
    task: str
    question: str
    meta: dict = field(default_factory=dict)  # image: width/height; signal: leads, fs (Hz), seconds


def sniff(name: str, data: bytes) -> str:
    """The kind of one uploaded file from its magic bytes, then its extension.

    Returns "png", "jpeg", "npy", "hdf5", "dicom", "xml", "hea", "dat" or "csv"; raises 415 otherwise.
    Example: ``sniff("a.bin", b"\\x89PNG\\r\\n\\x1a\\n...") == "png"``.
    """
    for magic, kind in ((PNG_MAGIC, "png"), (JPEG_MAGIC, "jpeg"), (NPY_MAGIC, "npy"), (HDF5_MAGIC, "hdf5")):
        if data.startswith(magic):
            return kind
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "xml"  # MUSE, CardioSoft, HL7 aECG or Philips Sierra: ecg.clinical tells them apart by the root
    ext = Path(name or "").suffix.lower()
    if ext == ".dat":
        return "dat"  # WFDB sample files are raw binary: only the name says what they are
    if ext in (".hea", ".csv", ".txt", ""):
        try:
            text = data[:4096].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and ext == ".hea":
            return "hea"
        if text is not None and re.search(r"[-+]?\d", text):
            return "csv"
    raise InputError(
        f"file {name!r} is neither a PNG/JPEG image nor a signal (CSV, .npy, WFDB .hea+.dat, HDF5, DICOM, "
        "MUSE / CardioSoft / aECG / Sierra XML)",
        status=415, field="file",
    )


def check_image(data: bytes, limits: Limits, *, name: str = "image") -> dict:
    """Validate PNG/JPEG bytes without trusting them; returns ``{"width", "height", "format"}`` (pixels).

    The size comes from the header before any pixel is decoded, so a decompression bomb (a few KB
    that inflate to gigapixels) is refused at ``Image.open``; only then are the pixels decoded.
    Example: ``check_image(png, Limits())["width"] == 1100``.
    """
    from ecg.images import ImageError, decode_image

    try:
        image = decode_image(data, name, mode=None, max_pixels=limits.max_pixels, formats=("PNG", "JPEG"))
    except ImageError as err:
        raise InputError(str(err), status=413 if err.too_large else 400, field=name) from None
    width, height = image.size
    return {"width": width, "height": height, "format": image.format.lower()}


def parse_data_uri(uri: str, limits: Limits) -> bytes:
    """The bytes of a ``data:image/png;base64,...`` URI; the server fetches nothing from the network.

    Example: ``parse_data_uri("data:image/png;base64,iVBORw0...", Limits())[:4] == b"\\x89PNG"``.
    """
    match = re.match(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", uri or "")
    if not match:
        scheme = (uri or "")[:16]
        raise InputError(f"image_url must be a base64 data: URI (got {scheme!r}...); URLs are not fetched",
                         status=400, field="image_url")
    payload = uri[match.end():]
    if len(payload) * 3 // 4 > limits.max_upload_bytes:
        raise InputError(f"image_url holds over {limits.max_upload_bytes} bytes", status=413, field="image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(f"image_url is not valid base64: {err}", status=400, field="image_url") from None


def _number(fields: dict, names: tuple[str, ...], kind=float):
    for name in names:
        raw = fields.get(name)
        if raw is not None and str(raw).strip() != "":
            try:
                return kind(str(raw).strip())
            except ValueError:
                raise InputError(f"{name} must be a number, got {raw!r}", status=422, field=name) from None
    return None


def check_fs(fs: float, limits: Limits, *, field_name: str = "sampling_rate") -> float:
    """``fs`` (Hz) if it lies in ``limits.fs_range``; 422 otherwise. Example: ``check_fs(500, Limits()) == 500``."""
    low, high = limits.fs_range
    if not (low <= fs <= high):  # also false for NaN
        raise InputError(f"{field_name} {fs} Hz is impossible for an ECG; allowed {low:g}-{high:g} Hz",
                         status=422, field=field_name)
    return float(fs)


def check_record(record, limits: Limits) -> dict:
    """Check a read signal's lead count, rate, length and values; returns its description for the answer."""
    import numpy as np

    n_leads = int(record.signal.shape[0])
    if n_leads not in limits.lead_counts:
        raise InputError(f"signal has {n_leads} leads {list(record.leads)}; expected {list(limits.lead_counts)}",
                         status=422, field="leads")
    check_fs(record.fs, limits)
    seconds = record.n_samples / record.fs
    low, high = limits.seconds_range
    if not (low <= seconds <= high):
        raise InputError(f"signal lasts {seconds:.2f} s; allowed {low:g}-{high:g} s", status=422, field="file")
    if not np.isfinite(record.signal).all():
        raise InputError("signal contains NaN or infinite samples", status=422, field="file")
    return {"leads": n_leads, "lead_names": list(record.leads), "fs": record.fs, "seconds": round(seconds, 3)}


def _wfdb_names(header: bytes) -> tuple[str, str]:
    """(record name, sample file name) from a WFDB header; both must be plain file names."""
    lines = [ln for ln in header.decode("utf-8", "replace").splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) < 2:
        raise InputError("WFDB header has no signal lines", status=422, field="file")
    record = lines[0].split()[0].split("/")[0]
    files = {ln.split()[0] for ln in lines[1:] if ln.split()}
    if len(files) != 1:
        raise InputError(f"WFDB header names {len(files)} sample files {sorted(files)}; upload one .dat",
                         status=422, field="file")
    (dat,) = files
    for name in (record, dat):
        if not _SAFE_NAME.match(name):
            raise InputError(f"WFDB header names an unsafe file {name!r}", status=422, field="file")
    return record, dat


def read_signal(files: dict[str, tuple[str, bytes]], opts: dict, limits: Limits):
    """Read a signal upload into an ``ecg.record.Record`` through ``ecg.readers`` (temp files, deleted after).

    ``files`` maps kind ("csv", "npy", "hea"+"dat", "hdf5") to (filename, bytes); ``opts`` holds
    ``fs`` (Hz, needed for CSV/.npy), ``leads`` (names or None) and ``index`` (HDF5 row).
    """
    from ecg import readers

    with tempfile.TemporaryDirectory(prefix="ecgvlm-upload-") as tmp:
        root = Path(tmp)
        try:
            if "hea" in files:
                record_name, dat_name = _wfdb_names(files["hea"][1])
                (root / f"{record_name}.hea").write_bytes(files["hea"][1])
                (root / dat_name).write_bytes(files["dat"][1])
                return readers.read_wfdb(str(root / record_name))
            if "dicom" in files or "xml" in files:
                from ecg.clinical import read_clinical_bytes

                name, data = files.get("dicom") or files["xml"]
                return read_clinical_bytes(data, Path(name or "upload").stem)
            if "hdf5" in files:
                (root / "upload.hdf5").write_bytes(files["hdf5"][1])
                return readers.read_code15_hdf5(str(root / "upload.hdf5"), opts["index"])
            (kind,) = files
            if opts["fs"] is None:
                raise InputError(f"sampling_rate (Hz) is required for a {kind} upload", status=422,
                                 field="sampling_rate")
            path = root / f"upload.{kind}"
            path.write_bytes(files[kind][1])
            reader = readers.read_csv if kind == "csv" else readers.read_npy
            return reader(str(path), fs=opts["fs"], leads=opts["leads"])
        except InputError:
            raise
        except (ValueError, KeyError, IndexError, OSError) as err:  # ECGReadError is a ValueError
            raise InputError(f"cannot read the {'/'.join(files)} upload: {err}", status=422, field="file") from None


def _signal_options(fields: dict, limits: Limits) -> dict:
    fs = _number(fields, ("sampling_rate", "fs"))
    if fs is not None:
        check_fs(fs, limits)
    index = _number(fields, ("index",), int)
    if index is not None and index < 0:
        raise InputError(f"index must be >= 0, got {index}", status=422, field="index")
    leads = [name.strip() for name in str(fields.get("leads") or "").split(",") if name.strip()] or None
    return {"fs": fs, "leads": leads, "index": index or 0}


def _group(files: list[tuple[str, bytes]], limits: Limits) -> dict[str, tuple[str, bytes]]:
    """Map each file to its kind; only one image, one signal file, or a WFDB .hea + .dat pair is allowed."""
    if not files or all(len(data) == 0 for _, data in files):
        raise InputError("empty upload: send one file (an ECG image or signal) in a multipart form",
                         status=400, field="file")
    if len(files) > limits.max_files:
        raise InputError(f"{len(files)} files uploaded; at most {limits.max_files}", status=400, field="file")
    grouped: dict[str, tuple[str, bytes]] = {}
    for name, data in files:
        if not data:
            raise InputError(f"file {name!r} is empty", status=400, field="file")
        kind = sniff(name, data)
        if kind in grouped:
            raise InputError(f"two {kind} files uploaded ({grouped[kind][0]!r}, {name!r})", status=400, field="file")
        grouped[kind] = (name, data)
    kinds = set(grouped)
    if kinds & {"hea", "dat"} and kinds != {"hea", "dat"}:
        raise InputError(f"a WFDB upload is exactly one .hea and one .dat file; got {sorted(kinds)}",
                         status=400, field="file")
    if len(kinds) > 1 and kinds != {"hea", "dat"}:
        raise InputError(f"upload one ECG at a time; got {sorted(kinds)}", status=400, field="file")
    return grouped


def task_and_question(task_name: str | None, question: str | None, limits: Limits, default_task: str):
    """(task name, question): the registered task (aliases resolved) and its default question if none given."""
    from ecgtasks import get_task

    try:
        task = get_task((task_name or "").strip() or default_task)
    except KeyError as err:
        raise InputError(str(err.args[0]), status=422, field="task") from None
    question = (question or "").strip() or task.question
    if len(question) > limits.max_question_chars:
        raise InputError(f"question has {len(question)} characters; at most {limits.max_question_chars}",
                         status=422, field="question")
    return task.name, question


def parse_upload(files: list[tuple[str, bytes]], fields: dict, limits: Limits, *,
                 default_task: str = "code15") -> Upload:
    """Validate a /v1/diagnose upload and turn it into model-ready image bytes (see module docstring)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown form field(s) {unknown}; expected some of {list(FIELDS)}", status=400,
                         field=unknown[0])
    task, question = task_and_question(fields.get("task"), fields.get("question"), limits, default_task)
    grouped = _group(files, limits)
    kind = next(iter(grouped)) if len(grouped) == 1 else "wfdb"
    if kind in ("png", "jpeg"):
        name, data = grouped[kind]
        info = check_image(data, limits, name=name or "file")
        return Upload(kind, data, task, question, {"width": info["width"], "height": info["height"]})
    record = read_signal(grouped, _signal_options(fields, limits), limits)
    meta = check_record(record, limits)
    if kind in ("dicom", "xml"):  # what the device wrote and said: for the answer's description, never the model
        meta.update({k: record.meta[k] for k in ("format", "device", "statements", "derived_leads")})
    from ecg.samples import RenderOptions, render_bytes  # the batch job's page: same size, layout, PNG

    return Upload(kind, render_bytes(record, RenderOptions()), task, question, meta)
