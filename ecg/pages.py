"""Page presets: seeded domain randomization of the paper page, so a model meets the pages users hold.

Three presets, each a seeded recipe drawn once per page and kept in the row's ``meta["page"]``:

- ``clean``: today's printout (3x4 + lead II strip, 25 mm/s, 10 mm/mV, red grid); ``augment`` adds the light
  paper-style augmentations of :func:`ecg.render.render`.
- ``varied``: the published layouts (3x4, 3x4+1, 3x4+3, 6x2, 2x6, 12x1), speed 25/50 mm/s and gain 5/10/20
  mm/mV (the answer never changes), printed header blocks with made-up measurements (never the record's own: a
  page must not leak its answer in text), lead-label styles and fonts, calibration pulse on/off, grid colours,
  pitches and styles (lines, major only, dots, none), ink and line widths, and page resolution.
- ``photo``: a ``varied`` page, then a scan or a phone photo of it: perspective, rotation, blur, uneven light and
  shadows, creases and wrinkles, sensor/scanner noise, and JPEG compression.

A recipe is plain JSON: ``page_bytes(rec, "photo", seed=3)`` returns the image and the recipe, and
``draw(rec, recipe)`` redraws the same pixels from it. Pages are cheap: :mod:`benchmarks.render` measures each
preset beside ``clean``.

Example::

    from ecg.synth import record
    from ecg.pages import page_bytes
    data, recipe = page_bytes(record(0), "varied", seed=7, width=1100, height=850)
    recipe["layout"], recipe["style"]["speed"], recipe["style"]["gain"]   # e.g. "6x2", 25.0, 10.0
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ecg.record import Record
from ecg.render import LAYOUTS, TOP_MM, Style, page_image, render, to_bytes

PRESETS = ("clean", "varied", "photo")
VARIED_LAYOUTS = {"3x4+1": 0.35, "3x4+0": 0.1, "3x4+3": 0.15, "6x2": 0.15, "2x6": 0.1, "12x1": 0.15}
FONTS = ("", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "cmss10.ttf")
GRIDS = {"lines": 0.6, "major": 0.12, "dots": 0.1, "none": 0.18}
# (minor, major) grid colours of printers and ECG papers: red, pink, orange, green, blue, grey
GRID_COLOURS = (((246, 196, 196), (232, 128, 128)), ((250, 215, 225), (235, 150, 175)),
                ((250, 220, 190), (235, 165, 110)), ((205, 235, 205), (130, 195, 130)),
                ((205, 220, 245), (125, 160, 220)), ((220, 220, 220), (160, 160, 160)))
PAPERS = ((255, 253, 250), (252, 247, 232), (255, 240, 240), (240, 244, 248), (250, 250, 250), (255, 255, 255))
INKS = ((0, 0, 0), (20, 20, 90), (40, 40, 40), (10, 60, 30), (60, 0, 0))
DEVICES = ("MAC 5500 HD", "PageWriter TC70", "CardioSoft 6.7", "ELI 280", "CP 150", "AT-102 G2", "Cardiovit MS-2015",
           "ECG-1250", "MUSE v9", "CardioExpress SL18A")


def _choice(rng: np.random.Generator, weights: dict):
    keys = list(weights)
    p = np.array([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _header(rng: np.random.Generator) -> tuple[str, ...]:
    """2-4 lines of printout header with made-up (never the record's) measurements, a date and a device."""
    day = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 3650)))
    hh, mm = int(rng.integers(0, 24)), int(rng.integers(0, 60))
    lines = [f"ID: {int(rng.integers(10**6, 10**7))}   {day.isoformat()} {hh:02d}:{mm:02d}   "
             f"{int(rng.integers(18, 95))} yrs   {'Male' if rng.random() < 0.5 else 'Female'}",
             f"Vent. rate {int(rng.integers(45, 140))} bpm   PR {int(rng.integers(110, 260))} ms   "
             f"QRS {int(rng.integers(70, 160))} ms   QT/QTc {int(rng.integers(320, 460))}/{int(rng.integers(380, 490))} ms",
             f"P-R-T axes {int(rng.integers(-30, 90))} {int(rng.integers(-60, 120))} {int(rng.integers(-30, 90))}",
             f"{DEVICES[int(rng.integers(len(DEVICES)))]}   25 mm/s   10 mm/mV   0.05-{int(rng.choice([40, 100, 150]))} Hz"]
    keep = sorted(rng.choice(len(lines), size=int(rng.integers(2, 5)), replace=False))
    return tuple(lines[k] for k in keep)


