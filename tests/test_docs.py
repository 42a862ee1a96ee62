"""The docs cannot rot: the site builds with ``mkdocs build --strict`` (a broken link, a missing page or an API
reference that no longer resolves fails it), the README stays short and its links resolve, and the getting-started
page's commands run exactly as the page writes them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_site_builds_strict(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "vlm" / "index.html").read_text()
    assert "check_model" in page  # the API reference is built from the docstrings


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text) <= 10_000, f"README.md is {len(text)} characters; move the rest to docs/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) + re.findall(r'src="([^"]+)"', text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to no docs page"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def getting_started_commands() -> str:
    """The bash block under '## Five commands' of docs/getting-started.md, as written."""
    text = (REPO / "docs" / "getting-started.md").read_text()
    section = text.split("## Five commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the getting-started section holds one bash block"
    return blocks[0]


@pytest.mark.slow
def test_getting_started_commands_run_as_written(tmp_path):
    """The five commands in a fresh folder (docs/ beside them, as in the repository root), with ecgvlm on the PATH
    and the port the page names moved to a free one; each one's output is checked."""
    script = getting_started_commands()
    port = free_port()
    script = script.replace("8000", str(port))
    (tmp_path / "docs").symlink_to(REPO / "docs")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired as err:
        out = (err.output or b"").decode() if isinstance(err.output, bytes) else (err.output or "")
        pytest.fail("the getting-started commands ran over 600 s; their output so far:\n" + out[-4000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and the Ray it started, if a command failed
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"prepare: 300 rows \(train \d+, val \d+, test \d+\)", out), out[-4000:]
    assert "report: " in out and (tmp_path / "first-hour" / "eval" / "report.html").exists()
    assert re.search(r"^task\s.*\bF1\b.*\n-+.*\ncode15\s", out, re.M), "evaluate's headline table: " + out[-4000:]
    assert '"answer"' in out and '"label_scores"' in out, "the /v1/diagnose reply: " + out[-3000:]
    assert "Traceback" not in out
    shutil.rmtree(tmp_path / "first-hour", ignore_errors=True)
