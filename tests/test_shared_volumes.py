"""Stale temporary files on shared volumes: whether another kernelcli still writes one is decided
by a lock on the file, the host it came from and its age, never by a process id, which means
nothing in another PID namespace or on another host (issue 18, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run
from tests.test_safety import finish, start

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "samples" / "camera.png"


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def in_another_pid_namespace(*args, cwd):
    """kernelcli in a PID namespace of its own, with its own /proc: it sees none of our processes."""
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "kernelcli",
                           *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(not unshare_works(), reason="unshare --pid is not permitted here (needs root or user namespaces)")
def test_a_run_in_another_pid_namespace_leaves_a_live_writers_temp_file_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    writer = start(tmp_path, "write", "pool", CAMERA, "-o", "out/x.png")  # stalled halfway through its write
    try:
        temp = [n for n in os.listdir(out) if n.endswith(".part")]
        assert len(temp) == 1
        # any command that writes there sweeps it (kernels show --image: no torch to import, quick)
        other = in_another_pid_namespace("kernels", "show", "blur", "--image", out / "y.png", cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        assert "removed" not in other.stderr
        assert sorted(os.listdir(out)) == sorted([temp[0], "y.png"])  # the writer's file is still there
    finally:
        writer.kill()
        finish(writer)
    other = in_another_pid_namespace("kernels", "show", "blur", "--image", out / "z.png", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert f"{out / temp[0]}: removed a temporary file left by an interrupted kernelcli run" in other.stderr
    assert sorted(os.listdir(out)) == ["y.png", "z.png"]  # once it is dead, any run on this machine cleans up


def test_a_temp_file_from_another_host_is_left_until_a_day_old(tmp_path):
    from kernelcli.io.images import FOREIGN_TEMP, host_id

    out = tmp_path / "out"
    out.mkdir()
    other_host = "0" * 8 if host_id() != "0" * 8 else "1" * 8
    theirs = out / f".kc-{other_host}-1234-abcdefgh.part"  # its lock may live on a server we cannot see
    older = out / ".kc-1234-abcdefgh.part"  # an older kernelcli's naming: no host, no lock
    for path in (theirs, older):
        path.write_bytes(b"half an image")
    assert run("apply", "-k", "blur", CAMERA, "-o", out / "a.png").exit_code == 0
    assert theirs.exists() and older.exists()
    day_ago = time.time() - FOREIGN_TEMP - 60
    for path in (theirs, older):
        os.utime(path, (day_ago, day_ago))
    result = run("apply", "-k", "blur", CAMERA, "-o", out / "b.png")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]


def test_an_empty_temp_file_of_this_host_is_given_time_to_be_locked(tmp_path):
    from kernelcli.io.images import NEWBORN_TEMP, host_id

    out = tmp_path / "out"
    out.mkdir()
    newborn = out / f".kc-{host_id()}-{os.getpid()}-abcdefgh.part"  # created, not locked yet
    newborn.touch()
    assert run("apply", "-k", "blur", CAMERA, "-o", out / "a.png").exit_code == 0
    assert newborn.exists()
    past = time.time() - NEWBORN_TEMP - 5
    os.utime(newborn, (past, past))
    assert run("apply", "-k", "blur", CAMERA, "-o", out / "b.png").exit_code == 0
    assert not newborn.exists()
