"""Reads that cannot balloon or block: --files-from lists are capped in total and per entry,
kernel files that are FIFOs or devices are never opened blocking (issue 18, items 2 and 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "samples" / "camera.png"


def kernelcli(*args, cwd, input=None, timeout=25, limit_memory=False):
    """The command line in a real process (no resident server), its address space capped at
    2 GB where ``limit_memory`` (so that an unbounded read fails fast instead of filling the machine)."""
    prefix = ["prlimit", "--as=2000000000", "--"] if limit_memory else []
    return subprocess.run([*prefix, sys.executable, "-m", "kernelcli", *map(str, args)], cwd=cwd, input=input,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)})


def test_files_from_an_endless_device_is_refused_at_the_cap(tmp_path):
    proc = kernelcli("apply", "-k", "blur", "--files-from", "/dev/zero", "-o", "out/", cwd=tmp_path, limit_memory=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode() == ("kernelcli: error: --files-from /dev/zero: the list is longer than 128 MiB; "
                                    "split it into several runs, or name the folders instead\n")
    assert not (tmp_path / "out").exists()


def test_an_endless_list_on_stdin_is_refused_at_the_cap(tmp_path):
    line = str(CAMERA).encode() + b"\n"
    proc = kernelcli("apply", "-k", "blur", "--files-from", "-", "-o", "out/", cwd=tmp_path, limit_memory=True,
                     input=line * ((130 << 20) // len(line)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().startswith("kernelcli: error: --files-from -: the list is longer than 128 MiB")
    assert not (tmp_path / "out").exists()


def test_an_entry_longer_than_any_path_is_named_by_its_number_never_echoed(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(str(CAMERA).encode() + b"\n" + b"x" * 1_000_000 + b"\n")
    result = run("apply", "-k", "blur", "--files-from", listing, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: --files-from {listing}: line 2 is longer than 16384 characters, "
                             "longer than any path or URL; is it a list of paths?\n")
    result = run("apply", "-k", "blur", "--files-from", listing, "-0", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "entry 1 is longer than 16384 characters" in result.stderr


def test_a_missing_list_is_a_usage_error(tmp_path):
    result = run("apply", "-k", "blur", "--files-from", tmp_path / "nowhere.txt", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: --files-from {tmp_path / 'nowhere.txt'}: cannot read: No such file or directory\n"


def test_a_kernel_file_that_is_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "kernels.yaml"
    os.mkfifo(fifo)
    for args, env in ((["kernels", "list", "--kernels", fifo], {}),
                      (["apply", "-k", "blur", CAMERA, "-o", tmp_path / "x.png"], {"KERNELCLI_KERNELS": str(fifo)})):
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "kernelcli", *map(str, args)], capture_output=True, timeout=25,
                              env={**os.environ, **env, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)})
        assert time.monotonic() - start < 20
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.decode() == f"kernelcli: error: {fifo}: the file is empty; expected a 'kernels:' mapping\n"
    assert not (tmp_path / "x.png").exists()


def test_a_kernel_file_from_a_pipe_still_works_and_a_device_is_capped(tmp_path):
    text = "version: 1\nkernels:\n  piped:\n    description: from a pipe\n    matrix: [[0, 1, 0]]\n"
    read, write = os.pipe()  # what <(…) gives: /dev/fd/N
    os.write(write, text.encode())
    os.close(write)
    try:
        result = run("kernels", "show", "piped", "--kernels", f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert result.exit_code == 0, result.stderr
    assert "from a pipe" in result.stdout
    result = run("kernels", "list", "--kernels", "/dev/zero")
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: /dev/zero: kernel file is larger than 1048576 bytes\n"
