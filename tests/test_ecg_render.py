"""The paper-page renderer: calibration measured from pixels, layout, determinism, encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ecg.record import STANDARD_LEADS, Record
from ecg.render import GRID_MAJOR, GRID_MINOR, geometry, render, render_bytes, to_bytes
from ecg.synth import generate

FS = 500.0


def _square(period_s: float = 1.0, high_mv: float = 1.0) -> Record:
    """Every lead: 0 mV for the first half of each period, ``high_mv`` for the second half."""
    t = np.arange(int(10 * FS)) / FS
    wave = np.where((t % period_s) >= period_s / 2, high_mv, 0.0)
    return Record(signal=np.tile(wave, (12, 1)), fs=FS, id="square")


def _ink(image: Image.Image) -> np.ndarray:
    return np.all(np.asarray(image) == 0, axis=2)  # (H, W) black trace pixels


def _line_positions(row: np.ndarray, colours) -> np.ndarray:
    return np.flatnonzero(np.any([np.all(row == c, axis=1) for c in colours], axis=0))


@pytest.mark.parametrize("size", [(1100, 850), (2200, 1700), (800, 620)])
def test_calibration_from_pixels(size):
    """Grid pitch, 10 mm/mV and 25 mm/s measured on the page agree with each other within a pixel."""
    width, height = size
    image = render(_square(), width=width, height=height)
    assert image.size == size and image.mode == "RGB"
    page = np.asarray(image)
    g = geometry(width, height)
    # Pixels per mm from the grid, in the empty top margin: minor + major lines every mm.
    xs = _line_positions(page[2], [GRID_MINOR, GRID_MAJOR])
    ppm = (xs[-1] - xs[0]) / (len(xs) - 1)
    majors = _line_positions(page[2], [GRID_MAJOR])
    assert np.allclose(np.diff(majors), 5 * ppm, atol=1.0)
    assert abs(ppm - g.ppm) < 0.02 and (13 + 250 + 7) * ppm <= width + 1
    # Pixels per mV: the rhythm strip's 0 mV and 1 mV levels (centre of the ink run in a column).
    ink = _ink(image)
    base = int(round(g.baselines[-1]))
    band = slice(base - int(15 * ppm), base + int(5 * ppm))

    def level(t_s):
        x = int(round(g.x0 + t_s * 25 * ppm))
        rows = np.flatnonzero(ink[band, x]) + band.start
        return rows.mean()

    px_per_mv = level(0.25) - level(0.75)
    assert abs(px_per_mv - 10 * ppm) <= 1.0
    # Pixels per second: rising edges (columns where the ink spans the whole step) 1 s apart.
    span = ink[base - int(9 * ppm):base - int(1 * ppm), :].all(axis=0)
    edges = np.flatnonzero(span & (np.arange(width) > g.x0))
    groups = np.split(edges, np.flatnonzero(np.diff(edges) > 3) + 1)
    centres = np.array([grp.mean() for grp in groups])  # rising and falling edges, every 0.5 s
    assert len(centres) >= 19
    assert np.allclose(np.diff(centres), 0.5 * 25 * ppm, atol=1.0)
    assert abs(centres[0] - (g.x0 + 0.5 * 25 * ppm)) <= 1.0  # t = 0 is where the rows start
    # The calibration pulse (x0 - 9 mm .. x0 - 4 mm, then back to baseline) is 10 mm tall too.
    window = slice(int(g.baselines[0] - 13 * ppm), int(g.baselines[0] + 3 * ppm))
    top = np.flatnonzero(ink[window, int(round(g.x0 - 6.5 * ppm))]).mean()
    bottom = np.flatnonzero(ink[window, int(round(g.x0 - 3 * ppm))]).mean()
    assert abs((bottom - top) - 10 * ppm) <= 1.0


def test_3x4_columns_show_consecutive_windows():
    """A 1 mV blip in V1 at 5.5-6.0 s shows in column 3 (V1-V3, 5-7.5 s); one in I at 5.5 s shows nowhere."""
    t = np.arange(int(10 * FS)) / FS
    sig = np.zeros((12, t.size))
    blip = (t >= 5.5) & (t < 6.0)
    sig[STANDARD_LEADS.index("V1"), blip] = 1.0
    sig[STANDARD_LEADS.index("I"), blip] = 1.0
    image = render(Record(signal=sig, fs=FS, id="blip"))
    g = geometry(1100, 850)
    ink = _ink(image)
    # 2.5-4.5 mm above the first row's baseline: only a 1 mV excursion's edges cross this band
    # (lead labels sit higher, the lead-change ticks lower).
    row0 = ink[int(g.baselines[0] - 4.5 * g.ppm):int(g.baselines[0] - 2.5 * g.ppm)]
    cols = np.flatnonzero(row0.any(axis=0))
    cols = cols[cols > g.x0]  # the calibration pulse is left of t = 0
    x_expected = g.x0 + (2 * 2.5 + 0.5) * 25 * g.ppm
    assert cols.min() >= x_expected - 2 and cols.max() <= x_expected + 0.5 * 25 * g.ppm + 2


@pytest.mark.parametrize("layout", ["3x4", "6x2", "12x1"])
def test_layouts_and_lossless_png(layout):
    rec = next(generate(1, seed=2))
    image = render(rec, layout=layout)
    png = to_bytes(image)
    assert png[:4] == b"\x89PNG"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), np.asarray(image))
    jpeg = to_bytes(image, "JPEG", quality=80)
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (1100, 850)
    assert _ink(image).mean() > 0.005  # traces were drawn


def test_determinism_and_augmentation():
    rec = next(generate(1, seed=3))
    a = to_bytes(render(rec, augment=True, seed=7))
    assert a == to_bytes(render(rec, augment=True, seed=7))
    assert a != to_bytes(render(rec, augment=True, seed=8))
    assert to_bytes(render(rec, augment=True)) == to_bytes(render(rec, augment=True))  # seed from id
    assert to_bytes(render(rec)) == to_bytes(render(rec))
    pages = [np.asarray(render(rec, augment=True, seed=s)) for s in range(5)]
    plain = np.asarray(render(rec))
    assert all(p.shape == plain.shape for p in pages)
    assert sum(not np.array_equal(p, plain) for p in pages) == 5


def test_short_record_other_rate_and_missing_leads():
    """A 7 s, 400 Hz record with 8 leads renders; absent leads leave blank panels."""
    rec = Record(signal=np.random.default_rng(0).normal(0, 0.2, (8, 2800)), fs=400.0,
                 leads=("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), id="short")
    image = render(rec, width=900, height=700)
    assert image.size == (900, 700)
    with pytest.raises(ValueError, match="layout"):
        render(rec, layout="4x3")
    with pytest.raises(ValueError, match="format"):
        to_bytes(image, "GIF")


def test_render_bytes_matches_render_then_to_bytes():
    rec = next(generate(1, seed=4))
    for opts in ({}, {"layout": "6x2", "augment": True, "seed": 3}):
        fast = render_bytes(rec, **opts)
        assert fast[:4] == b"\x89PNG"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast)).convert("RGB")),
                              np.asarray(render(rec, **opts)))
    assert render_bytes(rec, format="JPEG")[:2] == b"\xff\xd8"
    with pytest.raises(TypeError, match="dpi"):
        render_bytes(rec, dpi=300)


def test_gaps_and_wild_values_do_not_break_the_page():
    sig = np.zeros((12, 5000))
    sig[0, 100:200] = np.nan  # a gap
    sig[1, 300] = 1e9  # a wild sample
    image = render(Record(signal=sig, fs=FS, id="wild"))
    assert image.size == (1100, 850)
