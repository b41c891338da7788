"""Managing resident servers, as a client does: through their sockets (`kernelcli server
start|stop|status`, and the thin client when no server answers: :func:`start_in_background`).
The server itself (kernelcli.server.daemon) runs the CLI, so the CLI reaches it only from here, never
by importing it."""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

from . import protocol as proto
from .caller import limit_ids
from .protocol import IDLE_SECONDS, PACKAGE, connect, encode_request, server_environment


def status() -> dict | None:
    """The running server's status for this install and environment, or None."""
    return ask(_path(), "status")


def statuses() -> list[dict]:
    """The status of every server in the socket folder (any install, environment or context);
    one that listens but does not answer shows as ``{"pid": N, "socket": …, "answer": "none"}``."""
    out = []
    for path in sockets(_folder()):
        info = ask(path, "status", timeout=5.0)
        if info is not None:
            out.append({"socket": path, **info})
    return out


def start(idle: float | None = None, timeout: float = 60.0) -> dict:
    """Start a server (unless one runs) and wait until it answers; its status."""
    return ensure(idle, timeout)[0]


def ensure(idle: float | None = None, timeout: float = 60.0) -> tuple[dict, bool]:
    """Start a server (unless one runs) and wait until it answers: its status, and whether it
    was started now (False: one was running, with its own idle time)."""
    from ..errors import KernelcliError

    path = _path()
    running = ask(path, "status")
    if running and running.get("answer") != "none":
        return running, False
    deadline = time.monotonic() + timeout
    pid = start_in_background(path, idle)
    while time.monotonic() < deadline:
        info = ask(path, "status")
        if info and info.get("answer") != "none":
            return info, True
        if pid is not None and os.waitpid(pid, os.WNOHANG)[0] == pid:
            break
        time.sleep(0.05)
    raise KernelcliError(f"the server did not start; see {os.path.join(os.path.dirname(path), 'server.log')}")


def stop(timeout: float = 30.0) -> int | None:
    """Ask the server to stop (running requests finish first) and wait until it has; its pid."""
    return _stop(_path(), timeout)


def stop_all(timeout: float = 30.0) -> list[int]:
    """Stop every server in the socket folder; their pids."""
    pids = []
    for path in sockets(_folder()):
        pid = _stop(path, timeout)
        if pid is not None:
            pids.append(pid)
    return pids


def _stop(path: str, timeout: float) -> int | None:
    """``stop`` through the socket; a server that listens but does not answer (stopped with
    SIGSTOP, stuck) gets SIGTERM and SIGCONT, then SIGKILL. Running calls are not ended either
    way: workers finish on their own."""
    reply = ask(path, "stop", timeout=5.0)
    if not reply:
        return None
    pid = int(reply["pid"])
    if reply.get("answer") == "none":
        for sig in (signal.SIGTERM, signal.SIGCONT):
            _kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid) and reply.get("answer") == "none":
        _kill(pid, signal.SIGKILL)
    return pid


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _folder() -> str:
    from ..errors import UsageError

    try:
        return proto.socket_dir()
    except proto.UnusableDir as exc:
        raise UsageError(str(exc)) from None


def _path() -> str:
    from ..errors import UsageError

    try:
        return proto.socket_path()
    except proto.UnusableDir as exc:
        raise UsageError(str(exc)) from None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to collect it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- talking to servers, starting one


def server_pid(sock) -> int | None:
    """The pid of the server at the other end of a connection (SO_PEERCRED), or None."""
    import socket

    try:
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return None
    return pid or None


def ask(path: str, verb: str, timeout: float = 10.0) -> dict | None:
    """``status`` or ``stop`` to the server at ``path``: its ``key=value`` reply, None when none
    answers; ``{"pid": N, "answer": "none"}`` when one listens but does not answer in time."""
    sock = connect(path, timeout)
    if sock is None:
        return None
    try:
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                return None
            greeting += chunk
        sock.sendall(encode_request(verb, env={}))
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    except (ConnectionResetError, BrokenPipeError):
        return None
    except TimeoutError:
        pid = server_pid(sock)
        return {"pid": str(pid), "answer": "none"} if pid else None
    finally:
        sock.close()
    if not reply:
        return None
    return dict(line.split("=", 1) for line in reply.decode().splitlines() if "=" in line)


def sockets(folder: str) -> list[str]:
    """Every server socket in a socket folder (any install or environment)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in sorted(names) if n.startswith("server-") and n.endswith(".sock")]


def start_in_background(path: str, idle: float | None = None) -> int | None:
    """Start a server for ``path`` unless one answers or another process is starting one (a file
    lock held until the new server listens: a cold 3-stage pipeline starts one server).
    Returns the new server's pid, or None (also when it cannot be started: calls run in-process).

    The server starts clean, whoever this caller is: the environment the stamp covers and
    nothing else, no open fds but its log and the lock, no blocked or ignored signals, its own
    session, soft limits at the hard ones (:func:`server_limits`); it resets its scheduling
    itself (kernelcli.server.worker.clean_scheduling)."""
    import fcntl

    try:
        lock = os.open(path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process is starting one
            return None
        sock = connect(path, 1.0)  # one may have started between our first try and the lock
        if sock is not None:
            sock.close()
            return None
        if idle is None:
            idle = float(os.environ.get("KERNELCLI_SERVER_IDLE") or IDLE_SECONDS)
        root = os.path.dirname(PACKAGE)
        log = os.path.join(os.path.dirname(path), "server.log")
        argv = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                "import kernelcli.server.daemon as s; s.main(sys.argv[2:])",
                root, "--socket", path, "--idle", str(idle), "--lock-fd", str(lock)]
        os.set_inheritable(lock, True)
        return _spawn(argv, log, keep=lock)
    finally:
        os.close(lock)  # the server keeps its own copy until it listens


def _spawn(argv: list[str], log: str, keep: int) -> int | None:
    """fork + exec (not posix_spawn: glibc's leaves its internal signals ignored in the child),
    everything of this caller's reset in the child before exec."""
    import _signal
    import resource

    limits, env = server_limits(), server_environment()
    try:
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # no log can be opened: calls run in-process
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(out)
        return None
    if pid == 0:  # this client is single-threaded: only simple calls here, then exec
        try:
            os.setsid()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 20)
            for res, value in limits.items():
                resource.setrlimit(res, value)
            for sig in _signal.valid_signals() - {_signal.SIGKILL, _signal.SIGSTOP}:
                _signal.signal(sig, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(out)
    return pid


def server_limits() -> dict[int, tuple[int, int]]:
    """The soft limits a server starts with, whoever starts it: each at its hard limit (the most
    any caller may ask of a worker), except core dumps (none of the server's) and the stack
    (8 MiB, the usual default: it sizes thread stacks and the memory layout at exec).
    Hard limits stay as they are (raising one needs a privilege)."""
    import resource

    out = {}
    for res in limit_ids(resource):
        soft, hard = resource.getrlimit(res)
        if res == resource.RLIMIT_CORE:
            want = 0
        elif res == resource.RLIMIT_STACK:
            want = hard if hard != resource.RLIM_INFINITY and hard < 8 << 20 else 8 << 20
        else:
            want = hard
        if want != soft:
            out[res] = (want, hard)
    return out
