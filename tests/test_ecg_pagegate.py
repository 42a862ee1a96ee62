"""ecg/pagegate.py: the "is this an ECG page?" check on real images: our rendered pages (every preset ecg.render
offers, augmented, photographed, blurred JPEG), pages matplotlib drew, and images that are not ECGs (charts,
photo-like 1/f noise, white noise, text pages, blank pages, graph paper). Prints the error rates both ways."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ecg.pagegate import check_page
def ecg_pages(n=6):
    """Our rendered pages, each preset ecg.render offers, photographed and blurred, and matplotlib-drawn pages."""
    from ecg import render, synth
    out = {}
    from ecg import pages as page_presets  # every preset the renderer offers (clean, varied, photo, ...)

    presets = page_presets.PRESETS
    for i in range(n):
        rec = synth.record(i, seed=7)
        out[f"default-{i}"] = render.render(rec, layout=("3x4", "6x2", "12x1")[i % 3])
        out[f"augment-{i}"] = render.render(rec, augment=True, seed=i)
        if presets:
            for name in presets:
                data, _ = page_presets.page_bytes(rec, name, seed=i)
                out[f"{name}-{i}"] = Image.open(io.BytesIO(data)).convert("RGB")
        out[f"small-{i}"] = render.render(rec, width=550, height=425)
        out[f"photographed-{i}"] = photo(render.render(rec, augment=True, seed=100 + i), np.random.default_rng(i))
        out[f"jpeg-blur-{i}"] = Image.open(io.BytesIO(render.to_bytes(render.render(rec).filter(ImageFilter.GaussianBlur(1.2)), "JPEG", 40)))
        out[f"matplotlib-{i}"] = mpl_ecg(rec, i)
    for k, rec in enumerate(synth.generate(12, seed=2)):  # the synthetic source's clean pages, low voltage among them
        out[f"default-gen-{k}"] = render.render(rec)
    return out

def photo(page, rng):
    """A page photographed: rotated, shaded unevenly, blurred, noisy, on a darker desk."""
    angle = float(rng.uniform(-10, 10))
    page = page.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=(90, 80, 70))
    a = np.asarray(page, dtype=np.float32)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 0.75 + 0.25 * (xx / w) * (1 - 0.5 * yy / h)
    a = a * shade[..., None] * np.array([1.0, 0.95, 0.85]) + rng.normal(0, 6, a.shape)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return img.resize((int(w * 0.8), int(h * 0.8)))

def mpl_ecg(rec, i):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = [("#f4a6a6", "#e06060"), ("#b8e0b8", "#60a060"), ("#c0c8f0", "#7080d0"), ("#dddddd", "#999999")]
    minor, major = colours[i % 4]
    fig, axes = plt.subplots(6, 2, figsize=(11, 8.5), dpi=80)
    t = np.arange(rec.signal.shape[1]) / rec.fs
    for k, ax in enumerate(axes.T.flat):
        ax.plot(t[: int(5 * rec.fs)], rec.signal[k][: int(5 * rec.fs)], color="black", lw=0.8)
        ax.set_xticks(np.arange(0, 5, 0.04), minor=True); ax.set_xticks(np.arange(0, 5.01, 0.2))
        ax.set_yticks(np.arange(-2, 2, 0.1), minor=True); ax.set_yticks(np.arange(-2, 2.01, 0.5))
        ax.grid(which="minor", color=minor, lw=0.4); ax.grid(which="major", color=major, lw=0.8)
        ax.set_ylim(-1.5, 1.5); ax.set_xlim(0, 5); ax.tick_params(labelbottom=False, labelleft=False, length=0)
    buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
    return Image.open(buf).convert("RGB")

def not_pages(n=6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    for i in range(n):
        rng = np.random.default_rng(i)
        fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
        kind = ("bar", "line", "scatter", "hist", "pie", "multiline")[i % 6]
        if kind == "bar": ax.bar(range(8), rng.random(8)); ax.grid(True)
        elif kind == "line": ax.plot(np.cumsum(rng.normal(size=400))); ax.grid(True)
        elif kind == "scatter": ax.scatter(rng.random(200), rng.random(200))
        elif kind == "hist": ax.hist(rng.normal(size=1000), bins=40); ax.grid(True)
        elif kind == "pie": ax.pie(rng.random(5) + 0.1)
        else:
            for k in range(5): ax.plot(np.sin(np.linspace(0, 20, 500) + k) + 3 * k, color="black")
            ax.minorticks_on(); ax.grid(which="both")
        buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
        out[f"chart-{kind}-{i}"] = Image.open(buf).convert("RGB")
        out[f"noise-photo-{i}"] = pink_noise(rng, (768, 1024))
        out[f"noise-white-{i}"] = Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
        page = Image.new("RGB", (850, 1100), "white"); d = ImageDraw.Draw(page)
        font = ImageFont.load_default(size=14 + 2 * i)
        words = ["ECG", "report", "patient", "rhythm", "sinus", "the", "a", "normal", "QRS", "interval", "lorem", "ipsum"]
        for y in range(40, 1060, 22 + 2 * i):
            d.text((40, y), " ".join(rng.choice(words, 12)), fill="black", font=font)
        out[f"text-{i}"] = page
        out[f"blank-{i}"] = Image.new("RGB", (1100, 850), [(255, 255, 255), (250, 245, 230), (30, 30, 30), (200, 220, 255), (255, 240, 240), (128, 128, 128)][i % 6])
        graph = Image.new("RGB", (1100, 850), "white"); d = ImageDraw.Draw(graph)
        for x in range(0, 1100, 20 + 5 * i): d.line([(x, 0), (x, 850)], fill=(180, 200, 230))
        for y in range(0, 850, 20 + 5 * i): d.line([(0, y), (1100, y)], fill=(180, 200, 230))
        out[f"graph-paper-{i}"] = graph
    return out

def pink_noise(rng, shape):
    """A photo-like image: 1/f noise (natural images' spectrum) in three channels."""
    h, w = shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.sqrt(fx ** 2 + fy ** 2); f[0, 0] = 1
    chans = []
    for _ in range(3):
        spec = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / f
        x = np.real(np.fft.ifft2(spec)); x = (x - x.mean()) / x.std()
        chans.append(128 + 50 * x)
    return Image.fromarray(np.uint8(np.clip(np.stack(chans, -1), 0, 255)))


@pytest.fixture(scope="module")
def samples():
    return ecg_pages(3), not_pages(6)


def test_gate_error_rates_on_pages_and_non_pages(samples):
    pages, others = samples
    missed = sorted(k for k, im in pages.items() if not check_page(im).is_page)
    passed = sorted(k for k, im in others.items() if check_page(im).is_page)
    print(f"\npage gate: {len(missed)}/{len(pages)} ECG pages refused ({100 * len(missed) / len(pages):.1f}%): "
          f"{missed}; {len(passed)}/{len(others)} non-ECG images passed ({100 * len(passed) / len(others):.1f}%): "
          f"{passed}")
    assert len(missed) <= 0.1 * len(pages) and len(passed) <= 0.1 * len(others)
    for kind in ("default", "clean", "small", "jpeg-blur"):  # our own clean pages: every one
        assert not [k for k in missed if k.startswith(kind)], missed
    for kind in ("blank", "noise-white", "text", "graph-paper"):  # no trace at all: never a page
        assert not [k for k in passed if k.startswith(kind)], passed


def test_gate_result_fields():
    blank = check_page(Image.new("RGB", (1100, 850), "white"))
    assert not blank.is_page and blank.score == 0.0 and blank.traces == 0
    assert set(blank.to_dict()) == {"is_page", "score", "grid", "traces", "angle"}
