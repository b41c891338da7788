"""Managing the resident server from the command line (`kernelcli server start|stop|status`),
as a client does: through its socket. The server itself (kernelcli.server) runs the CLI, so
the CLI reaches it only from here, never by importing it."""

from __future__ import annotations

import os
import signal
import time

from . import protocol as proto


def status() -> dict | None:
    """The running server's status for this install and environment, or None."""
    return proto.ask(_path(), "status")


def statuses() -> list[dict]:
    """The status of every server in the socket folder (any install, environment or context);
    one that listens but does not answer shows as ``{"pid": N, "socket": …, "answer": "none"}``."""
    out = []
    for path in proto.sockets(_folder()):
        info = proto.ask(path, "status", timeout=5.0)
        if info is not None:
            out.append({"socket": path, **info})
    return out


def start(idle: float | None = None, timeout: float = 60.0) -> dict:
    """Start a server (unless one runs) and wait until it answers; its status."""
    return ensure(idle, timeout)[0]


def ensure(idle: float | None = None, timeout: float = 60.0) -> tuple[dict, bool]:
    """Start a server (unless one runs) and wait until it answers: its status, and whether it
    was started now (False: one was running, with its own idle time)."""
    from .errors import KernelcliError

    path = _path()
    running = proto.ask(path, "status")
    if running and running.get("answer") != "none":
        return running, False
    deadline = time.monotonic() + timeout
    pid = proto.start_in_background(path, idle)
    while time.monotonic() < deadline:
        info = proto.ask(path, "status")
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
    for path in proto.sockets(_folder()):
        pid = _stop(path, timeout)
        if pid is not None:
            pids.append(pid)
    return pids


def _stop(path: str, timeout: float) -> int | None:
    """``stop`` through the socket; a server that listens but does not answer (stopped with
    SIGSTOP, stuck) gets SIGTERM and SIGCONT, then SIGKILL. Running calls are not ended either
    way: workers finish on their own."""
    reply = proto.ask(path, "stop", timeout=5.0)
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
    from .errors import UsageError

    try:
        return proto.socket_dir()
    except proto.UnusableDir as exc:
        raise UsageError(str(exc)) from None


def _path() -> str:
    from .errors import UsageError

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
