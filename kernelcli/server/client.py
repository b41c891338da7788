"""The ``kernelcli`` command: a thin client for the resident server (Mercurial chg's design).

Standard library only, so a call costs a bare interpreter start (~20 ms), not ``import torch``
(~1.8 s). It connects to a Unix socket and passes what makes the call its own: fds 0/1/2, its
other inheritable fds and its working folder with SCM_RIGHTS, argv, environment and umask, and
its process attributes (limits, priority, CPUs, signal mask and ignored signals:
kernelcli.server.caller). The server's worker takes them on, tells its pid, and runs once this client
says go; the client forwards signals to it and exits with its status. When no server answers,
or the worker cannot take the caller on, it runs the command in this process exactly as
``python -m kernelcli`` does (and starts a server in the background for the next call).
``KERNELCLI_SERVER=off`` or ``kernelcli --no-server …`` never use one.

Protocol (version ``PROTOCOL``; the socket name carries it, so client and server always agree):
the request is described in kernelcli.server.protocol. The server greets each connection with
``ready`` (the request and its fds follow only then). Replies are lines: ``pid N`` from the worker
(its process group is N), answered by ``go`` from the client; then ``exit N`` from the worker,
or ``signal N`` from the server when the worker died by a signal. ``status``: one ``key=value``
line per field. Closed before ``pid``: nothing ran (the client runs the command itself).
"""

from __future__ import annotations

import _signal  # the C module: `signal` would import enum (~5 ms)
import _socket  # the C module: `socket` would import selectors and enum (~15 ms)
import os
import struct
import sys
import time

from .protocol import (  # noqa: F401  (tests reach them through here too)
    PROTOCOL,
    IDLE_SECONDS,
    STAMP_ENV_PREFIXES,
    STAMP_ENV_NAMES,
    STAMP_PACKAGES,
    InsecureDir,
    UnusableDir,
    socket_dir,
    _private,
    stamp,
    socket_path,
    connect,
    encode_request,
)

# Passed on to the worker (it has the caller's dispositions: one the caller ignores is ignored there)
FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGALRM,
                     _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH)
PID_DEADLINE = 5.0  # seconds for a server to answer with its worker's pid; then the call runs here


def enabled(args: list[str]) -> bool:
    """Whether this call may go through a server: not switched off, a Linux machine whose I/O
    priority calls kernelcli knows, stdio open, and not ``kernelcli server …`` (that manages
    the server, in this process)."""
    from .caller import IOPRIO_SYSCALLS

    if os.environ.get("KERNELCLI_SERVER", "").strip().lower() in ("off", "0", "no", "false"):
        return False
    if not sys.platform.startswith("linux") or os.uname().machine not in IOPRIO_SYSCALLS:
        return False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # a closed standard stream cannot be passed
            return False
    options = args[: args.index("--")] if "--" in args else args
    if "--no-server" in options:  # before the command or after it: every command accepts it
        return False
    for arg in args:  # the command name: the first word that is not an option
        if not arg.startswith("-"):
            return arg != "server"
    return True


class _GiveUp(Exception):
    """A signal that ends the process came before the worker was known: stop waiting."""

    def __init__(self, sig: int):
        super().__init__(sig)
        self.sig = sig


class _Forwarder:
    """Signals to the worker's process group, as chg does, except that each one is passed on
    as it comes (a second Ctrl-C too: the worker reacts as an in-process run would). A signal
    this process ignores is left ignored (the worker ignores it too), except SIGTERM, which the
    command itself catches in-process. Ctrl-Z stops the worker, then this process, and both
    continue together. Before the worker is known, a signal that would end an in-process run at
    start-up ends the wait (:class:`_GiveUp`); the worker, if one was about to start, is told
    nothing and runs nothing."""

    def __init__(self):
        self.pgid, self.previous = None, {}
        for sig in FORWARDED_SIGNALS:
            if _signal.getsignal(sig) is _signal.SIG_IGN and sig != _signal.SIGTERM:
                continue
            self.previous[sig] = _signal.signal(sig, self.forward)
        if _signal.getsignal(_signal.SIGTSTP) is not _signal.SIG_IGN:
            self.previous[_signal.SIGTSTP] = _signal.signal(_signal.SIGTSTP, self.suspend)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            _signal.signal(sig, handler)

    def _kill(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):  # already gone: its status is on the way
            pass

    def forward(self, sig, frame):
        if self.pgid is not None:
            self._kill(sig)
        elif sig != _signal.SIGWINCH and self.previous.get(sig) is not _signal.SIG_IGN:
            raise _GiveUp(sig)

    def suspend(self, sig, frame):
        if self.pgid is not None:
            self._kill(_signal.SIGTSTP)
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)  # stops here until SIGCONT
        _signal.signal(_signal.SIGTSTP, self.suspend)
        if self.pgid is not None:
            self._kill(_signal.SIGCONT)


