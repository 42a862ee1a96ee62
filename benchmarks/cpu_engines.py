"""CPU engines side by side on the same pages: HF transformers (float32, bfloat16), OpenVINO (float32, bf16, int8
weights), ONNX Runtime (float32, int8 weights), unsplit and with SmolVLM's 17-tile splitting.

    python benchmarks/cpu_engines.py                                         # every installed engine, unsplit + split
    python benchmarks/cpu_engines.py --variants hf-fp32,ov-bf16,ov-int8 --splitting off --rows 8

The model is the real SmolVLM-256M-Instruct architecture with random weights (``random:<config folder>``, built
in-process: nothing is downloaded); pages are ``--rows`` different synthetic 1100 x 850 ECGs; the question and
labels are code15's. Each variant runs in its own process (so its peak memory is its own) on the same pages, one
batch of all rows through ``run_encoded`` exactly as ``ecgvlm evaluate --decoding fast`` runs it: vision, prefill,
``--new-tokens`` greedy tokens (stop tokens forbidden until then: random weights neither stop early nor differ in
length), label scores. Printed per variant: pages/s of the batch, time to first token of one page alone (vision +
prefill), decode tokens/s of the batch, CPU seconds per page of the batch (all the process's threads: on a shared
machine the steadier measure of the work), peak RSS (MB), the load average when it ran, and agreement with hf-fp32:
rows whose greedy answer is the same text, and the largest label-probability difference. Conversions are cached
(vlm/cpu_cache.py); the first run of a variant converts (its time is printed apart, not counted in pages/s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SMOLVLM = os.environ.get("ECGVLM_SMOLVLM_DIR", str(REPO.parent / "shared" / "models" / "SmolVLM-256M-Instruct"))
VARIANTS = {"hf-fp32": ("hf", "float32"), "hf-bf16": ("hf", "bfloat16"), "ov-fp32": ("openvino", "float32"),
            "ov-bf16": ("openvino", "bfloat16"), "ov-int8": ("openvino", "int8"),
            "ort-fp32": ("onnxruntime", "float32"), "ort-int8": ("onnxruntime", "int8")}  # fmt: skip


def predictor(model: str, engine: str, dtype: str, split: bool, cache_dir: str | None):
    import vlm

    if engine == "hf":
        return vlm.Predictor(model, device="cpu", dtype=dtype, image_splitting=split)
    from vlm.cpu_engine import cpu_predictor

    return cpu_predictor(model, engine=engine, dtype=dtype, image_splitting=split, cache_dir=cache_dir)


def run_one(args) -> dict:
    """One variant in this process: load (converting on a cache miss), warm up, time one page and the batch."""
    import torch

    from benchmarks.stages import make_pages
    from metrics.tasks import get_task

    torch.set_num_threads(args.threads)
    engine, dtype = VARIANTS[args.one]
    task = get_task("code15")
    labels = list(task.labels)
    t0 = time.perf_counter()
    p = predictor(args.model, engine, dtype, args.split == "on", args.cache_dir)
    load_s = time.perf_counter() - t0
    rows = [p.encode_one(pg, task.question, max_new_tokens=args.new_tokens) for pg in make_pages(args.rows)]
    p.run_encoded(rows[:1], max_new_tokens=2, labels=labels)  # warm-up: first-call allocations, kernel choice
    one: dict = {}
    p.run_encoded(rows[:1], max_new_tokens=1, timings=one)
    timings: dict = {}
    load = os.getloadavg()[0]
    cpu0, t0 = time.process_time(), time.perf_counter()
    answers, scores = p.run_encoded(rows, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                    labels=labels, timings=timings)  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"cpu_s_per_page": cpu / len(rows), "variant": args.one, "split": args.split, "rows": len(rows),
            "wall_s": wall,
            "pages_per_s": len(rows) / wall, "ttft_s": one["vision"] + one["prefill"],
            "tokens_per_s": len(rows) * args.new_tokens / timings["decode"], "stages": timings,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "load": load,
            "load_s": load_s, "converted": bool(getattr(p, "converted", False)), "answers": answers,
            "scores": scores}  # fmt: skip


def agreement(ref: dict, res: dict) -> tuple[str, str]:
    """``("same answers k/n", "max |dP|")`` against the reference variant's rows."""
    same = sum(a == b for a, b in zip(ref["answers"], res["answers"]))
    diff = max(abs(x[k] - y[k]) for x, y in zip(ref["scores"], res["scores"]) for k in x)
    return f"{same}/{len(ref['answers'])}", f"{diff:.1e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=f"random:{DEFAULT_SMOLVLM}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--splitting", default="off,on", help="off (1 tile), on (17 tiles) or off,on")
    p.add_argument("--rows", type=int, default=4, help="pages per batch, unsplit")
    p.add_argument("--split-rows", type=int, default=2, help="pages per batch, split (17 tiles each)")
    p.add_argument("--new-tokens", type=int, default=24, help="greedy tokens per answer (code15's fast budget)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the runtimes use every core)")
    p.add_argument("--cache-dir", default=None, help="converted models (default: vlm/cpu_cache.py's)")
    p.add_argument("--json", default=None, help="also write every result here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--split", default="off", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        line = json.dumps(run_one(args))
        if args.cache_dir:  # kept as measured, even if a long run is stopped before its table
            with open(Path(args.cache_dir) / "cpu_engines.jsonl", "a") as f:
                f.write(line + "\n")
        print("RESULT " + line, flush=True)
        return 0
    from vlm.cpu_engine import installed

    variants = [v for v in args.variants.split(",") if VARIANTS[v][0] == "hf" or installed(VARIANTS[v][0])]
    results = []
    for split in args.splitting.split(","):
        rows = args.rows if split == "off" else args.split_rows
        for v in variants:
            cmd = [sys.executable, __file__, "--one", v, "--split", split, "--rows", str(rows), "--model", args.model,
                   "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
            if args.cache_dir:
                cmd += ["--cache-dir", args.cache_dir]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{v} split {split}: failed\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
                continue
            results.append(json.loads(line[len("RESULT "):]))
            r = results[-1]
            print(f"  {v} split {split}: {r['pages_per_s']:.3f} pages/s (load {r['load']:.1f})", file=sys.stderr,
                  flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results, args)
    return 0


def print_table(results: list[dict], args) -> None:
    print(f"\nmodel {Path(args.model.split(':', 1)[-1]).name} (random weights), {os.cpu_count()} cores, "
          f"{args.new_tokens} new tokens, code15 labels; agreement against hf-fp32 on the same pages")
    print("| variant | split | pages | pages/s | vs hf-fp32 | CPU s/page | TTFT 1 page s | decode tok/s | peak MB | "
          "load avg | same answers | max label dP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = next((x for x in results if x["variant"] == "hf-fp32" and x["split"] == r["split"]), None)
        same, diff = agreement(ref, r) if ref else ("-", "-")
        ratio = f"{r['pages_per_s'] / ref['pages_per_s']:.2f}x" if ref else "-"
        cpu = f"{r['cpu_s_per_page']:.1f}" if "cpu_s_per_page" in r else "-"
        print(f"| {r['variant']} | {r['split']} | {r['rows']} | {r['pages_per_s']:.3f} | {ratio} | {cpu} | "
              f"{r['ttft_s']:.2f} | {r['tokens_per_s']:.1f} | {r['peak_mb']:.0f} | {r['load']:.1f} | {same} | {diff} |")


if __name__ == "__main__":
    sys.exit(main())
