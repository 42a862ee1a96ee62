"""Reading an ECGInstruct-format JSON: the streamed reader (``ecg.jsonrecords``) against ``json.load``, in one run.

    python benchmarks/jsonrecords.py                  # 100,000 records (about 70 MB of JSON)
    python benchmarks/jsonrecords.py --records 400000

Both paths turn every record into the same reference (``jsonrecords.reference``) in chunks of 200; the
baseline first loads the whole file with ``json.load``, as the importer did before. Each runs in its own
process, so the peak resident memory printed (``ru_maxrss``) is that path's own. Printed: records/s, peak
memory above the interpreter's start, and the ratios. Timings on a shared machine vary: run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTION = ("<image>\nPlease identify all the diagnoses that fit this ECG from the following options: "
            "1dAVb (1st degree AV block), RBBB (right bundle branch block), LBBB (left bundle branch block), "
            "SB (sinus bradycardia), ST (sinus tachycardia), AF (atrial fibrillation). Separate multiple "
            "answers with a semicolon. Only answer based on the given options without any explanation.")


def write_file(path: str, n: int) -> int:
    """``n`` ECGInstruct-like records (a third with two turns) as one JSON array; returns its size in bytes."""
    with open(path, "w") as f:
        f.write("[")
        for k in range(n):
            turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "SB; 1dAVb"}]
            if k % 3 == 0:
                turns += [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "The rate is below 60 bpm."}]
            f.write(("," if k else "") + json.dumps({"id": f"code15-{k}", "image": [f"code15/{k}.png"],
                                                     "conversations": turns}))
        f.write("]")
    return os.path.getsize(path)


def run_mode(mode: str, path: str) -> None:
    """Child process: read ``path`` one way; print ``records seconds peak_rss_kib base_rss_kib`` as JSON."""
    from ecg import jsonrecords

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start, n = time.perf_counter(), 0
    if mode == "streamed":
        for chunk in jsonrecords.reference_chunks(path, chunk=200, file_hint=False):
            n += len(chunk["id"])
    else:
        with open(path) as f:
            records = json.load(f)
        root, name = os.path.dirname(path), os.path.basename(path)
        for s in range(0, len(records), 200):
            refs = [jsonrecords.reference(r, s + i, name=name, root=root) for i, r in enumerate(records[s:s + 200])]
            n += len(refs)
    seconds = time.perf_counter() - start
    print(json.dumps({"records": n, "seconds": seconds, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "base_kib": base}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--mode", choices=["streamed", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        run_mode(args.mode, args.path)
        return 0
    with tempfile.TemporaryDirectory(prefix="ecgvlm-bench-") as tmp:
        path = os.path.join(tmp, "ECGInstruct.json")
        size = write_file(path, args.records)
        results = {}
        for mode in ("streamed", "whole"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--path", path], check=True,
                                 capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"jsonrecords: {args.records} records, {size / 2**20:.1f} MiB of JSON")
    for mode, r in results.items():
        extra = (r["peak_kib"] - r["base_kib"]) / 1024
        print(f"  {mode:8s} {r['records'] / r['seconds']:10.0f} records/s  {r['seconds']:6.2f} s  "
              f"peak memory above start {extra:7.1f} MiB")
    s, w = results["streamed"], results["whole"]
    print(f"  streamed / json.load: speed x{(s['records'] / s['seconds']) / (w['records'] / w['seconds']):.2f}, "
          f"memory x{max(s['peak_kib'] - s['base_kib'], 1) / max(w['peak_kib'] - w['base_kib'], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
