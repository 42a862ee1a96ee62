"""Experiment tracking through MLflow: one run per job, opened when the job starts and logged while it runs.

    run = track("local", experiment="ecgvlm-train", run_name="tiny", config=cfg.model_dump())  # params now
    with run:                                 # an exception ends the run as FAILED
        run.metrics({"loss": 2.31}, step=10)  # live: a curve grows in ``mlflow ui`` while the job runs
        run.artifact("report.md", text)
    run.close()                               # FINISHED (``close(ok=False)``: FAILED)

A Ray worker logs into the driver's run with ``attach(run.handle())`` (the URI and run id travel in its config).
``tracking`` is ``"local"`` (the embedded default: MLflow's file store under ``./mlruns``, or wherever
``MLFLOW_TRACKING_URI`` points), ``"none"`` (nothing is imported or written), or any MLflow tracking URI
(``file:/abs/mlruns``, ``http://mlflow:5000``, ``sqlite:///mlflow.db``); on a cluster of several machines use a
tracking server (``http://...``), which every worker reaches, not a file store on the driver's disk. MLflow is
imported only here and only when a run is opened (a few seconds, once per job).
Browse with ``mlflow ui --backend-store-uri ./mlruns`` (the ``mlflow`` package; ``mlflow-skinny`` logs only).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Iterable


def tracking_uri(tracking: str) -> str | None:
    """The MLflow tracking URI for a ``tracking`` setting; None for ``"none"``."""
    if tracking == "none":
        return None
    if tracking == "local":
        return os.environ.get("MLFLOW_TRACKING_URI") or "file:" + os.path.abspath("mlruns")
    return tracking


class Run:
    """An open MLflow run (or, for ``tracking="none"``, a run that records nothing)."""

    def __init__(self, client=None, run_id: str | None = None, uri: str | None = None):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.closed = False

    @property
    def active(self) -> bool:
        return self.client is not None

    def handle(self) -> dict | None:
        """``{"uri", "run_id"}`` for :func:`attach` in another process (a Ray worker); None when inactive."""
        return {"uri": self.uri, "run_id": self.run_id} if self.active else None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None and not self.closed:  # the job failed: its run says so
            self.close(ok=False)

    def metrics(self, values: dict, step: int | None = None) -> None:
        """Numeric values (others are skipped), keys made MLflow-safe (``f1_1dAVb``, ``code15/f1``)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_key(k), float(v), now, step or 0) for k, v in values.items() if _number(v)]
        for start in range(0, len(batch), 1000):  # MLflow's limit per batch call
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def curve(self, name: str, points: Iterable[tuple[int, float]]) -> None:
        """One metric's history: ``(step, value)`` points."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # when it was logged: a live curve's points carry their own times
        batch = [Metric(_key(name), float(v), now, int(s)) for s, v in points if _number(v)]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def artifact(self, name: str, text: str) -> None:
        """A text file (a report, a summary) stored with the run as ``name``."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            self.client.log_artifact(self.run_id, path)

    def close(self, ok: bool = True) -> None:
        """End the run: FINISHED, or FAILED when ``ok`` is False. A run attached in a worker is left open."""
        if self.active and not self.closed:
            self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")
        self.closed = True


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store is the embedded default here
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def attach(handle: dict | None) -> Run:
    """The run ``handle`` names (:meth:`Run.handle`), opened in this process to log into; inactive for None.
    Example: ``attach({"uri": "file:/abs/mlruns", "run_id": "5f0c..."}).metrics({"loss": 2.3}, step=1)``."""
    if not handle:
        return Run()
    return Run(_client(handle["uri"]), handle["run_id"], handle["uri"])


def track(tracking: str, *, experiment: str, run_name: str, config: dict) -> Run:
    """Open a run in ``experiment`` with the job's ``config`` (params, flattened, and ``config.json``)."""
    uri = tracking_uri(tracking)
    if uri is None:
        return Run()
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = Run(client, client.create_run(experiment_id, run_name=run_name).info.run_id, uri)
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
    for start in range(0, len(params), 100):  # MLflow's limit of params per batch call
        client.log_batch(run.run_id, params=params[start:start + 100])
    run.artifact("config.json", json.dumps(config, indent=2, default=str))
    return run


def log_losses(run: Run, losses, validations=()) -> None:
    """Training curves as they come: ``loss`` at each ``(step, loss, ...)`` point and ``val/<metric>`` at each
    validation (``{"step": 500, "f1": 61.2, ...}``). The rank-0 training worker calls it at every logging step."""
    run.curve("loss", [(step, loss) for step, loss, *_ in losses or []])
    for v in validations or []:
        run.metrics({f"val/{k}": x for k, x in v.items() if k != "step"}, step=v["step"])


def log_training(run: Run, summary: dict) -> None:
    """A training run's final figures and its ``train_summary.json`` as an artifact (the curves were logged
    during the run, :func:`log_losses`)."""
    run.metrics({k: summary.get(k) for k in ("step", "minutes", "samples", "failed_rows", "train_rows",
                                             "peak_rss_mib")}, step=summary.get("step"))
    run.artifact("train_summary.json", json.dumps(summary, indent=1, default=str))


def log_progress(run: Run, done: int, failed: int) -> None:
    """An evaluation's progress while it runs: ``rows_done`` and ``rows_failed``, stepped by rows done."""
    run.metrics({"rows_done": done, "rows_failed": failed}, step=done)


def log_evaluation(run: Run, results: dict, info: dict, reports: dict[str, str]) -> None:
    """An evaluation's per-task figures (``<task>/<metric>``, both protocols), its run figures, ``metrics.json``
    and the report files (``{"report.md": text, ...}``) as artifacts."""
    for task, result in results.items():
        figures = {f"{task}/{k}": v for k, v in result.items()}
        for protocol in ("ecgbench", "strict"):
            figures.update({f"{task}/{protocol}/{k}": v for k, v in (result.get(protocol) or {}).items()})
        run.metrics(figures)
    run.metrics({k: info.get(k) for k in ("new_rows", "new_errors", "rows", "errors", "rows_per_s", "wall_s")})
    run.artifact("metrics.json", json.dumps(results, indent=2, default=str))
    for name, text in reports.items():
        run.artifact(name, text)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[_key(prefix + str(k))] = v
    return out


def _key(name: str) -> str:
    # MLflow keys: alphanumerics, underscores, dashes, periods, spaces, colons and slashes
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
