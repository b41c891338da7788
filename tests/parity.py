"""The parity harness: a call through the resident server is the same call as in-process.

Every CLI call a test makes with ``conftest.run()`` runs twice: in-process (click's CliRunner,
whose result the test goes on to check) and through the real thin client and a real server, in
a subprocess with the same argv, stdin, working folder and environment. Both runs start from the
same files (the test's folders under pytest's base temp folder are snapshotted before and put
back in between) and must agree on the exit code, stdout bytes, stderr bytes and the files left
(bytes, modes, links, folders). The test then goes on with the in-process run's files.

Not compared (counted, and listed at the end of the session): calls made while the test has
patched Python objects with monkeypatch (the server does not see the patch), calls with URLs
(object-store state is not snapshotted), calls outside a test function (fixtures of wider scope).
``KERNELCLI_TEST_PARITY=0`` switches the harness off (then run() is CliRunner alone).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENABLED = os.environ.get("KERNELCLI_TEST_PARITY", "1") != "0"
IN_PROCESS_MARK = b"\0parity: no server took the call\n"
# The real client, except that where it would run the command itself (no server for this stamp,
# or a worker declined) it says so and exits: a call the harness compares did run in a worker.
CLIENT = [sys.executable, "-c",
          "import os, sys\n"
          "from kernelcli.server import client\n"
          f"client.in_process = lambda: (os.write(2, {IN_PROCESS_MARK!r}), sys.exit(97))\n"
          "client.start_in_background = lambda *a, **k: None\n"
          "sys.argv[0] = 'kernelcli'\n"
          "client.main()\n"]
COUNTS: Counter = Counter()
SECONDS = [0.0]  # the harness's own time (snapshots, the run through the server, comparing)


def invoke(argv: list[str], input=None):
    """The command in-process with click's CliRunner, as a real process would run it: named
    kernelcli, help wrapped to the terminal's width (CliRunner forces 80 columns)."""
    from click import formatting
    from click.testing import CliRunner

    from kernelcli.cli import main

    class Runner(CliRunner):
        def isolation(self, *args, **kwargs):
            import contextlib

            @contextlib.contextmanager
            def real_width():
                with CliRunner.isolation(self, *args, **kwargs) as streams:
                    formatting.FORCED_WIDTH = None
                    yield streams

            return real_width()

    return Runner().invoke(main, argv, input=input, prog_name="kernelcli")


