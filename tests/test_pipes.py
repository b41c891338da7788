"""Real processes through real pipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "camera.png"
KCLI = [sys.executable, "-m", "kernelcli"]


def test_chain_of_processes_equals_one_process():
    data = SAMPLE.read_bytes()
    one = subprocess.run(KCLI + ["apply", "-k", "emboss", "-k", "sharpen", "-", "-o", "-"],
                         input=data, capture_output=True, check=True)
    first = subprocess.Popen(KCLI + ["apply", "-k", "emboss", "-", "-o", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    second = subprocess.Popen(KCLI + ["apply", "-k", "sharpen", "-", "-o", "-"],
                              stdin=first.stdout, stdout=subprocess.PIPE)
    first.stdout.close()
    first.stdin.write(data)
    first.stdin.close()
    chained = second.stdout.read()
    second.stdout.close()
    assert second.wait() == 0 and first.wait() == 0
    assert chained == one.stdout and chained.startswith(b"\x89PNG")


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
