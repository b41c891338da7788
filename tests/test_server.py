"""The resident server and its thin client, as real processes on a real Unix socket.

Servers live in socket folders under a temporary folder and are stopped by PID. The CLI cases
at the top run twice, in-process (``python -m kernelcli``) and through a server (``python -m
kernelcli.server.client``), and must give the same bytes on stdout, the same stderr and exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
IN_PROCESS = [sys.executable, "-m", "kernelcli"]
CLIENT = [sys.executable, "-m", "kernelcli.server.client"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is Linux-only")


def server_env(folder: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELCLI_")}
    env.update(PYTHONPATH=str(ROOT), KERNELCLI_SERVER_DIR=str(folder), **extra)
    return env


def status(env, cwd=None) -> dict | None:
    proc = subprocess.run(CLIENT + ["server", "status"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines())


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    from kernelcli.server.service import _alive

    return _alive(pid)


def stop_by_pid(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not alive(pid), 30, f"server {pid} to stop")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)


def start_server(env, cwd=None) -> dict:
    proc = subprocess.run(CLIENT + ["server", "start"], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return status(env, cwd)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One server for the session: its environment and pid."""
    env = server_env(tmp_path_factory.mktemp("srv"))
    info = start_server(env)
    yield env
    stop_by_pid(int(info["pid"]))
    stop_all_started(Path(env["KERNELCLI_SERVER_DIR"]))


def stop_all_started(folder: Path) -> None:
    """Any server a test made start in ``folder`` (they log their pid), stopped by PID."""
    log = folder / "server.log"
    for pid in set(re.findall(r"\[(\d+)\] starting", log.read_text() if log.exists() else "")):
        stop_by_pid(int(pid))


def requests_served(env) -> int:
    return int(status(env)["requests"])


# --------------------------------------------------------------------------- the CLI in both modes

def _images(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    shutil.copy(SAMPLES / "camera.png", folder / "camera.png")
    shutil.copy(SAMPLES / "chelsea.jpg", folder / "cat photo.jpg")
    (folder / "batch").mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 30)).astype(np.uint8)).save(
            folder / "batch" / f"{i}.png")
    (folder / "batch" / "broken.png").write_bytes(b"not an image")
    (folder / "mine.yaml").write_text("kernels:\n  my-edge:\n    matrix: [[1, -1]]\n    description: mine\n")


CASES = {
    "version": (["--version"], None, {}),
    "help": (["apply", "--help"], None, {}),
    "kernels list piped": (["kernels", "list"], None, {}),
    "kernel from $KERNELCLI_KERNELS": (["kernels", "show", "my-edge", "--json"], None, {"KERNELCLI_KERNELS": "mine.yaml"}),
    "png to stdout": (["apply", "-k", "sharpen", "camera.png", "-o", "-"], None, {}),
    "stdin to stdout": (["apply", "-k", "emboss", "-", "-o", "-", "--format", "jpg"], "cat photo.jpg", {}),
    "file beside input, relative": (["apply", "-k", "blur", "cat photo.jpg", "-o", "out.jpg"], None, {}),
    "batch with a failure": (["apply", "-k", "outline", "batch", "-o", "outs/", "-j", "1"], None, {}),
    "unknown kernel": (["apply", "-k", "blurr", "camera.png"], None, {}),
    "missing input": (["apply", "-k", "blur", "nowhere.png"], None, {}),
    "empty stdin": (["apply", "-k", "blur", "-", "-o", "-"], "/dev/null", {}),
    "explain table": (["explain", "--size", "32x32x3", "-s", "sharpen", "-s", "pool 2"], None, {}),
    "animate to stdout": (["animate", "-k", "0 1; 2 3", str(SAMPLES / "example-3x3.csv"), "-o", "-"], None, {}),
    "animate trace from stdin": (["animate", "-k", "0 1; 2 3", "--transposed", "-", "--trace"],
                                 str(SAMPLES / "example-2x2.csv"), {}),
    "animate APNG to a file": (["animate", "--pool", "max", str(SAMPLES / "example-5x5.csv"), "-o", "pool.png"], None,
                               {}),
}


