"""Render a record as a 12-lead paper ECG page (PIL), fast enough for dataset preparation.

The page is the standard printout: 25 mm/s, 10 mm/mV, a 1 mm minor / 5 mm major red grid,
a 1 mV x 200 ms calibration pulse at the start of each row and lead labels. Layouts:

- ``"3x4"`` (default; also ``"3x4+1"``): 3 rows x 4 columns of 2.5 s segments (I,II,III | aVR,aVL,aVF |
  V1-V3 | V4-V6), column k covering seconds 2.5k .. 2.5k + 2.5, plus a 10 s lead II rhythm strip at the bottom.
- ``"3x4+0"``: the same without a rhythm strip; ``"3x4+3"``: with three (II, V1, V5).
- ``"6x2"``: 6 rows x 2 columns of 5 s (limb leads over 0-5 s, chest leads over 5-10 s).
- ``"2x6"``: 2 rows x 6 columns (limb leads, chest leads) plus a lead II strip.
- ``"12x1"``: 12 rows, each lead over the full 10 s.

Speed and gain are 25 mm/s and 10 mm/mV unless a :class:`Style` says otherwise (50 mm/s shows 5 s across the
page; 5 or 20 mm/mV scale the traces and the calibration pulse alike). :mod:`ecg.pages` draws randomized
styles (the ``varied`` and ``photo`` presets) through the same code.

Pixels per mm are derived from the size so 250 mm of trace plus margins fit the width (and the rows
fit the height): 1100 x 850 px gives about 4.07 px/mm. The grid background is cached per size,
layout and colours; traces are drawn as PIL polylines over a min/max envelope per pixel column,
so a 2.5 s segment at 500 Hz costs about 2 points per pixel column, whatever the sampling rate.

Example::

    from ecg.synth import generate
    from ecg.render import render, to_bytes
    img = render(next(generate(1)))              # PIL.Image, RGB, 1100 x 850
    png = to_bytes(img)                          # bytes, PNG
    aug = render(next(generate(1)), augment=True, seed=3)
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ecg.record import Record

SPEED = 25.0  # mm/s
GAIN = 10.0  # mm/mV
LEFT_MM, RIGHT_MM, TOP_MM, BOTTOM_MM = 13.0, 7.0, 10.0, 5.0  # margins; the pulse sits in LEFT_MM
PAPER = (255, 253, 250)
GRID_MINOR = (246, 196, 196)
GRID_MAJOR = (232, 128, 128)
INK = (0, 0, 0)
PAPERS = (PAPER, (252, 247, 232), (255, 240, 240), (240, 244, 248), (250, 250, 250))

PAGE_MM = 250.0  # mm of trace across the page: 10 s at 25 mm/s
# layout -> (rows of lead names, segment length s at 25 mm/s, rhythm-strip leads)
_3X4 = [[(("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))[k][r]
         for k in range(4)] for r in range(3)]
_LIMB, _CHEST = ("I", "II", "III", "aVR", "aVL", "aVF"), ("V1", "V2", "V3", "V4", "V5", "V6")
LAYOUTS = {
    "3x4": (_3X4, 2.5, ("II",)),
    "3x4+0": (_3X4, 2.5, ()),
    "3x4+1": (_3X4, 2.5, ("II",)),
    "3x4+3": (_3X4, 2.5, ("II", "V1", "V5")),
    "6x2": ([[a, b] for a, b in zip(_LIMB, _CHEST)], 5.0, ()),
    "2x6": ([list(_LIMB), list(_CHEST)], 10.0 / 6, ("II",)),
    "12x1": ([[lead] for lead in _LIMB + _CHEST], 10.0, ()),
}


@dataclass(frozen=True)
class Style:
    """How a page looks; the default is the clean printout. Every field is JSON-able (it goes into row meta).

    Example: ``render(rec, style=Style(speed=50.0, gain=5.0, grid="dots"))``.
    """

    speed: float = SPEED  # mm/s
    gain: float = GAIN  # mm/mV
    paper: tuple = PAPER
    minor: tuple = GRID_MINOR
    major: tuple = GRID_MAJOR
    ink: tuple = INK
    text: tuple = (40, 40, 40)
    grid: str = "lines"  # lines | major (5 mm only) | dots (1 mm dots, 5 mm lines) | none
    line_mm: float = 0.35  # trace width, mm
    font: str = ""  # a TrueType file name from matplotlib's bundled fonts ("" = PIL's default)
    label_mm: float = 3.2  # lead label height, mm
    label_box: bool = False  # draw a box around each lead label
    ticks: bool = True  # short ticks where the lead changes
    calibration: str = "left"  # left (before every row) | none
    header: tuple = ()  # lines of printed header text in the top margin
    top_mm: float = TOP_MM  # the top margin grows to hold a header


@dataclass(frozen=True)
class Geometry:
    """Where things go on the page, in pixels: ``ppm`` px/mm, trace origin ``x0``, row baselines."""

    width: int
    height: int
    ppm: float  # px per mm
    x0: float  # px, x of t = 0 on every row (a whole number of mm from the left edge)
    baselines: tuple[float, ...]  # px, y of 0 mV per row (rhythm strip last), whole mm from the top
    segment_s: float
    x0_mm: float
    baselines_mm: tuple[float, ...]


def geometry(width: int, height: int, layout: str = "3x4", *, speed: float = SPEED,
             top_mm: float = TOP_MM) -> Geometry:
    """Page geometry for a size and layout. Example: ``geometry(1100, 850).ppm`` -> 4.07 (px/mm).

    ``segment_s`` is the seconds one panel shows: at 50 mm/s half of what it shows at 25 mm/s.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    rows, seg, strips = LAYOUTS[layout]
    n_rows = len(rows) + len(strips)
    row_mm = 40.0 if n_rows <= 4 else 25.0 if n_rows <= 7 else 15.0  # space a row wants, mm
    ppm = min(width / (LEFT_MM + PAGE_MM + RIGHT_MM), height / (top_mm + BOTTOM_MM + n_rows * row_mm))
    # Rows share the height left after the margins; t = 0 and every baseline sit on whole mm, hence on
    # grid lines (the grid is drawn at whole mm from the page's top-left corner).
    pitch = (height / ppm - top_mm - BOTTOM_MM) / n_rows  # mm per row
    base_mm = tuple(float(np.floor(top_mm + pitch * (r + 0.62))) for r in range(n_rows))
    return Geometry(width, height, ppm, LEFT_MM * ppm, tuple(b * ppm for b in base_mm), seg * SPEED / speed,
                    LEFT_MM, base_mm)


