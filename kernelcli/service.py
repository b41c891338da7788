"""Managing the resident server from the command line (`kernelcli server start|stop|status`),
as a client does: through its socket. The server itself (kernelcli.server) runs the CLI, so
the CLI reaches it only from here, never by importing it."""

from __future__ import annotations

import os
import time

from . import protocol as proto


def status() -> dict | None:
    """The running server's status for this install and environment, or None."""
    return proto.ask(_path(), "status")


def start(idle: float | None = None, timeout: float = 60.0) -> dict:
    """Start a server (unless one runs) and wait until it answers; its status."""
    from .errors import KernelcliError

    path = _path()
    deadline = time.monotonic() + timeout
    pid = proto.start_in_background(path, idle)
    while time.monotonic() < deadline:
        info = proto.ask(path, "status")
        if info:
            return info
        if pid is not None and os.waitpid(pid, os.WNOHANG)[0] == pid:
            break
        time.sleep(0.05)
    raise KernelcliError(f"the server did not start; see {os.path.join(os.path.dirname(path), 'server.log')}")


def stop(timeout: float = 30.0) -> int | None:
    """Ask the server to stop (running requests finish first) and wait until it has; its pid."""
    reply = proto.ask(_path(), "stop")
    if not reply:
        return None
    pid = int(reply["pid"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return pid


def _path() -> str:
    from .errors import UsageError

    try:
        return proto.socket_path()
    except proto.InsecureDir as exc:
        raise UsageError(str(exc)) from None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to collect it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
