"""Real processes through real pipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "camera.png"
KCLI = [sys.executable, "-m", "kernelcli"]


def test_chain_of_three_processes_equals_one_process():
    one = subprocess.run(KCLI + ["apply", "-k", "blur", "-k", "emboss", "-k", "sharpen", str(SAMPLE), "-o", "-"],
                         capture_output=True, check=True)
    chain = (
        f"{sys.executable} -m kernelcli apply -k blur - -o - < '{SAMPLE}'"
        f" | {sys.executable} -m kernelcli apply -k emboss - -o -"
        f" | {sys.executable} -m kernelcli apply -k sharpen - -o -"
    )
    chained = subprocess.run(["bash", "-o", "pipefail", "-c", chain], capture_output=True, check=True)
    assert chained.stderr == b""
    assert chained.stdout == one.stdout and chained.stdout.startswith(b"\x89PNG")


def test_reader_closing_early_is_quiet():
    proc = subprocess.run(
        f"{sys.executable} -m kernelcli apply -k blur - -o - < '{SAMPLE}' | head -c 100 > /dev/null",
        shell=True, capture_output=True, text=True,
    )
    assert "Traceback" not in proc.stderr
    assert proc.stderr == ""


def test_refuses_to_wait_on_empty_stdin():
    proc = subprocess.run(KCLI + ["apply", "-k", "blur", "-", "-o", "-"], input=b"", capture_output=True)
    assert proc.returncode == 1
    assert proc.stderr == b"kernelcli: error: no image data on stdin\n"
    assert proc.stdout == b""
