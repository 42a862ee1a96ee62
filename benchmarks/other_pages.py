"""ECG pages drawn by other software, for measuring how a model reads pages it was not trained on.

Two independent plotting libraries from PyPI draw the same record in their own styles, fonts, grids and layouts
(the ``sim2real`` extra installs them): ``ecg_plot`` (MIT; SVG-first charts through matplotlib) and ``pmecg``
(GPL-3.0; "plot my ECG", paper-like pages). Neither shares a line of code with ``ecg.render``. Six layouts:

    ecg_plot: 12lead (3x4 + II strip), columns=2 (6x2), stacked (12x1)
    pmecg:    4x3+1, 2x6+1, 4x3+3

Example::

    from benchmarks.other_pages import other_pages
    for name, png in other_pages(record):   # [("ecg_plot-12lead", b"\\x89PNG..."), ...]
        ...
"""

from __future__ import annotations

import io

import numpy as np

LAYOUTS = ("ecg_plot-12lead", "ecg_plot-6x2", "ecg_plot-12x1", "pmecg-4x3+1", "pmecg-2x6+1", "pmecg-4x3+3")
STANDARD = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def available() -> str | None:
    """None when both libraries import, else what to install."""
    try:
        import ecg_plot  # noqa: F401
        import pmecg  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed: pip install -e '.[sim2real]'"
    return None


def _ten_seconds(record) -> tuple[np.ndarray, float]:
    """The record's 12 standard leads, first 10 s, mV: ``((12, n), fs)``; absent leads are zeros."""
    n = int(min(record.n_samples, 10 * record.fs))
    sig = np.zeros((12, n))
    for k, name in enumerate(STANDARD):
        if name in record.leads:
            sig[k] = np.nan_to_num(record.signal[record.leads.index(name), :n])
    return sig, float(record.fs)


def _png(fig, width_px: int = 1100) -> bytes:
    import matplotlib.pyplot as plt

    w_in, _ = fig.get_size_inches()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=width_px / max(w_in, 1e-3))
    plt.close(fig)
    return buf.getvalue()


def _ecg_plot(sig: np.ndarray, fs: float, layout: str) -> bytes:
    from ecg_plot import ECGChart
    from ecg_plot.compat import _figure
    from ecg_plot.data import normalize

    rec = normalize(sig, sample_rate=fs, lead_names=list(STANDARD))
    # sequential: each column shows the next seconds, as printed pages do (simultaneous squeezes 10 s per panel)
    kind = {"12lead": {"layout": "12lead", "rhythm_lead": "II", "time_mode": "sequential"},
            "6x2": {"layout": "columns", "columns": 2, "time_mode": "sequential"}, "12x1": {"layout": "stacked"}}[layout]
    chart = ECGChart(rec, title="ECG 12-lead  25 mm/s  10 mm/mV", speed=25, gain=10, **kind)
    return _png(_figure(chart))


def _pmecg(sig: np.ndarray, fs: float, template: str) -> bytes:
    import pandas as pd
    import pmecg

    frame = pd.DataFrame({name: sig[k] for k, name in enumerate(STANDARD)})
    config = pmecg.template_factory(template, frame, leads_map=None)
    fig = pmecg.ECGPlotter().plot(frame, configuration=config, sampling_frequency=int(round(fs)))
    return _png(fig)


def other_pages(record) -> list[tuple[str, bytes]]:
    """``[(layout name, PNG bytes)]``: the record drawn by both libraries in all six :data:`LAYOUTS`."""
    import matplotlib

    matplotlib.use("Agg")
    sig, fs = _ten_seconds(record)
    out = []
    for name in LAYOUTS:
        lib, layout = name.split("-", 1)
        out.append((name, _ecg_plot(sig, fs, layout) if lib == "ecg_plot" else _pmecg(sig, fs, layout)))
    return out