class Harness:
    def __init__(self, base: Path, folder: Path):
        self.base, self.folder = base, folder
        self.request = None
        self.started: set[str] = set()

    # ------------------------------------------------------------------ the two runs

    def run(self, argv: list[str], input):
        def in_process():
            return invoke(argv, input)

        reason = self.not_comparable(argv)
        if reason:
            COUNTS[f"not compared: {reason}"] += 1
            return in_process()
        started = time.monotonic()
        cwd = os.getcwd()
        roots = self.roots(argv, cwd)
        before = {r: snapshot(r) for r in roots}
        ran = time.monotonic()
        result = in_process()
        started += time.monotonic() - ran  # the harness's own time: all but the in-process run
        after = {r: snapshot(r, before[r]) for r in roots}
        for r in roots:
            restore(r, before[r], after[r])
        code, out, err = self.through_server(argv, input, cwd)
        served = {r: snapshot(r, before[r]) for r in roots}
        for r in roots:
            restore(r, after[r], served[r])
        mine = (result.exit_code, result.stdout_bytes, result.stderr_bytes)
        problems = []
        if (code, out, err) != mine and (code, _lines(out), _lines(err)) == (mine[0], _lines(mine[1]), _lines(mine[2])):
            COUNTS["with lines in another order (inputs finishing in parallel)"] += 1
        elif (code, out, err) != mine:
            problems.append(f"in-process exit {mine[0]}, stdout {mine[1][:300]!r}, stderr {mine[2][:600]!r}\n"
                            f"server     exit {code}, stdout {out[:300]!r}, stderr {err[:600]!r}")
        reports = _reports(argv, cwd)
        for r in roots:
            diff = compare(after[r], served[r], {os.path.relpath(f, r) for f in reports})
            if diff:
                problems.append(f"files under {r}: {diff}")
        if problems:
            pytest.fail(f"kernelcli {' '.join(argv)}: through the server differs from in-process\n" + "\n".join(problems))
        COUNTS["compared through a server"] += 1
        SECONDS[0] += time.monotonic() - started
        return result

    def not_comparable(self, argv) -> str | None:
        if any("://" in a for a in argv):
            return "a URL (object-store state)"
        if "--no-server" in argv:
            return "--no-server (in-process by request; tests/test_newcomer.py checks the client honours it)"
        if any(a.startswith(("/dev/fd/", "/proc/self/fd/")) for a in argv):
            return "a descriptor of the test process (a pipe is read once)"
        patch = self.request.node.funcargs.get("monkeypatch") if self.request else None
        if patch is not None:
            if getattr(patch, "_setattr", None) or any(d is not os.environ for d, _, _ in getattr(patch, "_setitem", [])):
                return "the test patched Python objects"
        return None

    def roots(self, argv, cwd) -> list[Path]:
        """The test's folders the call may read or write: those under the base temp folder that
        its arguments, working folder or environment name."""
        base = str(self.base)
        names = [cwd, *argv, *(a.split("=", 1)[1] for a in argv if a.startswith("-") and "=" in a),
                 *(v for v in os.environ.values() if v.startswith(base))]
        roots = set()
        for name in names:
            path = os.path.realpath(os.path.join(cwd, name))
            if path.startswith(base + os.sep) and not path.startswith(str(self.folder)):
                roots.add(Path(base) / Path(path).relative_to(base).parts[0])
        return sorted(roots)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("KERNELCLI_SERVER", "KERNELCLI_SERVER_DIR")}
        env.update(PYTHONPATH=str(ROOT), KERNELCLI_SERVER_DIR=str(self.folder))
        return env

    def through_server(self, argv, input, cwd):
        data = input.encode() if isinstance(input, str) else (input or b"")
        env = self.env()
        for attempt in range(2):
            proc = subprocess.run(CLIENT + argv, input=data, capture_output=True, cwd=cwd, env=env, timeout=300)
            if not proc.stderr.endswith(IN_PROCESS_MARK):
                return proc.returncode, proc.stdout, proc.stderr
            if attempt == 0:
                self.start_server(env)
        pytest.fail(f"kernelcli {' '.join(argv)}: no server took the call (see {self.folder / 'server.log'})")

    def start_server(self, env) -> None:
        """A server for this environment (a test that sets a variable the stamp covers needs its own)."""
        proc = subprocess.run([sys.executable, "-m", "kernelcli.server.client", "server", "start"], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        self.started.add(proc.stderr)

    def stop_servers(self) -> None:
        subprocess.run([sys.executable, "-m", "kernelcli.server.client", "server", "stop", "--all"], env=self.env(),
                       capture_output=True, timeout=120)


# --------------------------------------------------------------------------- files


def snapshot(root: Path, known: dict | None = None) -> dict:
    """{relative path: (kind, mode, content, mtime_ns, identity)} of everything under ``root``;
    FIFOs, sockets and devices are recorded, never opened. A file unchanged since ``known`` (same
    inode, size and mtime) is not read again."""
    out = {}
    if not os.path.lexists(root):
        return out
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path), 0, None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, None, 0, None)
            elif stat.S_ISREG(st.st_mode):
                identity = (st.st_ino, st.st_size, st.st_mtime_ns)
                old = (known or {}).get(rel)
                if old is not None and old[0] == "file" and old[4] == identity:
                    out[rel] = ("file", mode, old[2], st.st_mtime_ns, identity)
                else:
                    with open(path, "rb") as fh:
                        out[rel] = ("file", mode, fh.read(), st.st_mtime_ns, identity)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode) | mode, None, 0, None)
    return out


def _reports(argv, cwd) -> set[str]:
    """The --report files of a call (one line per input, in the order the inputs finish)."""
    out = set()
    for n, a in enumerate(argv):
        name = a.split("=", 1)[1] if a.startswith("--report=") else argv[n + 1] if a == "--report" and n + 1 < len(argv) \
            else None
        if name and name != "-":
            out.add(os.path.realpath(os.path.join(cwd, name)))
    return out


def compare(a: dict, b: dict, reports=frozenset()) -> str:
    """What differs between two snapshots (mtimes aside; the lines of a report in any order)."""
    lines = []
    for rel in sorted(set(a) | set(b)):
        x, y = a.get(rel), b.get(rel)
        if x is None or y is None:
            lines.append(f"{rel}: {'only through the server' if x is None else 'only in-process'}")
        elif x[:2] != y[:2]:
            lines.append(f"{rel}: {x[0]} mode {x[1]:o} in-process, {y[0]} mode {y[1]:o} through the server")
        elif x[2] != y[2] and not (rel in reports and _lines(x[2]) == _lines(y[2])):
            lines.append(f"{rel}: content differs{_first_difference(x[2], y[2])}")
    return "; ".join(lines)


