"""``ecgvlm``: one console script, one subcommand per job.

    ecgvlm prepare  --source synthetic --n 2000 --out ./data/synth
    ecgvlm train    --model tiny --data ./data/synth --out ./runs/tiny
    ecgvlm evaluate --model ./runs/tiny/export --data ./data/synth --out ./runs/eval
    ecgvlm score    --task code15 --references R --predictions P
    ecgvlm serve    --model tiny --port 8000
    ecgvlm export   --engine openvino --model ./runs/tiny/export
    ecgvlm render   RECORD --pages clean --out page.png
    ecgvlm demo
    ecgvlm --version

Each subcommand is also ``python -m pipelines.<name>`` (for ``ray job submit``).
Heavy imports happen inside each job's ``main``, so ``ecgvlm --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "prepare": ("pipelines.prepare", "write sample-row Parquet shards from a source"),
    "train": ("pipelines.train", "fine-tune a model with Ray Train"),
    "evaluate": ("pipelines.evaluate", "re-evaluate a model over shards with Ray Data, then score"),
    "score": ("pipelines.score", "score predictions against references (ECGBench protocol and strict)"),
    "serve": ("pipelines.serve", "serve a model over HTTP with Ray Serve"),
    "export": ("pipelines.export", "convert a model for a compiled CPU engine (openvino, onnxruntime) ahead of a job"),
    "render": ("pipelines.render", "draw a record (WFDB, CSV, NPY, HDF5, DICOM, XML export) as a paper page"),
    "demo": ("pipelines.demo", "the whole job on the embedded default: prepare, train, evaluate, score"),
}


def version() -> str:
    """The installed package's version, e.g. ``"0.1.0"`` (``"unknown"`` when run from a tree never installed)."""
    from importlib import metadata

    try:
        return metadata.version("ecgvlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"ecgvlm {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: ecgvlm <command> [options]\n\ncommands:\n" + "\n".join(lines)
              + "\n\n`ecgvlm <command> --help` lists its options, the main ones first; -v shows Ray's own log lines; "
              "--version prints the version.")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ecgvlm: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
