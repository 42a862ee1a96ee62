"""The ECG domain: signal records, readers, the synthetic generator and the paper-page renderer.

No Ray, no torch. Modules: ``ecg.record`` (Record, STANDARD_LEADS), ``ecg.synth`` (generate, record),
``ecg.render`` (render, to_bytes, render_bytes), ``ecg.readers`` (PTB-XL, CODE-15%, CSV, .npy, resample),
``ecg.storage`` (local / s3:// URIs), ``ecg.rows`` (Arrow row schemas), ``ecg.samples`` (records -> sample rows,
failure kinds), ``ecg.ecgbench`` (ECGBench / ECGInstruct turns -> rows, per-row tasks), ``ecg.jsonrecords``
(streamed JSON / JSONL), ``ecg.shards`` (Parquet shard IO), ``ecg.manifest`` (``_manifest.json``),
``ecg.challenge`` + ``ecg.snomed`` (PhysioNet/CinC Challenge WFDB trees, SNOMED-CT -> labels), ``ecg.clinical``
(DICOM, MUSE, CardioSoft, aECG, Sierra exports by content), ``ecg.sources`` (clinical, images, MIMIC-IV-ECG folders).

Example::

    from ecg import Record, STANDARD_LEADS
    from ecg.synth import generate
    from ecg.render import render, to_bytes
    png = to_bytes(render(next(generate(1, seed=0))))
"""

from ecg.record import STANDARD_LEADS, Record

__all__ = ["Record", "STANDARD_LEADS"]
