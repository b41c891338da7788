"""A call through the resident server is the caller's call (issue 17): each test starts from a
caller with an odd attribute (limits, nice, CPUs, I/O class, signal mask, fds, environment) and
checks that its worker has exactly that (and the server none of it), or that the call behaves as
it does in-process. Real servers on real sockets, stopped by PID; every wait bounded.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelcli.server.protocol import STAMP_ENV_NAMES, STAMP_ENV_PREFIXES

from tests.test_server import (CLIENT, ROOT, SAMPLES, _slow_batch, _worker_of, alive, requests_served, served,  # noqa: F401
                          server_env, start_server, status, stop_all_started, stop_by_pid, wait_for)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is Linux-only")
PYTHON = sys.executable
TOOLS = ("prlimit", "nice", "taskset", "ionice", "chrt", "setpriv", "flock", "timeout")


def need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture
def folder(tmp_path):
    """A socket folder of this test's own; every server started in it is stopped by PID."""
    path = tmp_path / "s"
    yield path
    stop_all_started(path)


@pytest.fixture(scope="module")
def plain(served):
    """A server started by a plain caller: its environment."""
    return served


# --------------------------------------------------------------------------- what a process is

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)


def attributes(pid: int) -> dict:
    """What of a process its caller could observe: limits, nice, policy, CPUs, I/O priority,
    OOM adjustment, blocked and ignored signals."""
    out = {}
    with open(f"/proc/{pid}/limits") as fh:
        for line in fh.readlines()[1:]:
            name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
            out[f"limit {name}"] = (soft, hard)
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    out["nice"], out["rt priority"], out["policy"] = fields[16], fields[37], fields[38]
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("Cpus_allowed_list", "SigBlk", "SigIgn"):
                out[key] = line.split()[1]
    with open(f"/proc/{pid}/oom_score_adj") as fh:
        out["oom_score_adj"] = fh.read().strip()
    if _IOPRIO_GET:
        out["ioprio"] = ctypes.CDLL(None, use_errno=True).syscall(_IOPRIO_GET, 1, pid)
    return out


