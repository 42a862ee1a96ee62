"""Where the time of one batch goes, per image: vision tower, prefill, decode, label scoring; engines side by side.

    python benchmarks/evaluate.py --stages                       # the real SmolVLM-256M architecture, CPU, unsplit
    python benchmarks/stages.py --splitting off,on --rows 4 --batch-size 4 --rounds 2
    python benchmarks/stages.py --device cuda --dtypes bfloat16 --rows 2000 --batch-size 64 --engines ours

The model is the real architecture with random weights (``random:<SmolVLM-256M-Instruct config folder>``),
pages are synthetic 1100 x 850 ECGs, the question is code15's, and every answer is exactly ``--new-tokens``
tokens long (stop tokens are forbidden until then), so random weights neither stop early nor run to a long
budget. Engines, each measured on the same rows, one after the other, alternating their order every round
(a shared machine's changing load hits all alike):

- ``loop``: the plain one-sample loop as PULSE runs it: processor, ``model.generate`` per image, no label scores.
- ``before``: ``vlm.Predictor`` as of ``--baseline-rev`` (git): generation, then label scoring that runs the vision
  tower and the prompt again. Its stages are timed with forward hooks on the vision tower and the text model.
- ``ours``: ``vlm.Predictor.run_encoded``: one vision pass per image, one prompt pass per row, shared by the
  greedy answer and the label continuations; its stages are timed by the engine itself.
- ``vllm``: ``vlm.vllm_engine.VLLMPredictor`` (needs vLLM; dummy weights), every row in one call, labels scored
  from prompt log-probabilities; total time only.

``--distinct`` different pages are rendered and preprocessed once and cycled up to ``--rows`` (preprocessing is
not timed, except in ``loop``, which runs the processor per image as PULSE does).

Random weights answer no label, so label scoring is slot 0 (6 continuations per row); a trained model's answer
with k labels scores 6 (k + 1). Printed: wall ms per image per stage, the share of each, images/s, the ratio
of every engine to ``before`` in the same run, and CPU seconds per image of this process with their ratio (on a
machine shared with other jobs the CPU time is the steadier measure of the work done).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SMOLVLM = os.environ.get("ECGVLM_SMOLVLM_DIR", str(REPO.parent / "shared" / "models" / "SmolVLM-256M-Instruct"))
BASELINE_REV = "5d9653e"  # the last commit whose Predictor ran the vision tower and the prompt again for label scores
STAGES = ("vision", "prefill", "decode", "labels")


def load_baseline(rev: str):
    """The ``Predictor`` class of ``vlm/predict.py`` at git revision ``rev`` (other modules: this checkout's)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:vlm/predict.py"], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="ecgvlm-baseline-")) / "baseline_predict.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Predictor


def make_pages(n: int):
    """``n`` different synthetic 12-lead pages (1100 x 850 px)."""
    from ecg.render import render
    from ecg.synth import generate

    return [render(r) for r in generate(n, seed=5)]


def cycle(items: list, n: int) -> list:
    """``n`` items, ``items`` repeated. Example: cycle([1, 2], 5) == [1, 2, 1, 2, 1]."""
    return [items[i % len(items)] for i in range(n)]


def run_vllm(predictor, rows, labels, new_tokens) -> dict:
    """All rows in one call: vLLM schedules them itself (continuous batching); no stage split."""
    t0 = time.perf_counter()
    predictor.run_encoded(rows, max_new_tokens=new_tokens, min_new_tokens=new_tokens, labels=labels)
    return {"total": time.perf_counter() - t0}


class Hooks:
    """Wall time spent in the vision tower and in each text-model call (CUDA-synchronised), by forward hooks."""

    def __init__(self, model, device):
        import torch

        base = model.model
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.vision, self.text_calls, self._t = 0.0, [], {}
        self.handles = []
        for name, module in (("vision", base.vision_model), ("connector", base.connector), ("text", base.text_model)):
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _start(self, name):
        def hook(module, args):
            self.sync()
            self._t[name] = time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(module, args, out):
            self.sync()
            dt = time.perf_counter() - self._t[name]
            if name == "text":
                self.text_calls.append(dt)
            else:
                self.vision += dt
        return hook

    def reset(self):
        self.vision, self.text_calls = 0.0, []

    def remove(self):
        for h in self.handles:
            h.remove()


def wall(times: dict) -> float:
    """Wall seconds: the sum of the stages (or "total"), not the CPU seconds beside them."""
    return sum(v for k, v in times.items() if k != "cpu")


def run_batches(run, predictor, batches, labels, new_tokens) -> tuple[dict, int]:
    """``(seconds per stage summed over the batches, rows)`` of one engine."""
    total: dict = {}
    for b in batches:
        for k, v in run(predictor, b, labels, new_tokens).items():
            total[k] = total.get(k, 0.0) + v
    return total, sum(len(b) for b in batches)


def run_ours(predictor, rows, labels, new_tokens) -> dict:
    timings: dict = {}
    predictor.run_encoded(rows, max_new_tokens=new_tokens, min_new_tokens=new_tokens, labels=labels, timings=timings)
    return timings


def run_before(predictor, rows, labels, new_tokens) -> dict:
    hooks = Hooks(predictor.loaded.model, predictor.loaded.device)  # only while this engine runs
    sync = hooks.sync
    predictor.loaded.model.generation_config.min_new_tokens = new_tokens  # HF generate honours it
    try:
        hooks.reset()
        sync()
        t0 = time.perf_counter()
        answers = predictor.generate_encoded(rows, max_new_tokens=new_tokens)
        sync()
        gen, vision_gen, prefill = time.perf_counter() - t0, hooks.vision, hooks.text_calls[0]
        hooks.reset()
        t0 = time.perf_counter()
        predictor.score_encoded(rows, labels, answers=answers)
        sync()
        lab, vision_lab = time.perf_counter() - t0, hooks.vision
    finally:
        predictor.loaded.model.generation_config.min_new_tokens = None
        hooks.remove()
    return {"vision": vision_gen + vision_lab, "prefill": prefill, "decode": gen - vision_gen - prefill,
            "labels": lab - vision_lab}


def run_loop(loaded, pages, question, new_tokens) -> dict:
    """One image at a time through the processor and ``model.generate`` (PULSE's evaluation loop)."""
    import torch

    from vlm.prompt import chat_prompt

    model, processor = loaded.model, loaded.processor
    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for page in pages:
            inputs = processor(text=[chat_prompt(processor, question)], images=[[page]], return_tensors="pt")
            inputs = {k: v.to(loaded.device, dtype=loaded.dtype) if k == "pixel_values" else v.to(loaded.device)
                      for k, v in inputs.items()}  # fmt: skip
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    sync()
    return {"total": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=f"random:{DEFAULT_SMOLVLM}")
    p.add_argument("--engines", default="loop,before,ours", help="comma-separated: loop, before, ours, vllm")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes, one model each")
    p.add_argument("--splitting", default="off", help="image splitting settings to run: off, on or off,on")
    p.add_argument("--rows", type=int, default=4, help="images per engine per round")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--loop-rows", type=int, default=None, help="images for the one-sample loop (default --rows)")
    p.add_argument("--distinct", type=int, default=32, help="different pages, cycled up to --rows")
    p.add_argument("--new-tokens", type=int, default=8, help="generated tokens per answer, exactly")
    p.add_argument("--vision-batch", type=int, default=32, help="image tiles per vision-tower call (ours)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the 'before' Predictor")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import vlm
    from metrics.tasks import get_task

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    task = get_task("code15")
    labels, engines = list(task.labels), args.engines.split(",")
    Before = load_baseline(args.baseline_rev) if "before" in engines else None
    pages = make_pages(min(args.distinct, max(args.rows, args.loop_rows or 0)))
    dtypes, hf = args.dtypes.split(","), any(e != "vllm" for e in engines)
    models = {dt: vlm.load(args.model, device=args.device, dtype=dt, image_splitting=False) if hf else None
              for dt in dtypes}  # one model per dtype, all in memory: the rounds interleave dtypes too; fmt: skip
    results = []  # (dtype, splitting, engine, {stage: seconds per image}, images per second)
    for split in args.splitting.split(","):
        runners, rows_of = {}, {}
        for dt in dtypes:
            loaded = models[dt]
            if loaded is not None:
                loaded.processor.image_processor.do_image_splitting = split == "on"
                ours = vlm.Predictor.from_loaded(loaded, vision_batch=args.vision_batch)
                rows_of["hf"] = rows_of.get("hf") or cycle(
                    [ours.encode_one(pg, task.question, max_new_tokens=args.new_tokens) for pg in pages], args.rows)
                batches = [rows_of["hf"][i : i + args.batch_size] for i in range(0, len(rows_of["hf"]), args.batch_size)]
                run_ours(ours, batches[0][:1], labels, 2)  # warm-up: first-call allocations, lazy imports
                runners[dt, "ours"] = partial(run_batches, run_ours, ours, batches, labels, args.new_tokens)
                if Before:
                    before = Before.from_loaded(loaded)
                    runners[dt, "before"] = partial(run_batches, run_before, before, batches, labels, args.new_tokens)
                n_loop = args.loop_rows or args.rows
                runners[dt, "loop"] = lambda loaded=loaded, n=n_loop: (
                    run_loop(loaded, cycle(pages, n), task.question, args.new_tokens), n)
            if "vllm" in engines:
                from vlm.vllm_engine import VLLMPredictor

                # CPU: eager (no compilation); GPU: vLLM's defaults (compiled, CUDA graphs)
                engine = VLLMPredictor(args.model, image_splitting=split == "on", dtype=dt, max_num_seqs=args.batch_size,
                                       seed=0, enforce_eager=args.device == "cpu")  # fmt: skip
                vrows = cycle([engine.encode_one(pg, task.question) for pg in pages], args.rows)
                runners[dt, "vllm"] = lambda e=engine, r=vrows: (run_vllm(e, r, labels, args.new_tokens), len(r))
        variants = [(dt, e) for dt in dtypes for e in engines]
        times: dict = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:  # alternate the order: load changes hit all alike
                cpu0 = time.process_time()
                total, n = runners[v]()
                # CPU seconds of this process (all its threads): on a machine shared with other jobs, the work
                # done, where wall time also counts the waiting for a core
                total["cpu"] = time.process_time() - cpu0
                times[v].append((total, n))
                print(f"  round {r} {v[0]} split {split} {v[1]}: {wall(total) / n:.3f} s/image",
                      file=sys.stderr, flush=True)  # fmt: skip
        for dt, e in variants:
            per_image = {k: statistics.median(t[k] / n for t, n in times[dt, e]) for k in times[dt, e][0][0]}
            results.append((dt, split, e, per_image, 1.0 / wall(per_image)))
        runners.clear()
    print_table(results, args)
    return 0


def print_table(results, args) -> None:
    print(f"\nmodel {Path(args.model.split(':', 1)[-1]).name} (random weights), device {args.device}, rows {args.rows}, "
          f"batch {args.batch_size}, {args.new_tokens} new tokens, rounds {args.rounds}, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (median over rounds)")
    head = f"{'dtype':<9} {'split':<5} {'engine':<7} " + " ".join(f"{s + ' ms':>16}" for s in STAGES)
    print(head + f" {'total ms':>9} {'img/s':>7} {'vs before':>9} {'vs before fp32':>14} {'cpu s/img':>9} {'cpu vs before':>13}")
    base = {(d, s): ips for d, s, e, _, ips in results if e == "before"}
    base32 = {s: ips for d, s, e, _, ips in results if e == "before" and d == "float32"}
    cpu_base = {(d, s): t["cpu"] for d, s, e, t, _ in results if e == "before"}
    for dtype, split, engine, per_image, ips in results:
        total = wall(per_image)
        cells = []
        for s in STAGES:
            v = per_image.get(s)
            cells.append(f"{v * 1000:9.0f} ({v / total:4.0%})" if v is not None else f"{'-':>16}")
        ref, ref32, cref = base.get((dtype, split)), base32.get(split), cpu_base.get((dtype, split))
        ratio = f"{ips / ref:8.2f}x" if ref else f"{'-':>9}"
        ratio32 = f"{ips / ref32:13.2f}x" if ref32 else f"{'-':>14}"
        cpu = per_image["cpu"]
        cratio = f"{cref / cpu:12.2f}x" if cref else f"{'-':>13}"
        print(f"{dtype:<9} {split:<5} {engine:<7} " + " ".join(cells)
              + f" {total * 1000:9.0f} {ips:7.3f} {ratio} {ratio32} {cpu:9.1f} {cratio}")

if __name__ == "__main__":
    sys.exit(main())
