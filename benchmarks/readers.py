"""Clinical export readers: ``ecg.clinical.read_clinical_bytes`` against the format's library alone, one run.

    make real-ecgs && python benchmarks/readers.py          # every real export, 20 reads each
    python benchmarks/readers.py --n 50 --real .cache/real-ecgs

Baseline per format, what any reader must do at least: DICOM ``pydicom.dcmread`` + ``waveform_array``; Sierra
``sierraecg.read_file``; MUSE, CardioSoft and aECG a ``defusedxml`` parse of the file. Ours adds the format
sniffing, sample decoding and scaling to mV, lead naming and derivation, the tail trim and the statements. Printed per
file: reads/s by this process's CPU time (the fairer figure on a shared machine), ours / baseline ratio. One thread.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = ("pydicom-3.0.2/waveform_ecg.dcm", "ecgprocess-1.2.0/example-DICOM2.dcm",
         "ecg2dcm-1.3.1/guangxi_teaching_sinus_rhythm.xml", "ecgprocess-1.2.0/example-XML1.xml",
         "SPxml-1.1/129DYPRG.XML")


def baseline(kind: str, data: bytes) -> None:
    """The least a reader of ``kind`` does with the format's own library."""
    if kind == "dicom":
        import pydicom

        pydicom.dcmread(io.BytesIO(data)).waveform_array(0)
    elif kind == "sierra":
        import sierraecg

        with tempfile.NamedTemporaryFile(suffix=".xml") as f:
            f.write(data)
            f.flush()
            sierraecg.read_file(f.name)
    else:
        import defusedxml.ElementTree as ET

        ET.fromstring(data)


def per_second(fn, n: int) -> float:
    fn()  # warm: imports, caches
    start = time.process_time()
    for _ in range(n):
        fn()
    return n / max(time.process_time() - start, 1e-9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="reads per file and reader")
    parser.add_argument("--real", default=os.environ.get("ECGVLM_REAL_ECGS", ".cache/real-ecgs"))
    args = parser.parse_args(argv)
    from ecg.clinical import detect, read_clinical_bytes

    print(f"{'file':52} {'format':10} {'ours/s':>8} {'base/s':>8} {'ours/base':>9}")
    for name in FILES:
        path = Path(args.real) / name
        if not path.exists():
            print(f"{name}: missing (run make real-ecgs)", file=sys.stderr)
            return 1
        data = path.read_bytes()
        kind = detect(data, path.stem)
        ours = per_second(lambda: read_clinical_bytes(data, path.stem), args.n)
        base = per_second(lambda: baseline(kind, data), args.n)
        print(f"{name:52} {kind:10} {ours:8.1f} {base:8.1f} {ours / base:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
