"""Synthetic ECG throughput: ``ecg.synth.generate`` against neurokit2's 12-lead simulator, in one run.

    python benchmarks/synth.py                   # 500 of ours, 2 of neurokit2's
    python benchmarks/synth.py --n 2000 --nk 3

Both make 10 s, 500 Hz, 12-lead records (neurokit2: ``ecg_simulate(method="multileads")``, which knows
sinus rhythm only; ours covers the CODE-15 labels with noise). One thread (set before numpy loads).
Printed: records/s by wall clock and by this process's CPU time (the fairer figure on a shared
machine), and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecg.synth import generate  # noqa: E402


def rate(fn, n: int) -> tuple[float, float]:
    """(records/s by wall clock, records/s by CPU time) of ``fn(n)``, which makes ``n`` records."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(n)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def neurokit_records(n: int) -> None:
    import neurokit2 as nk

    for i in range(n):
        frame = nk.ecg_simulate(duration=10, sampling_rate=500, method="multileads", random_state=i)
        assert frame.shape == (5000, 12), frame.shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="records from ecg.synth")
    parser.add_argument("--nk", type=int, default=2, help="records from neurokit2 (about 1.6 s each)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    list(generate(5, seed=99))  # warm-up
    neurokit_records(1)  # warm-up: imports
    ours = rate(lambda n: sum(1 for _ in generate(n, seed=0)), args.n)
    theirs = rate(neurokit_records, args.nk)
    print("10 s, 500 Hz, 12-lead records, one thread")
    print(f"{'generator':32s} {'rec/s wall':>11s} {'rec/s cpu':>10s}")
    print(f"{'ecg.synth.generate':32s} {ours[0]:11.1f} {ours[1]:10.1f}")
    print(f"{'neurokit2 ecg_simulate multileads':32s} {theirs[0]:11.2f} {theirs[1]:10.2f}")
    print(f"ratio ecg.synth / neurokit2: {ours[0] / theirs[0]:.0f}x wall, {ours[1] / theirs[1]:.0f}x cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