def varied_style(rng: np.random.Generator) -> Style:
    """A randomized page style (see the module docstring for what varies)."""
    minor, major = GRID_COLOURS[int(rng.integers(len(GRID_COLOURS)))]
    shade = rng.uniform(-20, 10)
    minor, major = (tuple(int(np.clip(c + shade, 0, 255)) for c in col) for col in (minor, major))
    header = _header(rng) if rng.random() < 0.6 else ()
    return Style(
        speed=float(rng.choice([25.0, 50.0], p=[0.9, 0.1])),
        gain=float(rng.choice([5.0, 10.0, 20.0], p=[0.12, 0.76, 0.12])),
        paper=PAPERS[int(rng.integers(len(PAPERS)))], minor=minor, major=major,
        ink=INKS[int(rng.integers(len(INKS)))], text=(40, 40, 40), grid=_choice(rng, GRIDS),
        line_mm=round(float(rng.uniform(0.2, 0.55)), 2), font=FONTS[int(rng.integers(len(FONTS)))],
        label_mm=round(float(rng.uniform(2.4, 4.4)), 1), label_box=bool(rng.random() < 0.2),
        ticks=bool(rng.random() < 0.7), calibration="left" if rng.random() < 0.8 else "none",
        header=header, top_mm=TOP_MM + 3.4 * len(header))


def _photo_recipe(rng: np.random.Generator) -> dict:
    """Scan (flat light, small rotation, scanner noise) or phone photo (perspective, light, shadow, blur)."""
    phone = bool(rng.random() < 0.6)
    return {"kind": "phone" if phone else "scan",
            "angle": round(float(rng.uniform(-5, 5) if phone else rng.uniform(-2, 2)), 2),  # degrees
            "corners": np.round(rng.uniform(-0.05, 0.05, 8) if phone else np.zeros(8), 4).tolist(),
            "light": np.round(rng.uniform(0.65, 1.05, (3, 3)) if phone else rng.uniform(0.92, 1.0, (3, 3)),
                              3).tolist(),
            "shadow": round(float(rng.uniform(0.55, 0.85)), 2) if phone and rng.random() < 0.5 else None,
            "creases": int(rng.integers(0, 4)), "blur": round(float(rng.uniform(0.0, 1.4)), 2),
            "noise": round(float(rng.uniform(2, 9)), 1), "background": [int(v) for v in rng.integers(30, 120, 3)],
            "quality": int(rng.integers(35, 90)), "seed": int(rng.integers(2**31))}


def recipe(preset: str, seed: int, *, width: int = 1100, height: int = 850, layout: str = "3x4",
           augment: bool = False) -> dict:
    """The JSON recipe of one page. ``clean`` keeps ``layout``/``augment``; the others draw everything.

    Example: ``recipe("varied", 3)["layout"] in VARIED_LAYOUTS`` -> True.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown page preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset == "clean":
        return {"preset": "clean", "seed": int(seed), "width": width, "height": height, "layout": layout,
                "augment": bool(augment)}
    rng = np.random.default_rng([int(seed), 20261206])
    scale = float(rng.uniform(0.8, 1.25))  # resolution: the page's px/mm varies, its aspect stays
    out = {"preset": preset, "seed": int(seed), "width": int(round(width * scale)),
           "height": int(round(height * scale)), "layout": _choice(rng, VARIED_LAYOUTS),
           "style": dataclasses.asdict(varied_style(rng))}
    if preset == "photo":
        out["photo"] = _photo_recipe(rng)
    return out


def draw(record: Record, page: dict) -> Image.Image:
    """The page a recipe describes: a palette image (clean, varied) or RGB (photo)."""
    if page["preset"] == "clean":
        return render(record, width=page["width"], height=page["height"], layout=page["layout"],
                      augment=page["augment"], seed=page["seed"])
    style = page["style"]
    style = Style(**{k: tuple(v) if isinstance(v, list) else v for k, v in style.items()})
    image = page_image(record, width=page["width"], height=page["height"], layout=page["layout"], style=style)
    return photograph(image, page["photo"]) if page.get("photo") else image


def page_bytes(record: Record, preset: str, *, seed: int, width: int = 1100, height: int = 850,
               layout: str = "3x4", augment: bool = False, format: str = "PNG",
               quality: int = 90) -> tuple[bytes, dict]:
    """``(encoded page, recipe)``; a ``photo`` page is always JPEG at the recipe's quality (as photos are)."""
    page = recipe(preset, seed, width=width, height=height, layout=layout, augment=augment)
    image = draw(record, page)
    if preset == "photo":
        return to_bytes(image, "JPEG", page["photo"]["quality"]), {**page, "format": "JPEG"}
    return to_bytes(image, format, quality), {**page, "format": format.upper()}


# ---- photo and scan artifacts ------------------------------------------------------------------------------


