"""One way to reach storage: a local path or an ``s3://bucket/prefix`` URI becomes a pyarrow filesystem.

The S3 endpoint, region and credentials come from the ordinary AWS variables
(``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), so the same command runs on a laptop
folder, on AWS, or on any S3-compatible server.

Example::

    fs, path = resolve("s3://ecg/shards/train")   # (S3FileSystem, "ecg/shards/train")
    fs, path = resolve("./data/synth")            # (LocalFileSystem, "/abs/data/synth")
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the ordinary AWS environment variables. Throttling and transient
    errors are retried by the AWS SDK's standard strategy (exponential backoff with jitter), up to
    ``AWS_MAX_ATTEMPTS`` attempts per request (default 5)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 5)
    kwargs: dict = {"region": region, "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts)}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host.rstrip("/") if host else endpoint
        kwargs["scheme"] = scheme if host else "https"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or an ``s3://`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def absolute(uri: str | os.PathLike) -> str:
    """An ``s3://`` URI unchanged, a local path made absolute: Ray workers do not share the driver's
    working directory (Ray Train moves each worker into its run folder), so relative paths must not travel."""
    uri = str(uri)
    return uri if is_s3(uri) else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping the ``s3://`` scheme."""
    uri = str(uri)
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://"):], *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files under ``uri`` (recursive) whose names end with ``suffix``, sorted."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    out = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)]
    return sorted(("s3://" + p) if is_s3(uri) else p for p in out)


def download_dir(uri: str, local_dir: str | None = None, *, skip_suffixes: tuple[str, ...] = ()) -> str:
    """Copy a folder to local disk (no-op for a local path); returns the local folder.

    ``skip_suffixes``: file endings left behind (``(".safetensors",)`` fetches a model's config files only).
    """
    if not is_s3(uri):
        return str(Path(uri).expanduser().resolve())
    local_dir = local_dir or tempfile.mkdtemp(prefix="ecgvlm-")
    fs, path = resolve(uri)
    if not skip_suffixes:
        pafs.copy_files(path, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return local_dir
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File or info.path.endswith(skip_suffixes):
            continue
        target = Path(local_dir) / info.path[len(path.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local_dir


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder to ``uri`` (a plain copy for a local destination)."""
    if not is_s3(uri):
        dest = Path(uri).expanduser().resolve()
        if dest != Path(local_dir).resolve():
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        return
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