def _lines(data: bytes) -> list[bytes]:
    """The lines in order of their bytes: one line per input of a parallel batch comes in the
    order the inputs finish (in-process too), so only the set of lines is the same each run."""
    return sorted(data.splitlines())


def _first_difference(a, b) -> str:
    if not isinstance(a, bytes) or not isinstance(b, bytes):
        return f" ({a!r} vs {b!r})"
    for n, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
        if x != y:
            return f" (line {n + 1}: {x[:200]!r} in-process, {y[:200]!r} through the server)"
    return f" ({len(a)} vs {len(b)} bytes)"


def restore(root: Path, snap: dict, current: dict) -> None:
    """Put ``root`` back as ``snap`` recorded it; ``current``: its snapshot now (a file whose
    bytes and mode are already right only gets its mtime back)."""
    now = {rel: entry[0] for rel, entry in current.items()}
    for rel in sorted(set(now) - set(snap), key=lambda r: -r.count(os.sep)):
        path = os.path.join(root, rel)
        _writable_parent(path)
        if now[rel] == "dir":
            shutil.rmtree(path)
        else:
            os.unlink(path)
    dirs = []
    for rel in sorted(snap, key=lambda r: r.count(os.sep)):
        kind, mode, content, mtime, _ = snap[rel]
        path = os.path.join(root, rel)
        if kind == "dir":
            if now.get(rel) != "dir":
                _writable_parent(path)
                os.makedirs(path, exist_ok=True)
            dirs.append((path, mode))
            os.chmod(path, mode | stat.S_IRWXU)  # writable until its files are back
        elif kind == "link":
            if not os.path.islink(path) or os.readlink(path) != content:
                _writable_parent(path)
                if os.path.lexists(path):
                    os.unlink(path)
                os.symlink(content, path)
        elif kind == "file":
            here = current.get(rel)
            if here is not None and here[:3] == ("file", mode, content):
                if here[3] != mtime:
                    os.utime(path, ns=(mtime, mtime))
                continue
            _writable_parent(path)
            if here is not None and here[0] != "file":
                os.unlink(path)
            elif here is not None:
                os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            with open(path, "wb") as fh:
                fh.write(content)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))
        elif not os.path.lexists(path) and stat.S_ISFIFO(mode):
            os.mkfifo(path, stat.S_IMODE(mode))
    for path, mode in reversed(dirs):
        os.chmod(path, mode)


def _writable_parent(path: str) -> None:
    parent = os.path.dirname(path)
    mode = stat.S_IMODE(os.stat(parent).st_mode)
    if not mode & stat.S_IWUSR:
        os.chmod(parent, mode | stat.S_IRWXU)


# --------------------------------------------------------------------------- pytest plugin

HARNESS: list[Harness] = []


@pytest.fixture(scope="session")
def _parity_server(tmp_path_factory):
    if not ENABLED or not sys.platform.startswith("linux"):
        yield None
        return
    folder = tmp_path_factory.mktemp("parity-server")
    folder.chmod(0o700)
    harness = Harness(Path(os.path.realpath(tmp_path_factory.getbasetemp())), Path(os.path.realpath(folder)))
    harness.start_server(harness.env())
    HARNESS.append(harness)
    yield harness
    HARNESS.clear()
    harness.stop_servers()


@pytest.fixture(autouse=True)
def _parity(request):
    """Makes this test's run() calls go through the harness (started with the first test that
    calls run())."""
    if not ENABLED:
        yield
        return
    CURRENT[:] = [request]
    yield
    CURRENT[:] = []


CURRENT: list = []


def harness():
    """The harness for the running test, or None (switched off, or outside a test function)."""
    if not CURRENT:
        return None
    request = CURRENT[0]
    h = request.getfixturevalue("_parity_server")
    if h is not None:
        h.request = request
    return h


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_line("parity harness (in-process vs through a server): "
                                    + ", ".join(f"{n} {what}" for what, n in sorted(COUNTS.items()))
                                    + f"; {SECONDS[0]:.0f} s of its own")
