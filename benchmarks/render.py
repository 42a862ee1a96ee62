"""Page rendering throughput: ``ecg.render`` against a plain matplotlib rendering of the same page, one run.

    python benchmarks/render.py                  # 40 pages, 1100 x 850
    python benchmarks/render.py --n 100 --width 2200 --height 1700

The page presets (``ecg.pages``: clean, varied, photo) are timed beside them; the issue's floor for a 1100 x 850
page is ``varied`` >= 20 pages/s and ``photo`` >= 10 pages/s per core (ecg-image-kit publishes 0.72 s a page
clean, 2.65 s augmented, 7.75 s with every artifact, on an Apple M2 at 2200 x 1700).

Ours and matplotlib draw the same 12-lead page (3 x 4 segments of 2.5 s plus a 10 s lead II strip,
1 mm / 5 mm grid, calibration pulses, lead labels) from the same synthetic records at the same pixel size,
and every figure includes encoding (PNG; JPEG quality 90 too). Ours is timed two ways: ``render`` +
``to_bytes`` (RGB page, then PNG through an exact palette conversion) and ``render_bytes`` (the palette
page encoded directly; same pixels). One thread (set before numpy loads). Printed: images/s by wall clock
and by this process's CPU time (the fairer figure on a shared machine), bytes per image, and the ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ecg.render import (  # noqa: E402
    GAIN, GRID_MAJOR, GRID_MINOR, LAYOUTS, SPEED, geometry, render, render_bytes, to_bytes,
)
from ecg.pages import page_bytes  # noqa: E402
from ecg.synth import generate  # noqa: E402


def matplotlib_page(record, width: int, height: int, fmt: str) -> bytes:
    """The same 3x4 + rhythm-strip page drawn the plain matplotlib way (Agg, lines + grid + text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = geometry(width, height)
    w_mm, h_mm = width / g.ppm, height / g.ppm
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w_mm)
    ax.set_ylim(h_mm, 0)
    ax.axis("off")
    colour = lambda c: tuple(v / 255 for v in c)  # noqa: E731
    ax.vlines(np.arange(0, w_mm, 1), 0, h_mm, colors=[colour(GRID_MINOR)], linewidth=0.5)
    ax.hlines(np.arange(0, h_mm, 1), 0, w_mm, colors=[colour(GRID_MINOR)], linewidth=0.5)
    ax.vlines(np.arange(g.x0_mm % 5, w_mm, 5), 0, h_mm, colors=[colour(GRID_MAJOR)], linewidth=0.8)
    ax.hlines(np.arange(g.baselines_mm[0] % 5, h_mm, 5), 0, w_mm, colors=[colour(GRID_MAJOR)], linewidth=0.8)
    rows, seg, _ = LAYOUTS["3x4"]
    panels = [(name, r, k * seg) for r, names in enumerate(rows) for k, name in enumerate(names)]
    panels.append(("II", len(rows), None))
    for name, row, t0 in panels:
        sig = record.lead(name)
        base = g.baselines_mm[row]
        i0, i1 = (0, sig.size) if t0 is None else (int(t0 * record.fs), int((t0 + seg) * record.fs))
        t = np.arange(i0, i1) / record.fs
        x0 = g.x0_mm + (0 if t0 is None else t0 * SPEED)
        ax.plot(x0 + (t - (t0 or 0)) * SPEED, base - sig[i0:i1] * GAIN, color="k", linewidth=0.8)
        ax.text(x0 + 0.8, base - 9, name, fontsize=8, va="top")
    for base in g.baselines_mm:
        xa = g.x0_mm - 9
        ax.plot([xa - 2, xa, xa, xa + 5, xa + 5, xa + 7], [base, base, base - 10, base - 10, base, base],
                color="k", linewidth=0.8)
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 90}} if fmt == "JPEG" else {}
    fig.savefig(buf, format=fmt.lower(), dpi=100, **extra)
    plt.close(fig)
    return buf.getvalue()


def timed(fn, records) -> tuple[float, float, int]:
    """(images/s by wall clock, images/s by process CPU time, mean bytes) over ``records``."""
    fn(records[0])  # warm-up: caches, imports
    wall, cpu = time.perf_counter(), time.process_time()
    sizes = [len(fn(r)) for r in records]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(records) / wall, len(records) / cpu, int(np.mean(sizes))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="pages per variant")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=850)
    args = parser.parse_args(argv)
    records = list(generate(args.n, seed=0))
    size = {"width": args.width, "height": args.height}
    variants = {
        "ecg.render + PNG": lambda r: to_bytes(render(r, **size), "PNG"),
        "ecg.render.render_bytes PNG": lambda r: render_bytes(r, **size),
        "ecg.render + JPEG q90": lambda r: to_bytes(render(r, **size), "JPEG", 90),
        "ecg.render augmented + PNG": lambda r: to_bytes(render(r, augment=True, **size), "PNG"),
        # the page presets of ecg.pages, seeded per record as prepare does (photo pages are JPEG)
        "pages clean (PNG)": lambda r: page_bytes(r, "clean", seed=hash(r.id) % 2**31, **size)[0],
        "pages varied (PNG)": lambda r: page_bytes(r, "varied", seed=hash(r.id) % 2**31, **size)[0],
        "pages photo (JPEG)": lambda r: page_bytes(r, "photo", seed=hash(r.id) % 2**31, **size)[0],
        "matplotlib + PNG": lambda r: matplotlib_page(r, args.width, args.height, "PNG"),
        "matplotlib + JPEG q90": lambda r: matplotlib_page(r, args.width, args.height, "JPEG"),
    }
    mpl_records = records[: max(5, args.n // 4)]  # matplotlib is slow: fewer pages, same records
    results = {}
    print(f"{args.width} x {args.height} px, one thread")
    print(f"{'variant':30s} {'img/s wall':>11s} {'img/s cpu':>10s} {'bytes/img':>10s}")
    for name, fn in variants.items():
        results[name] = timed(fn, mpl_records if name.startswith("matplotlib") else records)
        wall, cpu, nbytes = results[name]
        print(f"{name:30s} {wall:11.1f} {cpu:10.1f} {nbytes:10d}")
    pairs = (("ecg.render + PNG", "matplotlib + PNG"), ("ecg.render.render_bytes PNG", "matplotlib + PNG"),
             ("ecg.render + JPEG q90", "matplotlib + JPEG q90"), ("pages varied (PNG)", "pages clean (PNG)"),
             ("pages photo (JPEG)", "pages clean (PNG)"), ("pages varied (PNG)", "matplotlib + PNG"),
             ("pages photo (JPEG)", "matplotlib + JPEG q90"))
    for ours_name, theirs_name in pairs:
        ours, theirs = results[ours_name], results[theirs_name]
        print(f"ratio {ours_name} / {theirs_name}: {ours[0] / theirs[0]:.1f}x wall, "
              f"{ours[1] / theirs[1]:.1f}x cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
