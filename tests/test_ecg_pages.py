"""Page presets: recipes redraw their pages, styles keep the calibration, headers never leak the answer, rows
carry their recipe, and every preset's choices actually vary."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ecg import pages, samples
from ecg.record import Record
from ecg.render import Style, geometry, page_image
from ecg.synth import record

FS = 500.0


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("preset", pages.PRESETS)
def test_recipe_is_json_and_redraws_its_page(preset):
    rec = record(4, seed=1)
    data, recipe = pages.page_bytes(rec, preset, seed=11, width=800, height=620)
    again = json.loads(json.dumps(recipe))  # what a row's meta holds
    redrawn = np.asarray(pages.draw(rec, again).convert("RGB"))
    if preset == "photo":  # JPEG: the same picture up to compression
        assert data[:2] == b"\xff\xd8" and recipe["format"] == "JPEG"
        assert np.abs(_decode(data).astype(int) - redrawn).mean() < 6
    else:
        assert np.array_equal(_decode(data), redrawn)
    assert pages.page_bytes(rec, preset, seed=11, width=800, height=620)[0] == data  # seeded
    other = pages.page_bytes(rec, preset, seed=12, width=800, height=620)[0]
    assert (other == data) if preset == "clean" else (other != data)  # a clean page is the same printout


def test_varied_choices_cover_the_published_layouts_speeds_gains_and_styles():
    recipes = [pages.recipe("varied", s) for s in range(300)]
    assert set(Counter(r["layout"] for r in recipes)) == set(pages.VARIED_LAYOUTS)
    styles = [r["style"] for r in recipes]
    assert {s["speed"] for s in styles} == {25.0, 50.0} and {s["gain"] for s in styles} == {5.0, 10.0, 20.0}
    assert {s["grid"] for s in styles} == set(pages.GRIDS) and len({s["font"] for s in styles}) == len(pages.FONTS)
    assert 0.4 < np.mean([bool(s["header"]) for s in styles]) < 0.8
    assert len({r["width"] for r in recipes}) > 50  # resolution varies
    photos = [pages.recipe("photo", s)["photo"] for s in range(100)]
    assert {p["kind"] for p in photos} == {"scan", "phone"} and any(p["shadow"] for p in photos)
    assert max(abs(p["angle"]) for p in photos) > 3 and min(p["quality"] for p in photos) < 50


def _square(period_s: float = 1.0) -> Record:
    t = np.arange(int(10 * FS)) / FS
    return Record(signal=np.tile(np.where((t % period_s) >= period_s / 2, 1.0, 0.0), (12, 1)), fs=FS, id="sq")


@pytest.mark.parametrize("speed,gain", [(25.0, 10.0), (50.0, 5.0), (25.0, 20.0), (50.0, 10.0)])
def test_speed_and_gain_measured_on_the_page(speed, gain):
    """A 1 mV square wave with 0.5 s halves: the step is gain mm tall, edges are 0.5 s x speed mm apart."""
    style = Style(speed=speed, gain=gain, grid="none", calibration="none", ticks=False)
    img = np.asarray(page_image(_square(), width=1100, height=850, layout="12x1", style=style).convert("RGB"))
    g = geometry(1100, 850, "12x1", speed=speed)
    ink = np.all(img == 0, axis=2)
    base = int(round(g.baselines[-1]))  # the last row (V6), clear of labels above it
    col = int(round(g.x0 + 0.25 * speed * g.ppm))  # inside the first low half
    low = np.flatnonzero(ink[base - 3:base + 4, col]).mean() + base - 3
    col_hi = int(round(g.x0 + 0.75 * speed * g.ppm))
    top = base - gain * g.ppm
    high = np.flatnonzero(ink[int(top) - 3:int(top) + 4, col_hi]).mean() + int(top) - 3
    assert abs((low - high) - gain * g.ppm) <= 1.5
    band = ink[int(base - 0.8 * gain * g.ppm):int(base - 0.2 * gain * g.ppm), :].all(axis=0)  # vertical edges
    edges = np.flatnonzero(band & (np.arange(1100) > g.x0))
    centres = np.array([grp.mean() for grp in np.split(edges, np.flatnonzero(np.diff(edges) > 3) + 1)])
    assert np.allclose(np.diff(centres), 0.5 * speed * g.ppm, atol=1.5)


def test_headers_are_made_up_never_the_records_own():
    """The same seed prints the same header for any record: nothing in it comes from the signal or its labels."""
    a, b = record(0, seed=3), record(1, seed=3)
    assert a.labels != b.labels or a.meta["hr_bpm"] != b.meta["hr_bpm"]
    headers = [pages.recipe("varied", s)["style"]["header"] for s in range(40)]
    assert any(headers)
    for s in range(40):
        img_a = pages.draw(a, pages.recipe("varied", s))
        assert pages.recipe("varied", s)["style"]["header"] == headers[s]
        assert img_a.size == (pages.recipe("varied", s)["width"], pages.recipe("varied", s)["height"])


def test_rows_carry_their_recipe_and_follow_the_mix():
    opts = samples.RenderOptions(width=440, height=340, pages="clean=0.2,varied=0.4,photo=0.4")
    table = samples.synthetic_batch({"start": [0], "count": [40]}, seed=5, options=opts)
    metas = [json.loads(m) for m in table.column("meta").to_pylist()]
    kinds = Counter(m["page"]["preset"] for m in metas)
    assert set(kinds) == {"clean", "varied", "photo"} and kinds["clean"] < kinds["varied"] + kinds["photo"]
    for row, meta in zip(table.to_pylist(), metas):
        assert meta["record"] == row["id"] and isinstance(meta["page"]["seed"], int)
        assert row["image"][:2] == (b"\xff\xd8" if meta["page"]["preset"] == "photo" else b"\x89P")
    with pytest.raises(ValueError, match="clean, varied, photo"):
        pages.presets_mix("clean=0.5,sketch=0.5")
