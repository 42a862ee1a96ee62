"""Is this image an ECG page? A cheap check of the two things every ECG printout has: a paper grid (lines at a
regular pitch in two directions) and traces (long, thin, dark lines across the page with sharp spikes).

Pure numpy on a page shrunk to 384 px; about 20 ms. Colour-agnostic: the grid is looked for both in lightness
and in saturation (pink, green, blue or grey grids), at any pitch from 2 to 48 px of the shrunk page, and at
rotations up to 12 degrees (photos). A page with no grid passes on its traces alone; a chart or a text page has
neither many parallel spiky traces nor a fine two-way grid.

Example::

    check = check_page(Image.open("ecg.png"))
    check.is_page, round(check.score, 2), check.grid, check.traces   # (True, 0.97, 0.81, 6)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SIDE = 384  # px: the longer side of the shrunk page
TILE = 96  # px: the grid is measured per tile, so a rotated or curved page still has straight lines in each
ANGLES = (0.0, -4.0, 4.0, -8.0, 8.0, -12.0, 12.0)  # degrees tried, most likely first
THRESHOLD = 0.6  # score at or above which an image counts as an ECG page


@dataclass(frozen=True)
class PageCheck:
    """``score`` in [0, 1] (at or above :data:`THRESHOLD`: an ECG page); ``grid``: the fraction of the page's
    tiles holding a two-way periodic grid; ``traces``: long spiky trace rows found; ``angle``: degrees tried
    that fit the grid best."""

    is_page: bool
    score: float
    grid: float
    traces: int
    angle: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _shrink(image) -> tuple[np.ndarray, np.ndarray]:
    """(darkness, saturation), each (H, W) float in [0, 1], of the page shrunk to SIDE px on its longer side."""
    from PIL import Image

    rgb = image.convert("RGB")
    scale = SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR)
    a = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, 3)
    dark = 1.0 - a.mean(axis=2)
    sat = a.max(axis=2) - a.min(axis=2)
    return dark, sat


def _peaky(profile: np.ndarray) -> tuple[float, int]:
    """How strongly a 1-D profile repeats: its strongest spectral line at 4 or more periods per profile, over the
    power just beside that line (a repeated line pattern gives a narrow peak, hundreds of times its neighbours;
    a single edge, a bar or noise give a smooth spectrum, a ratio near 1), and that line's periods per profile."""
    x = profile - np.convolve(profile, np.ones(9) / 9, mode="same")  # remove shading
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    lo, hi = 4, len(spec) - 1
    if hi <= lo or float(spec[lo:hi].max()) < 1e-6:
        return 0.0, 0
    k = lo + int(np.argmax(spec[lo:hi]))
    beside = np.r_[spec[max(1, k - 6): max(1, k - 1)], spec[k + 2: k + 7]]
    return (float(spec[k] / (np.median(beside) + 1e-9)) if beside.size else 0.0), k


def _grid_fraction(channel: np.ndarray) -> float:
    """The fraction of non-empty tiles whose row and column profiles both repeat (a two-way grid)."""
    h, w = channel.shape
    hits = total = 0
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            tile = channel[y:y + TILE, x:x + TILE]
            if float(tile.std()) < 0.01:
                continue  # flat: margin or blank paper
            total += 1
            (across, k1), (down, k2) = _peaky(tile.mean(axis=0)), _peaky(tile.mean(axis=1))
            # both ways, at one pitch: ECG paper is ruled in squares (text lines repeat one way only)
            hits += min(across, down) > 9 and abs(k1 - k2) <= max(1, 0.15 * max(k1, k2))
    return hits / total if total else 0.0


def _rotate(channel: np.ndarray, angle: float) -> np.ndarray:
    from PIL import Image

    if angle == 0:
        return channel
    fill = float(np.median(channel))  # the paper's own value: the corners a rotation uncovers have no edges
    return np.asarray(Image.fromarray(channel).rotate(angle, resample=Image.BILINEAR, fillcolor=fill),
                      dtype=np.float32)