# Palette indices of the page canvas: the page is drawn in "P" mode (one byte per pixel, five colours),
# which makes drawing cheap and lets PNG encoding work on 1/3 of the bytes.
I_PAPER, I_MINOR, I_MAJOR, I_INK, I_TEXT = range(5)


@lru_cache(maxsize=32)
def _background(width: int, height: int, layout: str, grid: str = "lines", top_mm: float = TOP_MM) -> Image.Image:
    """The blank page (palette indices) with its grid; cached: it is the same for every record of a style."""
    g = geometry(width, height, layout, top_mm=top_mm)
    page = np.full((height, width), I_PAPER, np.uint8)  # (H, W) palette indices
    if grid in (True, "lines", "major", "dots"):
        # Lines at whole mm; the major ones pass through t = 0 and the first baseline; minor first.
        x1, y1 = _grid_positions(g.x0_mm % 1, 1, g.ppm, width), _grid_positions(g.baselines_mm[0] % 1, 1, g.ppm, height)
        if grid in (True, "lines"):
            page[:, x1] = I_MINOR
            page[y1, :] = I_MINOR
        elif grid == "dots":
            page[np.ix_(y1, x1)] = I_MINOR
        page[:, _grid_positions(g.x0_mm % 5, 5, g.ppm, width)] = I_MAJOR
        page[_grid_positions(g.baselines_mm[0] % 5, 5, g.ppm, height), :] = I_MAJOR
    elif grid not in (False, "none"):
        raise ValueError(f"unknown grid style {grid!r}; choose lines, major, dots or none")
    return Image.fromarray(page, mode="P")


def _grid_positions(first_mm: float, step_mm: float, ppm: float, size: int) -> np.ndarray:
    """Pixel rows/columns of grid lines at ``first_mm + k * step_mm`` (mm), rounded to whole pixels."""
    pos = np.round((first_mm + np.arange(0, size / ppm + step_mm, step_mm)) * ppm).astype(int)
    return pos[pos < size]


