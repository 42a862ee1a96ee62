"""``ecgvlm render`` through the real CLI: real exports and a Challenge record drawn as pages; bad input one line."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipelines import cli
from test_ecg_challenge import _mortara_mv, write_challenge
from test_ecg_clinical import CARDIOSOFT, SIERRA


@pytest.mark.parametrize("preset, out, size, fmt", [("clean", "page.png", (1100, 850), "PNG"),
                                                     ("clean", "page.jpg", (1100, 850), "JPEG")])
def test_render_real_exports(real_ecgs, tmp_path, capsys, preset, out, size, fmt):
    for name in (SIERRA, CARDIOSOFT):
        path = tmp_path / out
        assert cli.main(["render", str(real_ecgs / name), "--pages", preset, "--out", str(path)]) == 0
        image = Image.open(io.BytesIO(path.read_bytes()))
        assert image.size == size and image.format == fmt
        assert "12 leads, 500 Hz" in capsys.readouterr().out


def test_render_a_challenge_record_and_the_other_presets(tmp_path, capsys):
    hea = write_challenge(tmp_path, "A0001", _mortara_mv(), ["Dx: 426783006"])
    for preset in ("clean", "varied", "photo"):
        assert cli.main(["render", hea, "--pages", preset, "--seed", "3", "--out", str(tmp_path / "p.png")]) == 0
        assert f"({preset} page" in capsys.readouterr().out


def test_render_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an ECG")
    assert cli.main(["render", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err.strip() == ("ecgvlm render: notes: neither a DICOM waveform (no 'DICM' at byte 128) "
                                               "nor an XML export")
    hea = write_challenge(tmp_path, "A0001", _mortara_mv(), ["Dx: 426783006"])
    assert cli.main(["render", hea, "--pages", "sepia", "--out", str(tmp_path / "p.png")]) == 2
    assert "unknown page preset 'sepia'; choose from clean, varied, photo" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_docs_render_commands_run_as_written(real_ecgs, tmp_path, capsys):
    """Every `ecgvlm render` line of docs/data-real.md that names a real file runs (outputs go to a temp folder)."""
    import os
    import shlex

    from conftest import REPO

    text = (REPO / "docs" / "data-real.md").read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines() if ln.startswith("ecgvlm render .cache/")]
    assert len(lines) == 3
    for line in lines:
        argv = [a.replace(".cache/real-ecgs", str(real_ecgs)) for a in shlex.split(line)[1:]]
        out = argv.index("--out") + 1
        argv[out] = os.path.join(tmp_path, argv[out])
        assert cli.main(argv) == 0, line
        assert os.path.getsize(argv[out]) > 10_000