def differences(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


# Callers with one odd attribute each: a command prefix (the attribute survives exec).
BLOCK_AND_IGNORE = ("import os, signal, sys\n"
                    "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGTERM])\n"
                    "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
                    "signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
                    "os.execvp(sys.argv[1], sys.argv[1:])\n")
ODD = {
    "limits": ["prlimit", "--fsize=52428800:104857600", "--nofile=300:900", "--as=30000000000", "--core=0:0",
               "--stack=4194304", "--"],
    "nice": ["nice", "-n", "7"],
    "cpus": ["taskset", "-c", "0"],
    "io class": ["ionice", "-c", "3"],
    "policy": ["chrt", "-b", "0"],
    "oom score": ["sh", "-c", 'echo 321 > /proc/self/oom_score_adj && exec "$@"', "sh"],
    "signal mask and ignored signals": [PYTHON, "-c", BLOCK_AND_IGNORE],
}


def _slow_call(env, tmp_path, prefix=(), count=150, **popen):
    _, args = _slow_batch(tmp_path, count)
    return subprocess.Popen([*prefix, *CLIENT, *args], env=env, stderr=subprocess.PIPE, text=True, **popen)


def _running(env, tmp_path) -> int:
    """The worker of the slow call, once it has written its first output."""
    worker = _worker_of(env)
    wait_for(lambda: any((tmp_path / "out").glob("*.png")), 60, "the first output")
    return worker


def _end(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)


@pytest.mark.parametrize("odd", list(ODD))
def test_a_worker_takes_on_its_own_callers_process(plain, tmp_path, odd):
    """Item 1 (later callers): limits, nice, CPUs, I/O class, policy, OOM adjustment, blocked and
    ignored signals of the caller are its worker's, on a server a plain caller started."""
    need(ODD[odd][0])
    if odd == "cpus" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    proc = _slow_call(plain, tmp_path, ODD[odd])
    try:
        worker = _running(plain, tmp_path)
        mine, its = attributes(proc.pid), attributes(worker)
        assert differences(mine, its) == {}
        assert differences(mine, attributes(os.getpid())), f"{odd}: the prefix changed nothing"
    finally:
        _end(proc)


def test_the_first_callers_process_stays_out_of_the_server(folder, tmp_path):
    """Item 1 (the first caller): a server started by a caller with every odd attribute above at
    once is clean (nice 0, every CPU, soft limits at the hard ones, no I/O class, no blocked or
    ignored signals but Python's), and a plain caller's worker is the plain caller's."""
    prefix = [word for odd in ODD.values() if shutil.which(odd[0]) for word in odd]
    env = server_env(folder)
    started = subprocess.run([*prefix, *CLIENT, "server", "start"], env=env, capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stderr
    clean = attributes(int(status(env)["pid"]))
    may_lower = subprocess.run([PYTHON, "-c", "import os; os.setpriority(os.PRIO_PROCESS, 0, 0)"],
                               capture_output=True, timeout=30).returncode == 0
    assert clean["nice"] == "0" or not may_lower  # else: as low as RLIMIT_NICE allows (worker.clean_scheduling)
    assert clean["policy"] == "0" and clean["ioprio"] in (0, None) and clean["oom_score_adj"] == "0"
    assert clean["Cpus_allowed_list"] == attributes(os.getpid())["Cpus_allowed_list"]
    assert clean["SigBlk"] == "0000000000000000"
    assert int(clean["SigIgn"], 16) == 1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)  # as Python sets them
    assert [name for name, value in clean.items() if name.startswith("limit ") and value[0] != value[1]] in (
        [], ["limit Max stack size"], ["limit Max core file size"], ["limit Max stack size", "limit Max core file size"])
    # a plain caller: served by this server, or, where it cannot give the plain caller its limits
    # (hard limits it may not raise), in-process while a server started by the plain caller takes over
    subprocess.run(CLIENT + ["--version"], env=env, capture_output=True, timeout=120)
    wait_for(lambda: status(env), 120, "a server")
    proc = _slow_call(env, tmp_path)
    try:
        worker = _running(env, tmp_path)
        assert differences(attributes(proc.pid), attributes(worker)) == {}
    finally:
        _end(proc)


def _bmp_call(tmp_path, prefix, env):
    """An apply writing a 786 KB BMP from a caller with ``prefix``: (exit code, stderr, output bytes)."""
    out = tmp_path / "x.bmp"
    if out.exists():
        out.unlink()
    proc = subprocess.run([*prefix, *CLIENT, "apply", "-k", "blur", str(SAMPLES / "astronaut.jpg"), "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr, out.read_bytes() if out.exists() else None


def test_a_file_size_limit_applies_to_its_own_caller_only(folder, tmp_path):
    """Item 1: `(ulimit -f 100; kernelcli …)` first used to leave every later call unable to write
    786 KB; and a caller's own limit was not applied through a running server."""
    need("prlimit")
    env = server_env(folder)
    small = ["prlimit", "--fsize=51200", "--"]
    started = subprocess.run([*small, *CLIENT, "server", "start"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    code, err, data = _bmp_call(tmp_path, (), env)  # a plain caller, later (in-process where its limit is out of reach)
    assert (code, err) == (0, "") and len(data) > 700_000
    wait_for(lambda: status(env), 120, "a server")
    before = requests_served(env)
    assert _bmp_call(tmp_path, (), env) == (code, err, data)
    off = {**env, "KERNELCLI_SERVER": "off"}
    limited = _bmp_call(tmp_path, small, env)  # the limited caller, through the server
    in_process = _bmp_call(tmp_path, small, off)
    assert limited == in_process
    assert limited[0] == 1 and "File too large" in limited[1] and limited[2] is None
    assert requests_served(env) == before + 2


def test_a_first_caller_with_few_open_files_does_not_leave_a_server_that_drops_every_call(folder):
    """Item 1: `(ulimit -n 14; kernelcli …)` first used to start a server that dropped every
    request forever. Such a server does not serve; the next plain call starts one that does."""
    need("prlimit")
    env = server_env(folder)
    first = subprocess.run(["prlimit", "--nofile=14", "--", *CLIENT, "--version"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    log = folder / "server.log"
    wait_for(lambda: log.exists() and "not serving: at most 14 open files" in log.read_text(), 60, "the refusal")
    wait_for(lambda: "] exit" in log.read_text() or not list(folder.glob("*.sock")), 60, "it to exit")
    subprocess.run(CLIENT + ["--version"], env=env, capture_output=True, timeout=120)  # starts a good one
    wait_for(lambda: status(env), 120, "a serving server")
    before = requests_served(env)
    again = subprocess.run(CLIENT + ["--version"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and requests_served(env) == before + 1


# --------------------------------------------------------------------------- fds (item 2)

def test_the_server_holds_no_fd_of_the_caller_that_started_it(folder, tmp_path):
    """Item 2: `( flock -n 9 || exit 1; kernelcli … ) 9>job.lock` used to leave fd 9 and its lock
    in the server for its whole life; `{ kernelcli … 7>&1; } | cat` never ended."""
    need("flock")
    env = server_env(folder)
    lock = tmp_path / "job.lock"
    script = f'( flock -n 9 || exit 1; {" ".join(CLIENT)} --version ) 9>"{lock}"'
    first = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    wait_for(lambda: status(env), 120, "the server it started")
    again = subprocess.run(["bash", "-c", f'( flock -n 9 || exit 7; echo free ) 9>"{lock}"'], capture_output=True,
                           text=True, timeout=30)
    assert again.stdout == "free\n", "the lock is still held"
    server = int(status(env)["pid"])
    assert [os.readlink(f"/proc/{server}/fd/{fd}") for fd in os.listdir(f"/proc/{server}/fd")
            if str(lock) in os.readlink(f"/proc/{server}/fd/{fd}")] == []
    stop_all_started(folder)
    # a pipe given as fd 7 to the first call: cat ends when the call does, not when the server does
    piped = subprocess.run(["bash", "-c", f'{{ {" ".join(CLIENT)} --version 7>&1; }} 7>&1 | cat'], env=env,
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout.startswith("kernelcli, version")


def test_the_callers_open_fds_are_its_workers(plain, tmp_path):
    """Item 2: a list given as fd 3 (`--files-from /dev/fd/3 3< list`) is read through the
    server as in-process (the worker has the caller's fd 3, and only the fds the caller has)."""
    for i in range(2):
        Image.fromarray(np.full((8, 9), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "list").write_text(f"{tmp_path / '0.png'}\n{tmp_path / '1.png'}\n")
    results = []
    for mode, env in (("in-process", {**plain, "KERNELCLI_SERVER": "off"}), ("server", plain)):
        out = tmp_path / f"out-{mode}"
        cmd = " ".join(CLIENT) + f' apply -k blur --files-from /dev/fd/3 -o "{out}" 3< "{tmp_path / "list"}"'
        before = requests_served(plain)
        proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, timeout=120)
        results.append((proc.returncode, proc.stdout, proc.stderr, sorted(p.read_bytes() for p in out.iterdir())))
        assert requests_served(plain) == before + (mode == "server")
    assert results[0] == results[1] and results[0][0] == 0 and len(results[0][3]) == 2


def test_a_workers_fds_are_its_callers_and_its_connection_above_the_callers_limit(plain, tmp_path):
    """The worker holds its caller's 0-2 and its client connection, placed at the caller's
    open-files limit (out of the numbers the command uses); nothing of the server's."""
    need("prlimit")
    proc = _slow_call(plain, tmp_path, ["prlimit", "--nofile=200", "--"])
    try:
        worker = _running(plain, tmp_path)
        fds = {int(fd): os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
        mine = {fd: os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (0, 1, 2)}
        assert {fd: fds[fd] for fd in (0, 1, 2)} == mine
        sockets = [fd for fd, target in fds.items() if target.startswith("socket:")]
        assert len(sockets) == 1 and sockets[0] >= 200
        assert not [t for t in fds.values() if t.endswith("server.log")]
    finally:
        _end(proc)


# --------------------------------------------------------------------------- environment (item 3)

def test_the_first_callers_environment_stays_out_of_the_server(folder, tmp_path):
    env = server_env(folder, AWS_SECRET_ACCESS_KEY="first-callers-secret", SOME_TOKEN="t0ken")
    started = subprocess.run(CLIENT + ["server", "start"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    server = int(status(env)["pid"])
    plain_env = {k: v for k, v in env.items() if k not in ("AWS_SECRET_ACCESS_KEY", "SOME_TOKEN")}
    proc = _slow_call(plain_env, tmp_path)
    try:
        worker = _worker_of(plain_env)
        for pid in (server, worker):
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
            assert b"first-callers-secret" not in environ and b"t0ken" not in environ
            names = {e.split(b"=", 1)[0].decode() for e in environ.split(b"\0") if e}
            assert names == {k for k in env if k.startswith(STAMP_ENV_PREFIXES) or k in STAMP_ENV_NAMES}
    finally:
        _end(proc)


# --------------------------------------------------------------------------- signals (item 4, 8)

def test_a_server_started_with_signals_blocked_lets_a_later_call_be_stopped(folder, tmp_path):
    """Item 4: a server started by a process blocking INT and TERM used to pass the mask on to
    every worker: `timeout 4 kernelcli …` ran to the end. Now SIGTERM ends the later call."""
    env = server_env(folder)
    block = ("import os, signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])\n"
             "os.execvp(sys.argv[1], sys.argv[1:])\n")
    started = subprocess.run([PYTHON, "-c", block, *CLIENT, "server", "start"], env=env, capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stderr
    proc = _slow_call(env, tmp_path, count=60)
    try:
        _running(env, tmp_path)
        proc.send_signal(signal.SIGTERM)  # what `timeout` sends
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert len(list((tmp_path / "out").iterdir())) < 60  # stopped, not run to the end
    finally:
        _end(proc)


def test_a_caller_that_ignores_ctrl_c_is_not_interrupted(plain, tmp_path):
    """Item 4: a script's background job has SIGINT ignored; in-process it survives Ctrl-C, so
    it does through the server (the client installs no forwarder over an inherited SIG_IGN)."""
    ignore = "import os, signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nos.execvp(sys.argv[1], sys.argv[1:])\n"
    proc = _slow_call(plain, tmp_path, [PYTHON, "-c", ignore], count=12)
    try:
        _running(plain, tmp_path)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert len(list((tmp_path / "out").iterdir())) == 12
    finally:
        _end(proc)


def test_a_second_ctrl_c_ends_the_call_as_in_process(plain, tmp_path):
    """Item 8: Ctrl-C twice used to SIGKILL the worker (a .part left, no report, no summary);
    now the second is passed on and the call ends as in-process: the file in hand finishes, the
    report and the summary are written, exit 130."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (600, 600, 3)).astype(np.uint8)).save(src / f"{i:02}.png")
    big = ";".join([",".join(["1"] * 31)] * 31)
    results = {}
    for mode, env in (("in-process", {**plain, "KERNELCLI_SERVER": "off"}), ("server", plain)):
        out = tmp_path / f"out-{mode}"
        report = tmp_path / f"report-{mode}.jsonl"
        proc = subprocess.Popen(CLIENT + ["apply", "-k", big, "--map", "normalize", str(src), "-o", str(out), "-j", "1",
                                          "--format", "bmp", "--report", str(report)],
                                env=env, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: out.exists() and any(p.suffix == ".bmp" for p in out.iterdir()), 120, "the first output")
        proc.send_signal(signal.SIGINT)  # while the next file renders
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        left = sorted(p.name for p in out.iterdir())
        summary = re.sub(r"\d+", "N", err.splitlines()[-1])
        results[mode] = proc.returncode, summary, [n for n in left if n.endswith(".part")], report.exists()
        assert report.read_text().count('"status": "ok"') == len(left), mode
    assert results["server"] == results["in-process"]
    assert results["server"][0] == 130 and results["server"][2] == [] and results["server"][3]


def test_a_rendered_result_is_written_when_the_stop_request_comes(tmp_path):
    """Item 8: a file whose result is rendered when Ctrl-C comes is written (it used to be
    discarded); a file not yet read is not started."""
    import threading

    from kernelcli.run import batch

    stop = threading.Event()
    written, read = [], []

    def render(raster, kernels, path):
        stop.set()  # Ctrl-C while this one renders
        return b"data"

    job = batch.Job(batch.Source(tmp_path / "a.png", Path("a.png")), [batch.Output(tmp_path / "a.out", ("k",))])
    assert batch.process_job(job, read=lambda p: read.append(p) or "raster", render=render,
                             write=lambda p, d: written.append(p), stop=stop) == "ok"
    assert written == [tmp_path / "a.out"]
    later = batch.Job(batch.Source(tmp_path / "b.png", Path("b.png")), [batch.Output(tmp_path / "b.out", ("k",))])
    with pytest.raises(batch.Interrupted):
        batch.process_job(later, read=lambda p: read.append(p) or "raster", render=render,
                          write=lambda p, d: written.append(p), stop=stop)
    assert read == [tmp_path / "a.png"] and written == [tmp_path / "a.out"]


# --------------------------------------------------------------------------- stalled connections (item 5)

def _raw_connection(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    return sock


def test_silent_and_trickling_connections_delay_no_other_call(plain, tmp_path):
    """Item 5: requests used to be read one at a time with a 5 s timeout each (12 silent
    connections: a 0.06 s call took 60 s). Now a call is served while silent, trickling and
    malicious connections are still open, without waiting for any of them to time out."""
    path = status(plain)["socket"]
    log = Path(plain["KERNELCLI_SERVER_DIR"]) / "server.log"
    dropped = log.read_text().count("dropped a request")
    silent = [_raw_connection(path) for _ in range(12)]
    trickle = _raw_connection(path)
    trickle.sendall(struct.pack(">I", 1000))  # a length, then a byte now and then
    huge = _raw_connection(path)
    huge.sendall(struct.pack(">I", 1 << 31))  # more than any request: dropped at once
    started = time.monotonic()
    try:
        for _ in range(3):
            trickle.sendall(b"x")
            proc = subprocess.run(CLIENT + ["--version"], env=plain, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0 and proc.stdout.startswith("kernelcli, version")
        elapsed = time.monotonic() - started
        text = log.read_text()
        assert text.count("dropped a request") == dropped + 1 and "too large a request" in text  # only the huge one
        assert elapsed < 5.0  # served before any stalled connection's deadline
        wait_for(lambda: log.read_text().count("no whole request within 5 s") >= 13, 30, "the stalled ones dropped")
    finally:
        for sock in [*silent, trickle, huge]:
            sock.close()


# --------------------------------------------------------------------------- the server dies (item 6)

def test_kill_9_of_the_server_does_not_end_a_running_call(folder, tmp_path):
    env = server_env(folder)
    server = int(start_server(env)["pid"])
    proc = _slow_call(env, tmp_path, count=10)
    try:
        _running(env, tmp_path)
        os.kill(server, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert len(list((tmp_path / "out").iterdir())) == 10
    finally:
        _end(proc)


def test_a_worker_killed_while_its_server_is_gone_is_reported(folder, tmp_path):
    env = server_env(folder)
    server = int(start_server(env)["pid"])
    proc = _slow_call(env, tmp_path, count=10)
    try:
        worker = _worker_of(env)
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not alive(server), 30, "the server to be gone")
        os.kill(worker, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 255
        assert err.endswith(f"kernelcli: error: the call's worker (pid {worker}) ended without an exit status: "
                            "killed by a signal while its server was gone\n")
    finally:
        _end(proc)


def test_the_server_survives_its_log_failing(folder, tmp_path):
    """Item 6: with its log on a full disk the server used to die at the next log line."""
    folder.mkdir(mode=0o700)
    log = folder / "server.log"
    log.symlink_to("/dev/full")  # every write: ENOSPC
    env = server_env(folder)
    server = None
    try:
        server = int(start_server(env)["pid"])
        bad = _raw_connection(status(env)["socket"])
        bad.sendall(struct.pack(">I", 1 << 31))  # logs a dropped request
        bad.close()
        for _ in range(2):
            proc = subprocess.run(CLIENT + ["apply", "-k", "blur", str(SAMPLES / "camera.png"), "-o", "-"], env=env,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0 and proc.stdout.startswith(b"\x89PNG")
        assert alive(server) and int(status(env)["pid"]) == server
    finally:
        log.unlink()  # reading /dev/full never ends: the teardown must not read it
        if server:
            stop_by_pid(server)


# --------------------------------------------------------------------------- stale code (item 7)

def test_an_edit_under_the_cli_package_means_a_new_server(tmp_path):
    """Item 7: the stamp listed only the top level of kernelcli/: an edit of kernelcli/cli/
    was served by the old code."""
    pkg = tmp_path / "copy"
    shutil.copytree(ROOT / "kernelcli", pkg / "kernelcli", ignore=shutil.ignore_patterns("__pycache__"))
    env = server_env(tmp_path / "s")
    env["PYTHONPATH"] = str(pkg)
    try:
        old = int(start_server(env, tmp_path)["pid"])
        source = pkg / "kernelcli" / "cli" / "server.py"
        text = source.read_text()
        assert "The resident server that makes each call fast" in text
        source.write_text(text.replace("The resident server that makes each call fast", "The EDITED server"))
        wait_for(lambda: not alive(old), 30, "the stale server to exit")
        start_server(env, tmp_path)
        before = int(status(env, tmp_path)["requests"])
        proc = subprocess.run(CLIENT + ["server", "--help"], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert "The EDITED server" in proc.stdout
        proc = subprocess.run(CLIENT + ["--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "The EDITED server" in proc.stdout
        assert int(status(env, tmp_path)["requests"]) == before + 1  # --help went through the new server
    finally:
        stop_all_started(tmp_path / "s")


def test_the_stamp_covers_every_file_of_the_package_and_kernels_yaml():
    from kernelcli.server import protocol

    files = protocol._package_files(protocol.PACKAGE)
    names = {os.path.relpath(f, protocol.PACKAGE) for f in files}
    assert {"cli/apply.py", "cli/server.py", "kernels/kernels.yaml", "compute/filters.py", "server/daemon.py"} <= names
    assert not any("__pycache__" in n for n in names)


# --------------------------------------------------------------------------- the socket folder (item 9)

def test_a_stale_runtime_folder_falls_back_to_tmp(monkeypatch):
    from kernelcli.server import protocol

    monkeypatch.delenv("KERNELCLI_SERVER_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent/run/user/1000")
    assert protocol.socket_dir() == f"/tmp/kernelcli-{os.geteuid()}"


@pytest.mark.parametrize("why, reason", [("missing", "No such file or directory"), ("file", "Not a directory")])
def test_an_unusable_server_folder_is_one_warning_and_an_in_process_call(tmp_path, why, reason):
    """Item 9: KERNELCLI_SERVER_DIR=/missing/parent used to fail every call (FileNotFoundError)."""
    if why == "file":
        (tmp_path / "parent").touch()
    folder = tmp_path / "parent" / "s"
    proc = subprocess.run(CLIENT + ["--version"], env=server_env(folder), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("kernelcli, version")
    assert proc.stderr == (f"kernelcli: warning: {folder}: cannot create the server folder: {reason}; "
                           "not using the resident server\n")


def test_a_socket_path_too_long_for_sun_path_still_reaches_a_server(tmp_path):
    """Item 9: every call used to start a server that failed at bind."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = server_env(deep / "s")
    try:
        start_server(env)
        assert len(status(env)["socket"].encode()) > 108
        before = requests_served(env)
        proc = subprocess.run(CLIENT + ["--version"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and requests_served(env) == before + 1
    finally:
        stop_all_started(deep / "s")


# --------------------------------------------------------------------------- managing servers (item 10)

def test_status_and_stop_all_see_every_server(folder):
    envs = [server_env(folder), server_env(folder, LC_ALL="C")]
    pids = {int(start_server(env)["pid"]) for env in envs}
    assert len(pids) == 2
    listing = subprocess.run(CLIENT + ["server", "status", "--all"], env=envs[0], capture_output=True, text=True,
                             timeout=60)
    assert {int(line.split(": ")[1]) for line in listing.stdout.splitlines() if line.startswith("pid: ")} == pids
    stop = subprocess.run(CLIENT + ["server", "stop", "--all"], env=envs[0], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and all(f"pid {p}" in stop.stderr for p in pids)
    assert not any(alive(p) for p in pids)


def test_servers_show_as_kernelcli_server(plain):
    pid = int(status(plain)["pid"])
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[0].startswith(b"kernelcli server --socket ")
    with open(f"/proc/{pid}/comm") as fh:
        assert fh.read() == "kernelcli\n"
    proc = subprocess.run(["pgrep", "-f", "^kernelcli server --socket"], capture_output=True, text=True, timeout=30)
    assert str(pid) in proc.stdout.split()


def test_start_with_another_idle_time_says_the_running_server_keeps_its_own(plain):
    proc = subprocess.run(CLIENT + ["server", "start", "--idle", "5"], env=plain, capture_output=True, text=True,
                          timeout=60)
    info = status(plain)
    assert proc.returncode == 0
    assert proc.stderr == (f"server already running: pid {info['pid']}, socket {info['socket']}; it keeps its idle "
                           f"exit of {info['idle_exit_s']} s (--idle applies to a server it starts: "
                           "`kernelcli server stop` first)\n")


# --------------------------------------------------------------------------- where a worker cannot

def test_a_stopped_server_does_not_hang_a_call(folder):
    """A server that does not answer (SIGSTOP) is passed by after 5 s with one warning; Ctrl-C
    while waiting for it ends the call at once, as in-process; `server stop` ends it."""
    env = server_env(folder)
    server = int(start_server(env)["pid"])
    os.kill(server, signal.SIGSTOP)
    try:
        proc = subprocess.run(CLIENT + ["--version"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("kernelcli, version")
        assert proc.stderr == (f"kernelcli: warning: the resident server (pid {server}) did not answer in 5 s; "
                               "running in this process\n")
        waiting = subprocess.Popen(CLIENT + ["--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: any(os.readlink(f"/proc/{waiting.pid}/fd/{fd}").startswith("socket:")
                             for fd in os.listdir(f"/proc/{waiting.pid}/fd")), 30, "the client to connect")
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=4)  # before the 5 s are up
        assert (waiting.returncode, out, err) == (130, b"", b"")
        stop = subprocess.run(CLIENT + ["server", "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stop.stderr == f"stopped the server (pid {server})\n" and not alive(server)
    finally:
        if alive(server):
            os.kill(server, signal.SIGCONT)


def test_torch_threads_of_a_worker_are_a_fresh_processes():
    """The formula a worker uses (worker.fresh_threads) against real fresh processes."""
    need("taskset")
    from kernelcli.server.worker import fresh_threads

    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    omp = {**env, "OMP_NUM_THREADS": "2"}
    runs = [subprocess.Popen([*prefix, PYTHON, "-c", code], env=e, stdout=subprocess.PIPE, text=True)
            for prefix, e in (([], env), (["taskset", "-c", "0"], env), ([], omp), (["taskset", "-c", "0"], omp))]
    full, one, omp_full, omp_one = (int(p.communicate(timeout=120)[0]) for p in runs)
    assert fresh_threads(full, 1, env) == one
    assert fresh_threads(full, len(os.sched_getaffinity(0)), env) == full
    assert fresh_threads(omp_full, 1, omp) == omp_one


def test_a_caller_the_server_cannot_reach_runs_in_process_and_gets_a_server_of_its_own(folder, tmp_path):
    """Without the privilege to lower a nice value (CAP_SYS_NICE dropped), a server started by a
    `nice -n 10` caller cannot give a later plain caller its priority: that call runs in-process,
    correct, and the server retires, so that the next call starts one from such a caller."""
    need("setpriv", "nice")
    unprivileged = ["setpriv", "--bounding-set=-sys_nice,-sys_resource", "--inh-caps=-sys_nice,-sys_resource", "--"]
    if subprocess.run([*unprivileged, PYTHON, "-c", "import os; os.nice(-1)"], capture_output=True,
                      timeout=30).returncode == 0:
        pytest.skip("a nice value can be lowered here without CAP_SYS_NICE (RLIMIT_NICE)")
    mine = os.getpriority(os.PRIO_PROCESS, 0)  # the plain callers' (the suite may run under `nice`)
    if mine >= 19:
        pytest.skip("runs at nice 19: no caller can be above the server")
    env = server_env(folder)
    low = subprocess.run([*unprivileged, "nice", "-n", "10", *CLIENT, "server", "start"], env=env, capture_output=True,
                         text=True, timeout=180)
    assert low.returncode == 0, low.stderr
    first = int(low.stderr.split("pid ")[1].split(",")[0])
    assert attributes(first)["nice"] == str(min(19, mine + 10))  # as low as it may go
    call = [*unprivileged, *CLIENT, "apply", "-k", "blur", str(SAMPLES / "camera.png"), "-o", "-"]
    in_process = subprocess.run(call, env={**env, "KERNELCLI_SERVER": "off"}, capture_output=True, timeout=180)
    declined = subprocess.run(call, env=env, capture_output=True, timeout=180)
    assert (declined.returncode, declined.stdout, declined.stderr) == (0, in_process.stdout, b"")
    log = folder / "server.log"
    assert f"declined a call (cannot take on nice {mine}: Permission denied)" in log.read_text()
    wait_for(lambda: not alive(first), 30, "the server to retire")
    wait_for(lambda: log.read_text().count("listening") == 2, 120, "a server started by the nice-0 caller")

    def served():  # the server of these callers (their capabilities are part of its key)
        proc = subprocess.run([*unprivileged, *CLIENT, "server", "status"], env=env, capture_output=True, text=True,
                              timeout=60)
        return dict(line.split(": ", 1) for line in proc.stdout.splitlines())

    assert attributes(int(served()["pid"]))["nice"] == str(mine)
    for prefix in ([], ["nice", "-n", "10"]):  # both served now: a nice value may always be raised
        before = int(served()["requests"])
        again = subprocess.run([*unprivileged, *prefix, *call[len(unprivileged):]], env=env, capture_output=True,
                               timeout=180)
        assert (again.returncode, again.stdout, again.stderr) == (0, in_process.stdout, b"")
        assert int(served()["requests"]) == before + 1