def _envelope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Min/max per pixel column: ``(2 * columns, 2)`` polyline points (px) that keep every spike.

    Within a column the pair is ordered by the column's trend (rising: min then max), so consecutive
    columns join where the signal really goes. Sparse input (under 2 samples per column) is kept as is.
    """
    col = np.floor(x).astype(np.int64)
    if len(col) < 4 or col[-1] - col[0] + 1 >= len(col) // 2:
        return np.stack([x, y], 1)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(col)) + 1])
    ends = np.concatenate([starts[1:], [len(y)]]) - 1
    # Each column also spans the previous column's last sample, so a jump between two columns is
    # drawn as a vertical stroke inside one column rather than a slanted join.
    prev = y[np.maximum(starts - 1, 0)]
    lo = np.minimum(np.minimum.reduceat(y, starts), prev)
    hi = np.maximum(np.maximum.reduceat(y, starts), prev)
    rising = y[ends] <= prev  # y in px grows downwards: rising signal -> falling y
    pts = np.empty((2 * len(starts), 2))
    pts[0::2, 0] = col[starts]
    pts[1::2, 0] = col[starts] + 0.5
    pts[0::2, 1] = np.where(rising, hi, lo)
    pts[1::2, 1] = np.where(rising, lo, hi)
    return pts


def _lead_signal(record: Record, name: str) -> np.ndarray | None:
    return record.signal[record.leads.index(name)] if name in record.leads else None


def _panels(record: Record, g: Geometry, layout: str, speed: float = SPEED):
    """Yield ``(lead, row, t0 s, t1 s, x px of t0)`` for every panel, rhythm strips last."""
    rows, _, strips = LAYOUTS[layout]
    seg, px_per_s = g.segment_s, speed * g.ppm
    for r, names in enumerate(rows):
        for k, name in enumerate(names):
            yield name, r, k * seg, (k + 1) * seg, g.x0 + k * seg * px_per_s
    for j, name in enumerate(strips):
        yield name, len(rows) + j, 0.0, PAGE_MM / speed, g.x0


@lru_cache(maxsize=16)
def _font(size_px: int, name: str = "") -> ImageFont.ImageFont:
    if name:
        import matplotlib  # its bundled TrueType fonts (DejaVu, STIX, Computer Modern) are always there

        return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/{name}", size_px)
    return ImageFont.load_default(size=size_px)


@lru_cache(maxsize=512)
def _text_mask(text: str, size_px: int, font: str = "") -> Image.Image:
    """A cached 1-bit mask of a label: rasterising text with FreeType on every page is costly."""
    face = _font(size_px, font)
    left, top, right, bottom = face.getbbox(text)
    mask = Image.new("1", (right + 1, bottom + 1), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=1, font=face)
    return mask


def _put_text(canvas: Image.Image, xy: tuple[float, float], text: str, size_px: int, index: int,
              font: str = "") -> tuple[int, int]:
    """Paste ``text`` at ``xy`` (px) in palette colour ``index``; returns the text's (width, height) in px."""
    mask = _text_mask(text, size_px, font)
    x, y = int(round(xy[0])), int(round(xy[1]))
    canvas.paste(index, (x, y, x + mask.width, y + mask.height), mask)
    return mask.width, mask.height


def _draw_traces(canvas: Image.Image, draw: ImageDraw.ImageDraw, record: Record, g: Geometry,
                 layout: str, width_px: int, style: "Style") -> None:
    px_per_s, px_per_mv = style.speed * g.ppm, style.gain * g.ppm
    size = max(8, round(style.label_mm * g.ppm))  # lead labels about 3 mm tall
    for name, row, t0, t1, x_start in _panels(record, g, layout, style.speed):
        base = g.baselines[row]
        lx, ly = x_start + 0.8 * g.ppm, base - 9 * g.ppm
        w, h = _put_text(canvas, (lx, ly), name, size, I_INK, style.font)
        if style.label_box:
            draw.rectangle([lx - 2, ly - 2, lx + w + 2, ly + h + 2], outline=I_INK, width=1)
        if t0 > 0 and style.ticks:  # a short tick marks where the lead changes
            draw.line([(x_start, base - 2 * g.ppm), (x_start, base + 2 * g.ppm)], fill=I_INK, width=1)
        sig = _lead_signal(record, name)
        if sig is None:
            continue
        i0, i1 = int(round(t0 * record.fs)), min(int(round(t1 * record.fs)), len(sig))
        if i1 - i0 < 2:
            continue
        x = x_start + (np.arange(i0, i1) / record.fs - t0) * px_per_s  # (n,), px
        y = base - sig[i0:i1].astype(np.float64) * px_per_mv  # (n,), px; paper y grows downwards
        y = np.clip(np.nan_to_num(y, nan=base), -g.height, 2 * g.height)  # gaps and wild values
        draw.line(_envelope(x, y).ravel().tolist(), fill=I_INK, width=width_px, joint="curve")


