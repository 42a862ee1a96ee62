"""``ecgvlm render``: draw any readable record as a paper page (the signal-to-image tool).

    ecgvlm render ./cpsc2018/A0001.hea --pages clean --out page.png
    ecgvlm render ./exports/ecg.xml --pages varied --seed 3 --out page.png    # MUSE, CardioSoft, aECG, Sierra
    ecgvlm render ./ecg.csv --fs 500 --pages photo --out photo.jpg

The record is read by content or extension (WFDB, CODE-15 HDF5 with --index, CSV / .npy with --fs, DICOM, XML
exports) and drawn by the page preset the dataset rows use (ecg.pages): the same pixels ``prepare`` would write.
"""

from __future__ import annotations

import sys

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import CliPositionalArg

from ecgconfig import load_config


class RenderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record: CliPositionalArg[str] = Field(description="the record: .hea, .hdf5, .csv, .npy, DICOM or XML export")
    out: str = Field("page.png", description="the page file (PNG or JPEG by extension; photo pages are JPEG)")
    pages: str = Field("clean", description="page preset: clean, varied or photo")
    seed: int = Field(0, description="seed of the page's drawn choices (varied, photo)")
    layout: str = Field("3x4", description="clean pages' layout: 3x4, 3x4+0, 3x4+3, 6x2, 2x6 or 12x1")
    width: int = Field(1100, description="page width, px")
    height: int = Field(850, description="page height, px")
    fs: float | None = Field(None, description="sampling rate of a CSV or .npy record, Hz")
    index: int = Field(0, ge=0, description="row of a CODE-15 HDF5 file")


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(RenderConfig, argv, prog="ecgvlm render", doc=__doc__)
    from ecg import pages, sources, storage
    from ecg.readers import ECGReadError

    try:
        record = sources.read_any(cfg.record, fs=cfg.fs, index=cfg.index)
        image_format = "JPEG" if cfg.out.lower().endswith((".jpg", ".jpeg")) else "PNG"
        data, page = pages.page_bytes(record, cfg.pages, seed=cfg.seed, width=cfg.width, height=cfg.height,
                                      layout=cfg.layout, format=image_format)
    except (ECGReadError, ValueError, OSError) as exc:  # a missing or unreadable record: one line, exit 2
        print(f"ecgvlm render: {exc}", file=sys.stderr)
        return 2
    storage.write_bytes(cfg.out, data)
    print(f"render: {record.id} ({len(record.leads)} leads, {record.fs:g} Hz, {record.duration:.1f} s) -> {cfg.out} "
          f"({page['preset']} page, {page['width']}x{page['height']} {page['format']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
