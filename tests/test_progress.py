"""Progress: a tqdm bar when stderr is a terminal (a real pseudo-terminal here), plain lines in a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ("from ecg.progress import Progress\n"
          "with Progress(30, what='evaluate', every_s=0) as p:\n"
          "    for _ in range(3): p.update(10, errors=1)\n")


def test_plain_lines_in_a_pipe_and_a_bar_on_a_terminal():
    piped = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, check=True)
    lines = piped.stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == ["evaluate: 10/30 rows", "evaluate: 20/30 rows",
                                                      "evaluate: 30/30 rows"]
    assert lines[-1].endswith("3 errors") and "\r" not in piped.stdout + piped.stderr

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.DEVNULL, stderr=follower,
                       check=True, timeout=60)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    text = shown.decode(errors="replace")
    assert "\r" in text and "30/30" in text and "errors=3" in text and "evaluate: 10/30 rows," not in text