def _run_case(cmd, folder, stdin, env):
    with open(folder / stdin if stdin else os.devnull, "rb") as fh:
        proc = subprocess.run(cmd, stdin=fh, capture_output=True, cwd=folder, env=env, timeout=120)
    files = {str(p.relative_to(folder)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
             for p in sorted(folder.rglob("*")) if p.is_file()}
    return proc.returncode, proc.stdout, proc.stderr, files


@pytest.mark.parametrize("case", list(CASES))
def test_same_result_in_process_and_through_the_server(case, served, tmp_path):
    args, stdin, extra = CASES[case]
    results = []
    for mode, cmd in (("in-process", IN_PROCESS), ("server", CLIENT)):
        folder = tmp_path / mode
        _images(folder)
        before = requests_served(served) if mode == "server" else None
        env = {**served, **extra}
        old = os.umask(0o027)  # the client's umask travels too
        try:
            results.append(_run_case(cmd + args, folder, stdin, env))
        finally:
            os.umask(old)
        if mode == "server":
            assert requests_served(served) == before + 1  # it did run in a worker
    (code, out, err, files), (s_code, s_out, s_err, s_files) = results
    assert (s_code, s_err, s_out) == (code, err, out)
    assert s_files == files


def test_three_stage_pipeline_and_cat_end(served, tmp_path):
    sample = SAMPLES / "camera.png"
    one = subprocess.run(IN_PROCESS + ["apply", "-k", "blur", "-k", "emboss", "-k", "sharpen", str(sample), "-o", "-"],
                         capture_output=True, check=True, timeout=120)
    kc = " ".join(CLIENT)
    chain = (f"{kc} apply -k blur - -o - < '{sample}' | {kc} apply -k emboss - -o - "
             f"| {kc} apply -k sharpen - -o - | cat")
    before = requests_served(served)
    piped = subprocess.run(["bash", "-o", "pipefail", "-c", chain], capture_output=True, env=served, timeout=120)
    assert piped.returncode == 0 and piped.stderr == b""
    assert piped.stdout == one.stdout
    assert requests_served(served) == before + 3


def test_each_call_runs_once(served):
    """Each request reaches one worker (a spare forked ahead is handed each request once)."""
    before = requests_served(served)
    for _ in range(20):
        proc = subprocess.run(CLIENT + ["--version"], env=served, capture_output=True, text=True, timeout=60)
        assert proc.stdout == "kernelcli, version 0.1.0\n" and proc.returncode == 0
    assert requests_served(served) == before + 20


def test_isatty_is_true_through_a_pty(served):
    import pty

    main_fd, tty = pty.openpty()
    try:
        proc = subprocess.run(CLIENT + ["apply", "-k", "blur", str(SAMPLES / "camera.png"), "-o", "-"],
                              stdout=tty, stderr=subprocess.PIPE, env=served, timeout=60)
    finally:
        os.close(tty)
        os.close(main_fd)
    assert proc.returncode == 2
    assert proc.stderr == b"kernelcli: error: refusing to write image data to a terminal; redirect stdout or use -o FILE\n"


# --------------------------------------------------------------------------- signals and crashes

def _slow_batch(tmp_path, count=150):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (200, 200)).astype(np.uint8)).save(src / f"{i:03}.png")
    big = ";".join([",".join(["1"] * 41)] * 41)
    return src, ["apply", "-k", big, "--map", "normalize", str(src), "-o", str(tmp_path / "out"), "-j", "1"]


def _worker_of(env) -> int:
    return int(wait_for(lambda: (status(env) or {}).get("workers"), 60, "a worker"))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_term_exits_as_in_process_and_leaves_no_worker(served, tmp_path, signum, code):
    _, args = _slow_batch(tmp_path)
    proc = subprocess.Popen(CLIENT + args, env=served, stderr=subprocess.PIPE, text=True)
    worker = _worker_of(served)
    wait_for(lambda: any((tmp_path / "out").glob("*.png")), 60, "the first output")
    proc.send_signal(signum)  # Ctrl-C: what a terminal sends to the client's process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "(interrupted)" in err and "Traceback" not in err
    wait_for(lambda: not alive(worker), 10, "the worker to be gone")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_stops_the_worker_too_and_both_continue(served, tmp_path):
    _, args = _slow_batch(tmp_path, count=60)
    # A job of its own, as a shell starts it: a group whose parent (pytest) is in another group of the
    # session, so Ctrl-Z stops it even where pytest's own group is orphaned (a run started by a shell
    # that has exited), in which the kernel discards a stop signal's default action.
    proc = subprocess.Popen(CLIENT + args, env=served, stderr=subprocess.PIPE, text=True, process_group=0)
    try:
        worker = _worker_of(served)
        wait_for(lambda: any((tmp_path / "out").glob("*.png")), 60, "the first output")
        proc.send_signal(signal.SIGTSTP)  # Ctrl-Z
        wait_for(lambda: _state(proc.pid) == "T" and _state(worker) == "T", 30, "client and worker to stop")
        proc.send_signal(signal.SIGCONT)  # fg
        wait_for(lambda: _state(proc.pid) != "T" and _state(worker) != "T", 30, "both to continue")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    finally:  # a failure above must not leave the client (and so its worker) running into the next test
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.communicate(timeout=30)


