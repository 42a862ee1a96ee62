"""What ``--decoding smolvlm-study`` costs: beam search with 4 beams one row at a time (``vlm.beam``, the prior
study's generation) against the greedy engine (``vlm/engine.py``, the default), on the same pages, in one run.

    python benchmarks/beam.py                                   # random:<SmolVLM-256M config folder>, CPU
    python benchmarks/beam.py --model tiny --rows 16
    python benchmarks/beam.py --device cuda --dtype bfloat16 --rows 64 --batch-size 16

Three variants, each answering every page with exactly ``--new-tokens`` tokens (random weights never stop; the
greedy engine is held to the length with ``min_new_tokens``): the engine in batches of ``--batch-size`` (what
``--decoding ecgbench`` / ``fast`` run), the engine one row at a time, and 4 beams one row at a time. Printed:
seconds per image of each (median over rounds, rounds alternate the order) and the ratios to the batched engine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SMOLVLM = os.environ.get("ECGVLM_SMOLVLM_DIR", str(REPO.parent / "shared" / "models" / "SmolVLM-256M-Instruct"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=f"random:{DEFAULT_SMOLVLM}")
    p.add_argument("--rows", type=int, default=4, help="pages per variant per round")
    p.add_argument("--batch-size", type=int, default=4, help="rows per call of the batched engine")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per answer (the study's 32)")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import vlm
    from ecg.render import render
    from ecg.synth import generate
    from ecgtasks.registry import STUDY_QUESTION
    from vlm.beam import beam_answers

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    loaded = vlm.load(args.model, device=args.device, dtype=args.dtype, image_splitting=False)
    predictor = vlm.Predictor.from_loaded(loaded)
    pages = [render(r, width=1100, height=850) for r in generate(args.rows, seed=12)]
    rows = [predictor.encode_one(pg, STUDY_QUESTION, max_new_tokens=args.new_tokens) for pg in pages]
    n, b = args.new_tokens, args.batch_size

    def greedy(batch_size: int) -> None:
        for i in range(0, len(rows), batch_size):
            predictor.run_encoded(rows[i : i + batch_size], max_new_tokens=n, min_new_tokens=n)

    variants = {"greedy engine, batch": lambda: greedy(b), "greedy engine, one row": lambda: greedy(1),
                f"{args.beams} beams, one row": lambda: beam_answers(predictor, rows, num_beams=args.beams,
                                                                      max_new_tokens=n)}
    beam_answers(predictor, rows[:1], num_beams=args.beams, max_new_tokens=2)  # warm-up: lazy imports, allocations
    greedy(1)
    times = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
            sync()
            start = time.perf_counter()
            variants[name]()
            sync()
            times[name].append((time.perf_counter() - start) / len(rows))
            print(f"  round {r} {name}: {times[name][-1]:.3f} s/image", file=sys.stderr, flush=True)
    base = statistics.median(times["greedy engine, batch"])
    print(f"{args.model} on {args.device} ({args.dtype}), {len(rows)} pages, {n} new tokens, batch {b}")
    print(f"{'variant':<26} {'s/image':>9} {'vs batched greedy':>18}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:<26} {med:>9.3f} {med / base:>17.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
