"""Progress of long work: a bar (tqdm) where a terminal is attached, plain lines every few seconds otherwise
(logs, ``ray job submit``, CI), so a log file never fills with carriage returns.

    with Progress(total=1200, what="evaluate", unit="rows", every_s=10) as bar:
        bar.update(8, errors=1)        # terminal: a bar; else: "evaluate: 8/1200 rows, 2.10 rows/s, 1 errors"

``report(done, errors)``, when given, is called at the same pace (and once more at the end): an experiment
tracker's live progress (``metrics.tracking.log_progress``).
"""

from __future__ import annotations

import sys
import time


def attached(stream=None) -> bool:
    """True when ``stream`` (stderr by default) is a terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Counts done units (and errors) of ``total``; shows them as a bar or as a line every ``every_s`` seconds."""

    def __init__(self, total: int, *, what: str, unit: str = "rows", every_s: float = 10.0, bar: bool | None = None,
                 report=None):
        self.total, self.what, self.unit, self.every_s, self.report = total, what, unit, every_s, report
        self.done = self.errors = 0
        self.start = self.last = self.reported = time.perf_counter()
        self.bar = None
        if attached() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit.rstrip("s") or unit, dynamic_ncols=True)

    def update(self, n: int, *, errors: int = 0) -> None:
        self.done, self.errors = self.done + n, self.errors + errors
        now = time.perf_counter()
        if self.report is not None and now - self.reported >= self.every_s:
            self.reported = now
            self.report(self.done, self.errors)
        if self.bar is not None:
            self.bar.update(n)
            if self.errors:
                self.bar.set_postfix(errors=self.errors, refresh=False)
            return
        if now - self.last >= self.every_s:
            self.last = now
            print(f"{self.what}: {self.done}/{self.total} {self.unit}, {self.done / (now - self.start):.2f} "
                  f"{self.unit}/s, {self.errors} errors", flush=True)

    def close(self) -> None:
        if self.report is not None:
            self.report(self.done, self.errors)
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