def test_client_killed_takes_its_worker_and_leaves_no_partial_output(served, tmp_path):
    _, args = _slow_batch(tmp_path)
    proc = subprocess.Popen(CLIENT + args, env=served, stderr=subprocess.DEVNULL)
    worker = _worker_of(served)
    wait_for(lambda: any((tmp_path / "out").glob("*.png")), 60, "the first output")
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: not alive(worker), 15, "the worker to be killed")
    done = sorted((tmp_path / "out").iterdir())
    assert 0 < len(done) < 150
    assert all(not p.name.startswith(".") for p in done)  # no temporary file left
    for p in done:
        with Image.open(p) as im:
            im.load()  # every kept output is whole


def test_worker_crash_is_reraised_and_the_server_keeps_serving(served, tmp_path):
    _, args = _slow_batch(tmp_path, count=40)
    pid = int(status(served)["pid"])
    proc = subprocess.Popen(CLIENT + args, env=served, stderr=subprocess.DEVNULL)
    worker = _worker_of(served)
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # the client dies as its worker did
    again = subprocess.run(CLIENT + ["--version"], env=served, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("kernelcli, version")
    assert int(status(served)["pid"]) == pid


def test_another_uid_is_refused(served, tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not python:
        pytest.skip("needs root, setpriv and a python3 that uid 65534 may run")
    sock = Path(status(served)["socket"])
    shared = Path(tempfile_dir())
    link = shared / "s"
    os.link(sock, link)  # the same socket, reachable by another user
    os.chmod(link, 0o666)
    try:
        probe = ("import socket, struct, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
                 "try:\n    s.sendall(struct.pack('>I', 10) + b'status\\x000\\x000')\n    print(repr(s.recv(100)))\n"
                 "except (ConnectionResetError, BrokenPipeError):\n    print(repr(b''))\n")
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c",
                               probe, str(link)], capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(link, 0o600)
        shutil.rmtree(shared)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b''"  # closed without a word
    log = (sock.parent / "server.log").read_text()
    assert "refused a connection from uid 65534" in log


def tempfile_dir() -> str:
    import tempfile

    folder = tempfile.mkdtemp(prefix="kc-uid-")
    os.chmod(folder, 0o711)
    return folder


# --------------------------------------------------------------------------- start, staleness, idle exit

def test_cold_pipeline_starts_one_server_which_exits_when_idle(tmp_path):
    folder = tmp_path / "s"
    env = server_env(folder, KERNELCLI_SERVER_IDLE="3")
    sample = SAMPLES / "camera.png"
    kc = " ".join(CLIENT)
    chain = f"{kc} apply -k blur - -o - < '{sample}' | {kc} apply -k emboss - -o - | {kc} apply -k sharpen - -o -"
    piped = subprocess.run(["bash", "-o", "pipefail", "-c", chain], capture_output=True, env=env, timeout=180)
    assert piped.returncode == 0 and piped.stderr == b""
    log = folder / "server.log"
    try:
        wait_for(lambda: log.exists() and "] exit" in log.read_text(), 120, "the server to start, then leave idle")
        text = log.read_text()
        assert text.count("starting for") == 1 and text.count("listening") == 1, text
        assert "idle for 3 s" in text
        assert not list(folder.glob("*.sock"))
    finally:
        stop_all_started(folder)


def test_changed_install_means_a_new_server(tmp_path):
    pkg = tmp_path / "copy"
    shutil.copytree(ROOT / "kernelcli", pkg / "kernelcli", ignore=shutil.ignore_patterns("__pycache__"))
    env = server_env(tmp_path / "s")
    env["PYTHONPATH"] = str(pkg)  # and run from tmp_path: `-m` puts the working folder first on sys.path
    first = start_server(env, tmp_path)
    old_pid = int(first["pid"])
    try:
        later = time.time() + 5
        os.utime(pkg / "kernelcli" / "compute" / "mapping.py", (later, later))
        wait_for(lambda: not alive(old_pid), 30, "the stale server to exit")
        assert "the install or its environment changed" in (tmp_path / "s" / "server.log").read_text()
        log = tmp_path / "s" / "server.log"
        call = subprocess.run(CLIENT + ["--version"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
        assert call.returncode == 0  # in-process, and a new server starts for the new install
        wait_for(lambda: log.read_text().count("starting for") == 2, 30, "a new server")
        sockets = re.findall(r"starting for (\S+)", log.read_text())
        assert sockets[0] == first["socket"] and sockets[1] != sockets[0]
        wait_for(lambda: log.read_text().count("listening") == 2, 120, "the new server to listen")
        stop = subprocess.run(CLIENT + ["server", "stop"], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        new_pid = int(re.findall(r"\[(\d+)\] starting", log.read_text())[1])
        assert stop.returncode == 0 and stop.stderr == f"stopped the server (pid {new_pid})\n"
        assert not alive(new_pid) and "asked to stop" in log.read_text()
    finally:
        stop_all_started(tmp_path / "s")


def test_off_switch_and_no_server_flag_run_in_process(tmp_path):
    folder = tmp_path / "s"
    for extra, argv in (({"KERNELCLI_SERVER": "off"}, ["--version"]), ({}, ["--no-server", "--version"])):
        proc = subprocess.run(CLIENT + argv, env=server_env(folder, **extra), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("kernelcli, version")
    assert not folder.exists() or not list(folder.iterdir())  # no socket, no server started


def test_socket_folder_must_be_private(tmp_path, monkeypatch):
    from kernelcli.server import client

    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    for bad in (open_dir, link):
        monkeypatch.setenv("KERNELCLI_SERVER_DIR", str(bad))
        with pytest.raises(client.InsecureDir):
            client.socket_dir()
    monkeypatch.setenv("KERNELCLI_SERVER_DIR", str(tmp_path / "new"))
    assert stat.S_IMODE(os.lstat(client.socket_dir()).st_mode) == 0o700


def test_insecure_folder_warns_and_runs_in_process(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    proc = subprocess.run(CLIENT + ["--version"], env=server_env(open_dir), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("kernelcli, version")
    assert proc.stderr.startswith(f"kernelcli: warning: {open_dir}: not a private folder")
    assert not list(open_dir.iterdir())


def test_stamp_follows_the_environment_the_server_cannot_change(monkeypatch):
    from kernelcli.server import client

    base = client.stamp()
    for name in ("OMP_NUM_THREADS", "LD_PRELOAD", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "XDG_CONFIG_HOME", "LANG"):
        with monkeypatch.context() as m:
            m.setenv(name, "/changed")
            assert client.stamp() != base, name
    monkeypatch.setenv("KERNELCLI_DEVICE", "cpu")  # read per request: the same server serves these
    monkeypatch.setenv("KERNELCLI_KERNELS", "/changed.yaml")
    assert client.stamp() == base


# --------------------------------------------------------------------------- light client, fork safety

def test_client_imports_only_the_standard_library():
    code = ("import sys, kernelcli.server.client as c; c.enabled([]); c.stamp(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'click', 'numpy', 'yaml', 'torch', 'PIL', 'rich'} or m in {'kernelcli.api', 'kernelcli.cli'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=server_env(Path("/nonexistent")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_fork_after_warm_up_does_not_hang():
    """The server's warm-up leaves torch forkable: a child runs a multi-threaded op at once."""
    code = (
        "import os, sys, torch\n"
        "from kernelcli.server import daemon as server\n"
        "threads = server.warm_up()\n"
        "assert not torch.cuda.is_initialized()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.set_num_threads(max(2, threads))\n"
        "    x = torch.nn.functional.conv2d(torch.rand(1, 3, 512, 512), torch.ones(3, 1, 5, 5), groups=3)\n"
        "    os._exit(0 if x.shape[-1] == 508 and not torch.cuda._is_in_bad_fork() else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=server_env(Path("/nonexistent")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_a_kernel_file_is_read_each_time_but_parsed_once_per_content(tmp_path, monkeypatch):
    from kernelcli.kernels import library as kernels

    path = tmp_path / "k.yaml"
    path.write_text("kernels:\n  one:\n    matrix: [[1, 2]]\n    description: d\n")
    first = kernels.load_file(path)

    def no_parse(self, text):
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr(kernels._FileParser, "parse", no_parse)
        assert kernels.load_file(path) == first  # the same content: no second parse
    path.write_text("kernels:\n  one:\n    matrix: [[3, 4]]\n    description: d\n")
    assert kernels.load_file(path)[0].matrix == ((3.0, 4.0),)  # an edit applies at once
    with pytest.raises(kernels.KernelFileError, match="1x1 is allowed"):
        kernels.load_file(path, max_kernel=1)  # the size limit is part of the key