def run_through(sock, args: list[str]) -> int | None:
    """Run ``args`` in a worker of the connected server; its exit code, or None when nothing
    ran (no worker took the call: it runs in this process)."""
    from .caller import read

    caller = read()
    if caller is None:  # more fds than one message carries
        return None
    try:
        cwd = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # a working folder we cannot open: run in-process, where it still works
        return None
    targets = [int(fd) for fd in caller["fds"].split(",") if fd]
    forwarder = _Forwarder()  # from here on, a Ctrl-C or Ctrl-Z is the worker's
    try:
        reply = _Lines(sock, time.monotonic() + PID_DEADLINE)
        try:
            # fds go only to a server that has shown it is alive: fds sent into the queue of a
            # stopped one would stay open there (a `| cat` after this call would never end)
            word, value = reply.next()
            if word == "ready":
                request = encode_request("run", args, caller=caller)
                fds = struct.pack(f"{4 + len(targets)}i", 0, 1, 2, cwd, *targets)
                sent = sock.sendmsg([request[:4096]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
                sock.sendall(request[sent:])
                word, value = reply.next()
        finally:
            os.close(cwd)
        if word is None:  # declined, or no answer in time: nothing runs there
            if value == "timeout":
                pid = _server_pid(sock)
                os.write(2, f"kernelcli: warning: the resident server{pid} did not answer in {PID_DEADLINE:g} s; "
                            "running in this process\n".encode())
            return None
        if word != "pid":
            return None
        forwarder.pgid = int(value)
        try:
            sock.sendall(b"go\n")
        except OSError:  # it is gone already: the server tells how
            pass
        reply.deadline = None
        while True:
            word, value = reply.next()
            if word == "exit":
                return int(value)
            if word == "signal":
                _die_by(int(value))
            if word is None:
                os.write(2, f"kernelcli: error: the call's worker (pid {forwarder.pgid}) ended without an exit "
                            "status: killed by a signal while its server was gone\n".encode())
                return 255
    except _GiveUp as exc:
        forwarder.restore()
        sock.close()
        if exc.sig == _signal.SIGINT:
            sys.exit(130)  # as an in-process run interrupted while loading
        _die_by(exc.sig)
    except (BrokenPipeError, ConnectionResetError):  # the server went away before a worker took the call
        return None
    finally:
        forwarder.restore()


def _server_pid(sock) -> str:
    from .service import server_pid

    pid = server_pid(sock)
    return f" (pid {pid})" if pid else ""


class _Lines:
    """The reply's lines, as they come, until ``deadline`` (time.monotonic(); None: no end)."""

    def __init__(self, sock, deadline: float | None):
        self.sock, self.buffer, self.deadline = sock, b"", deadline

    def next(self) -> tuple[str | None, str | None]:
        """(word, value) of the next line; (None, "timeout") after the deadline, (None, None) at the end."""
        while b"\n" not in self.buffer:
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if left is not None and left <= 0:
                return None, "timeout"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                return None, "timeout"
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None, None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        word, _, value = line.decode().partition(" ")
        return word, value


def _die_by(sig: int) -> None:
    """End this process as the worker ended: by the same signal (no core file of this client
    over the worker's)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if sig not in (_signal.SIGKILL, _signal.SIGSTOP):
        _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)  # a signal that does not end a process by default


def start_in_background(path: str) -> None:
    """A server for the next call (kernelcli.server.service, loaded only on this path)."""
    from .service import start_in_background as start

    start(path)


def in_process() -> None:
    try:
        from kernelcli.cli import entry
    except KeyboardInterrupt:  # Ctrl-C while Python is still loading kernelcli (as python -m kernelcli)
        sys.exit(130)
    entry()


def main() -> None:
    """The console script."""
    args = sys.argv[1:]
    try:
        code = _through_a_server(args) if enabled(args) else None
    except KeyboardInterrupt:  # Ctrl-C before the signals were the worker's: as while loading, in-process
        sys.exit(130)
    if code is not None:
        sys.exit(code)
    in_process()


def _through_a_server(args: list[str]) -> int | None:
    """The exit code of the call run by a server; None when it runs here (and a server is
    started for the next call when none answered)."""
    try:
        path = socket_path()
    except UnusableDir as exc:
        os.write(2, f"kernelcli: warning: {exc}; not using the resident server\n".encode())
        return None
    sock = connect(path, PID_DEADLINE)
    if sock is not None:
        try:
            code = run_through(sock, args)
        finally:
            sock.close()
        if code is not None:
            return code
    start_in_background(path)
    return None


if __name__ == "__main__":
    main()
