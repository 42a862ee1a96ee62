"""The README's and the docs' picture, made with the project's own code: a synthetic page as ``ecg.render`` draws
it, and the per-class F1 figure of an ``ecgvlm evaluate`` report (``metrics.report.plots``), as small PNGs.

    python docs/figures.py --eval ./demo-run/eval          # after make demo: both figures into docs/img/
    python docs/figures.py                                 # the page only

The page is record ``--record`` of ``ecg.synth`` (seed 0), drawn at 1100 x 850 px and scaled to ``--width`` px.
The F1 figure is the CODE-15 task's bars from ``<eval>/metrics.json``, as ``report.html`` shows them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def page_png(index: int, width: int) -> tuple[bytes, tuple[str, ...]]:
    """``(PNG bytes, labels)`` of synthetic record ``index``, rendered as the paper page, ``width`` px wide."""
    from PIL import Image

    from ecg import render, synth

    rec = synth.record(index, 0)
    page = render.render(rec)  # 1100 x 850 RGB
    small = page.resize((width, round(page.height * width / page.width)), Image.LANCZOS).convert("L")
    buf = io.BytesIO()
    small.quantize(16).save(buf, format="PNG", optimize=True)  # a grey page: 16 levels keep the grid and traces
    return buf.getvalue(), tuple(rec.labels)


def f1_png(eval_dir: Path, task: str = "code15") -> bytes:
    """The report's per-class F1 figure of ``task`` from ``<eval_dir>/metrics.json``."""
    from metrics.report import plots

    results = json.loads((eval_dir / "metrics.json").read_text())
    figures = dict(plots({task: results[task]}))
    return base64.b64decode(figures[f"{task}: per-class F1"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, help="an ecgvlm evaluate --out folder (for the F1 figure)")
    p.add_argument("--record", type=int, default=6, help="synthetic record to draw")
    p.add_argument("--width", type=int, default=550, help="page width in the docs, px")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    png, labels = page_png(args.record, args.width)
    (args.out / "page.png").write_bytes(png)
    print(f"page.png: synthetic record {args.record} ({', '.join(labels)}), {len(png)} bytes")
    if args.eval:
        png = f1_png(args.eval)
        (args.out / "report-f1.png").write_bytes(png)
        print(f"report-f1.png: {args.eval}/metrics.json, {len(png)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