def _draw_calibration(draw: ImageDraw.ImageDraw, g: Geometry, width_px: int, style: "Style") -> None:
    """1 mV x 200 ms pulse (``gain`` mm tall, at most 5 mm wide) ending 2 mm before t = 0 on every row."""
    if style.calibration == "none":
        return
    h, w = style.gain * g.ppm, min(0.2 * style.speed, 5.0) * g.ppm
    for base in g.baselines:
        x1 = g.x0 - 2 * g.ppm
        xa = x1 - w - 2 * g.ppm
        pts = [(xa - 2 * g.ppm, base), (xa, base), (xa, base - h), (xa + w, base - h),
               (xa + w, base), (x1, base)]
        draw.line(pts, fill=I_INK, width=width_px)


def _draw_header(canvas: Image.Image, g: Geometry, style: "Style") -> None:
    """The printed header lines in the top margin, 2.6 mm text."""
    size = max(8, round(2.6 * g.ppm))
    for k, line in enumerate(style.header):
        _put_text(canvas, (g.x0, (1.0 + 3.4 * k) * g.ppm), line, size, I_TEXT, style.font)


def render(record: Record, *, width: int = 1100, height: int = 850, layout: str = "3x4",
           augment: bool = False, seed: int | None = None, style: Style | None = None) -> Image.Image:
    """The record as an RGB paper page of ``width`` x ``height`` px (25 mm/s, 10 mm/mV unless ``style`` says).

    ``augment=True`` applies seeded paper-style augmentations (paper and grid colour, missing grid,
    trace width and ink, header text, speckle noise, rotation up to 2 degrees); ``seed=None`` derives the
    seed from the record id, so a page is reproducible either way. Records shorter than the page leave the
    rest blank; a missing lead leaves its panel blank. Example: ``render(rec, layout="6x2").size``
    -> ``(1100, 850)``.
    """
    return _page(record, width, height, layout, augment, seed, style).convert("RGB")


def render_bytes(record: Record, *, format: str = "PNG", quality: int = 90, **options) -> bytes:
    """``to_bytes(render(record, **options), format, quality)``, the same pixels, without the RGB round
    trip: the palette page is PNG-encoded directly (about 1.6x faster per page).

    Example: ``render_bytes(rec, layout="12x1", augment=True, seed=1)[:4] == b"\x89PNG"``.
    """
    page = _page(record, options.pop("width", 1100), options.pop("height", 850),
                 options.pop("layout", "3x4"), options.pop("augment", False), options.pop("seed", None),
                 options.pop("style", None))
    if options:
        raise TypeError(f"render_bytes: unexpected option(s) {sorted(options)}")
    return to_bytes(page if format.upper() == "PNG" else page.convert("RGB"), format, quality)


def page_image(record: Record, *, width: int, height: int, layout: str, style: Style) -> Image.Image:
    """The page as a palette ("P") image with its palette set, drawn in ``style`` (no augmentation)."""
    return _page(record, width, height, layout, False, 0, style)


def _page(record: Record, width: int, height: int, layout: str, augment: bool, seed: int | None,
          style: Style | None = None):
    """The page as a palette ("P") image with its palette set."""
    style = style or Style()
    g = geometry(width, height, layout, speed=style.speed, top_mm=style.top_mm)
    rng = np.random.default_rng(zlib.crc32(record.id.encode()) if seed is None else seed)
    palette = [style.paper, style.minor, style.major, style.ink, style.text]
    grid = style.grid
    line_w = max(1, int(round(style.line_mm * g.ppm)))  # about 0.35 mm, as a thermal printer's trace
    if augment:
        palette, on, line_w = _augment_style(rng, line_w)
        grid = grid if on else "none"
    canvas = _background(width, height, layout, grid, style.top_mm).copy()  # (H, W) palette indices
    draw = ImageDraw.Draw(canvas)
    _draw_calibration(draw, g, line_w, style)
    _draw_traces(canvas, draw, record, g, layout, line_w, style)
    _draw_header(canvas, g, style)
    if augment:
        canvas = _augment_page(canvas, draw, g, rng, palette)
    canvas.putpalette([v for rgb in palette for v in rgb])
    return canvas