def _homography(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output corners ``dst`` (4, 2) to input corners ``src`` (4, 2)."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(a, float), src.reshape(8)).tolist()


def _field(values, size: tuple[int, int]) -> np.ndarray:
    """A smooth (H, W) float32 field from a small grid of values (bilinear upsampling)."""
    small = Image.fromarray(np.asarray(values, np.float32), mode="F")
    return np.asarray(small.resize(size, Image.BILINEAR), np.float32)


_NOISE = np.random.default_rng(11).standard_normal((1 << 21,)).astype(np.float32)  # 8 MB, drawn once


def photograph(page: Image.Image, photo: dict) -> Image.Image:
    """``page`` as a scan or a phone photo, following ``photo`` (a recipe from :func:`recipe`). RGB out."""
    rng = np.random.default_rng(photo["seed"])
    w, h = page.size
    img = page.convert("RGB")
    if photo["creases"]:  # folds: thin light/dark lines, blurred, multiplied into the paper
        mask = Image.new("L", (w // 4, h // 4), 128)
        d = ImageDraw.Draw(mask)
        for _ in range(photo["creases"]):
            x0, x1 = rng.uniform(0, w // 4, 2)
            y0, y1 = (0, h // 4) if rng.random() < 0.5 else rng.uniform(0, h // 4, 2)
            d.line([(x0, y0), (x1, y1)], fill=int(rng.choice([95, 160])), width=int(rng.integers(1, 3)))
        fold = np.asarray(mask.filter(ImageFilter.BoxBlur(1)).resize((w, h), Image.BILINEAR), np.float32) / 128
    else:
        fold = 1.0
    light = _field(photo["light"], (w, h)) * fold  # (H, W) gain
    if photo["shadow"] is not None:  # a hand or phone's shadow: a soft dark band from one edge
        xs = np.linspace(0, 1, w, dtype=np.float32)
        edge = float(rng.uniform(0.15, 0.45))
        band = 1 - (1 - photo["shadow"]) / (1 + np.exp((xs - edge) * 25))  # (W,)
        light = light * (band if rng.random() < 0.5 else band[::-1])[None, :]
    arr = np.asarray(img, np.float32)  # (H, W, 3)
    arr *= light[..., None]
    start = int(rng.integers(0, max(1, _NOISE.size - w * h)))
    noise = _NOISE[start:start + w * h] if _NOISE.size >= w * h else np.resize(_NOISE, w * h)
    arr += photo["noise"] * noise.reshape(h, w, 1)  # sensor noise, grey
    np.clip(arr, 0, 255, out=arr)
    img = Image.fromarray(arr.astype(np.uint8), mode="RGB")
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    c = np.deg2rad(photo["angle"])
    rot = np.array([[np.cos(c), -np.sin(c)], [np.sin(c), np.cos(c)]])
    dst = (corners - [w / 2, h / 2]) @ rot.T * 0.96 + [w / 2, h / 2]  # rotated, a margin of table around
    dst += np.array(photo["corners"]).reshape(4, 2) * [w, h]
    # Out of focus: the warp writes a smaller image that is scaled back up (a cheap optical blur; a Gaussian
    # blur of the full page cost more than everything else together).
    k = 1.0 + max(0.0, photo["blur"] - 0.3)
    small = (max(1, int(w / k)), max(1, int(h / k)))
    coeffs = _homography(corners, dst * [small[0] / w, small[1] / h])
    img = img.transform(small, Image.PERSPECTIVE, coeffs, Image.BILINEAR, fillcolor=tuple(photo["background"]))
    return img.resize((w, h), Image.BILINEAR) if small != (w, h) else img


def presets_mix(text: str | dict) -> dict[str, float]:
    """``"varied"`` -> ``{"varied": 1.0}``; ``"clean=0.2,varied=0.5,photo=0.3"`` -> that mix (sums to 1).

    Example: ``presets_mix("clean=1,photo=1")`` -> ``{"clean": 0.5, "photo": 0.5}``.
    """
    if isinstance(text, dict):
        mix = {str(k): float(v) for k, v in text.items()}
    elif "=" not in text:
        mix = {text.strip(): 1.0}
    else:
        mix = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            try:
                mix[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"pages: {part!r} is not PRESET=WEIGHT") from None
    unknown = sorted(set(mix) - set(PRESETS))
    if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"pages: {text!r}: use one of {', '.join(PRESETS)} or a mix such as clean=0.3,varied=0.7")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items() if v > 0}


def pick_preset(mix: dict[str, float], u: float) -> str:
    """The preset at position ``u`` in [0, 1) of the cumulative ``mix``."""
    acc = 0.0
    for name, weight in mix.items():
        acc += weight
        if u < acc:
            return name
    return next(reversed(mix))


assert set(VARIED_LAYOUTS) <= set(LAYOUTS)
