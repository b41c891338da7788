"""The server's warm-up loads every module an apply call needs, so a forked worker compiles
and imports nothing per call (with PYTHONDONTWRITEBYTECODE, each import compiled its source)."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

import kernelcli

SCRIPT = """
import sys
from kernelcli.server import daemon as server
server.warm_up()
before = set(sys.modules)
sys.argv = ["kernelcli", "apply", "-k", "sharpen", sys.argv[1], "-o", sys.argv[2]]
from kernelcli.cli import run
code = run()
print(code, " ".join(sorted(set(sys.modules) - before)))
"""


def test_an_apply_after_warm_up_imports_nothing(tmp_path):
    src = tmp_path / "in.jpg"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(src, quality=90)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(kernelcli.__file__)), "KERNELCLI_SERVER": "off"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path / "out.jpg")], env=env,
                          capture_output=True, text=True, timeout=120)
    code, _, imported = proc.stdout.strip().partition(" ")
    assert code == "0", proc.stderr
    assert imported == ""
    assert (tmp_path / "out.jpg").exists()