def _augment_style(rng: np.random.Generator, line_w: int) -> tuple[list, bool, int]:
    """Paper colour, grid colour (a little lighter or darker), ink, grid on/off and trace width."""
    paper = PAPERS[rng.integers(len(PAPERS))]
    shade = rng.uniform(-25, 15)
    minor, major = (tuple(int(np.clip(c + shade, 0, 255)) for c in col) for col in (GRID_MINOR, GRID_MAJOR))
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    grid = bool(rng.random() > 0.15)
    return [paper, minor, major, ink, (40, 40, 40)], grid, max(1, line_w + int(rng.integers(-1, 2)))


def _augment_page(canvas: Image.Image, draw: ImageDraw.ImageDraw, g: Geometry, rng,
                  palette: list) -> Image.Image:
    """Header text, speckle noise and a small rotation on the palette canvas.

    Everything stays in palette colours (noise is speckles of a few greys, rotation is nearest-
    neighbour), so an augmented page is still cheap to PNG-encode.
    """
    if rng.random() < 0.5:
        _put_text(canvas, (g.x0, 0.3 * TOP_MM * g.ppm), "25 mm/s   10 mm/mV   0.05-150 Hz",
                  max(8, round(2.8 * g.ppm)), I_TEXT)
    if rng.random() < 0.5:
        greys = [(int(v),) * 3 for v in rng.integers(60, 230, 8)]
        palette.extend(greys)
        arr = np.asarray(canvas).copy()  # (H, W) palette indices
        hit = rng.random(arr.shape) < rng.uniform(0.005, 0.03)
        arr[hit] = rng.integers(5, 5 + len(greys), int(hit.sum()))
        canvas = Image.fromarray(arr, mode="P")
    if rng.random() < 0.6:
        angle = float(rng.uniform(-2.0, 2.0))  # degrees
        canvas = canvas.rotate(angle, resample=Image.NEAREST, fillcolor=I_PAPER)
    return canvas


def to_bytes(image: Image.Image, format: str = "PNG", quality: int = 90) -> bytes:
    """Encode a page: ``"PNG"`` (lossless, fast zlib level 1) or ``"JPEG"`` (``quality`` 1-95).

    Example: ``to_bytes(render(rec), "JPEG")[:2] == b"\\xff\\xd8"``.
    """
    buf = io.BytesIO()
    fmt = format.upper()
    if fmt == "PNG":
        _palette_or_rgb(image).save(buf, format="PNG", compress_level=1)
    elif fmt in ("JPEG", "JPG"):
        image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    else:
        raise ValueError(f"unsupported image format {format!r}; use PNG or JPEG")
    return buf.getvalue()


def _palette_or_rgb(image: Image.Image) -> Image.Image:
    """The image in "P" mode when that is lossless (at most 256 colours), else unchanged.

    A rendered page has five colours; PNG-encoding it as a palette image is 3-4x faster and smaller.
    The conversion is checked to be exact, so the PNG always decodes to the same RGB page.
    """
    if image.mode != "RGB":
        return image  # a palette page from render_bytes, or a grey / RGBA image: saved as it is
    colours = image.getcolors(256)
    if colours is None:
        return image
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for _, rgb in colours for v in rgb])
    # quantize maps a pixel by its colour alone (through a colour cache that can merge near colours),
    # so mapping each distinct colour once, on a 1 x K strip, shows whether the whole image is exact.
    strip = Image.new("RGB", (len(colours), 1))
    strip.putdata([rgb for _, rgb in colours])
    if list(strip.quantize(palette=palette, dither=Image.Dither.NONE).getdata()) != list(range(len(colours))):
        return image
    return image.quantize(palette=palette, dither=Image.Dither.NONE)