def _trace_rows(dark: np.ndarray, sat: np.ndarray, spike: float = 3.0) -> int:
    """Rows of the page crossed by a long dark line with spikes (columns ``spike`` times the line's thickness): an
    ECG trace (a chart's line is smooth, text is broken into words)."""
    from PIL import Image, ImageFilter

    # darkness over the local paper (uneven light in a photo shifts the paper, not the ink's contrast over it)
    local = Image.fromarray(np.uint8(np.clip(dark, 0, 1) * 255)).filter(ImageFilter.GaussianBlur(8))
    above = dark - np.asarray(local, dtype=np.float32) / 255.0
    darkest = float(np.percentile(above, 99.7))
    if darkest < 0.15:
        return 0  # no ink darker than the paper around it
    # the darkest strokes, clearly darker than the paper (a noisy photo's speckles are not ink); not a coloured grid
    ink = (above > max(0.2, 0.5 * darkest)) & (sat < 0.35)
    h, w = ink.shape
    band = max(8, h // 12)
    found = 0
    for y in range(0, h - band + 1, band // 2):
        rows = ink[y:y + band]
        cols = rows.any(axis=0)  # (W,) a column touched by ink in this band
        closed = np.convolve(cols, np.ones(5), mode="same") > 0  # gaps of a few px (a thin trace's breaks)
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, closed, 0])))[::2] if closed.any() else np.array([0])
        if runs.max() < 0.25 * w:
            continue
        extent = rows.sum(axis=0)[cols]  # (covered columns,) ink pixels per column
        thin = float(np.median(extent)) if extent.size else 99.0  # px: a trace is a line, not a blob
        # spikes: the tallest columns (a QRS is a few of hundreds, 99.5th percentile) at 3x the line's thickness;
        # noisy traces are a few px thick
        if thin <= 8 and np.percentile(extent, 99.5) >= spike * max(1.0, thin):
            found += 1
    return found // 2 if found > 1 else found  # overlapping bands see each trace about twice


def check_page(image, threshold: float = THRESHOLD) -> PageCheck:
    """Measure grid and trace structure of a PIL image; see the module docstring. Example:
    ``check_page(render(record)).is_page`` -> True; ``check_page(Image.new("RGB", (800, 600), "white"))`` ->
    ``PageCheck(is_page=False, score=0.0, ...)``."""
    dark, sat = _shrink(image)
    grid, angle = 0.0, 0.0
    for a in ANGLES:
        g = max(_grid_fraction(_rotate(dark, a)), _grid_fraction(_rotate(sat, a)))
        if g > grid:
            grid, angle = g, a
        if grid >= 0.5:
            break  # clearly a grid: no need to try more angles
    # on a clear grid, a low-voltage trace's smaller spikes count too (a text page, with no grid, keeps the bar high)
    traces = _trace_rows(dark, sat, spike=2.5 if grid >= 0.4 else 3.0)
    # a fine grid with a trace, or several spiky traces with no grid (some printers leave it out); a grid with no
    # trace at all is blank paper, a chart or a photo of a fence, not an ECG
    score = float(min(1.0, 0.5 * min(1.0, grid / 0.4) + 0.5 * min(1.0, traces / 2.0)))
    if grid < 0.2:
        score = min(1.0, 0.6 * min(1.0, traces / 4.0) + 0.5 * min(1.0, grid / 0.2))
    return PageCheck(score >= threshold, round(score, 4), round(grid, 4), int(traces), angle)


def gate_rows(batch, *, threshold: float = THRESHOLD):
    """The page gate as a batch stage: a pyarrow table of sample rows (reads ``id``, ``image``: PNG or JPEG bytes)
    -> the same table with ``page_score`` (float64, [0, 1]) and ``is_page`` (bool) appended. A row whose image does
    not decode gets nulls: the predictor names its error. ``ecgvlm evaluate`` runs it before the model; serving
    checks each upload with :func:`check_page`. Example: ``gate_rows(table).column("is_page").to_pylist()`` ->
    ``[True, False, None]`` for a page, a bar chart and a truncated PNG."""
    import pyarrow as pa

    from ecg.images import decode_image
    from ecg.rows import require_columns

    require_columns(batch.column_names, ("id", "image"), "page gate")
    scores, flags = [], []
    for rid, data in zip(batch.column("id").to_pylist(), batch.column("image").to_pylist()):
        try:
            check = check_page(decode_image(data, f"record {rid}: image"), threshold=threshold)
        except Exception:  # noqa: BLE001 - an image that does not decode is the predictor's error to name
            scores.append(None), flags.append(None)
            continue
        scores.append(check.score), flags.append(check.is_page)
    return (batch.append_column("page_score", pa.array(scores, pa.float64()))
            .append_column("is_page", pa.array(flags, pa.bool_())))
