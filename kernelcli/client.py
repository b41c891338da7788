"""The ``kernelcli`` command: a thin client for the resident server (Mercurial chg's design).

Standard library only, so a call costs a bare interpreter start (~20 ms), not ``import torch``
(~1.8 s). It connects to a Unix socket, passes its fds 0/1/2 and its working folder with
SCM_RIGHTS plus argv, environment and umask, forwards signals to the worker the server forks
for it, and exits with the worker's status. When no server answers it runs the command in this
process exactly as ``python -m kernelcli`` does, and starts a server in the background for the
next call. ``KERNELCLI_SERVER=off`` or ``kernelcli --no-server …`` never use one.

Protocol (version ``PROTOCOL``; the socket name carries it, so client and server always agree):
  request  ``>I`` length, then NUL-separated fields: verb (``run``, ``status``, ``stop``), umask,
           argc, argv…, NAME=VALUE environment entries; fds 0, 1, 2 and the cwd ride with the
           first bytes (``run`` only)
  replies  lines: ``pid N`` (the worker; its process group is N), then ``exit N`` or
           ``signal N``; ``status``: one ``key=value`` line per field. Closed before ``pid``:
           nothing ran (the client runs the command itself); closed after: exit 255.
"""

from __future__ import annotations

import _socket  # the C module: `socket` would import selectors and enum (~15 ms)
import os
import struct
import sys

from .protocol import (  # noqa: F401  (the server and tests reach them through here too)
    PROTOCOL,
    IDLE_SECONDS,
    STAMP_ENV_PREFIXES,
    STAMP_ENV_NAMES,
    STAMP_PACKAGES,
    InsecureDir,
    socket_dir,
    _private,
    stamp,
    socket_path,
    connect,
    encode_request,
    ask,
    start_in_background,
)

FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")


def enabled(args: list[str]) -> bool:
    """Whether this call may go through a server: not switched off, a Linux machine, stdio open,
    and not ``kernelcli server …`` (that manages the server, in this process)."""
    if os.environ.get("KERNELCLI_SERVER", "").strip().lower() in ("off", "0", "no", "false"):
        return False
    if not sys.platform.startswith("linux"):  # SO_PEERCRED, prctl and the fork facts are Linux's
        return False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # a closed standard stream cannot be passed
            return False
    for arg in args:  # global options come before the command name
        if arg == "--no-server":
            return False
        if not arg.startswith("-"):
            return arg != "server"
    return True


class _Forwarder:
    """Signals to the worker's process group, as chg does: Ctrl-C, TERM, HUP, QUIT, WINCH, USR1/2
    are passed on; a second Ctrl-C kills the worker; Ctrl-Z stops the worker, then this process,
    and both continue together. Installed before the request is sent: a signal that comes before
    the worker is known is held and passed on once it is (or, if nothing ran, is this process's)."""

    def __init__(self):
        import signal

        self.signal, self.pgid, self.interrupts, self.held = signal, None, 0, []
        self.previous = {}
        for sig in [getattr(signal, name) for name in FORWARDED_SIGNALS] + [signal.SIGTSTP]:
            self.previous[sig] = signal.signal(sig, self.suspend if sig == signal.SIGTSTP else self.forward)

    def attach(self, pgid: int) -> None:
        """The worker is known: pass on what came before."""
        self.pgid = pgid
        held, self.held = self.held, []
        for sig in held:
            (self.suspend if sig == self.signal.SIGTSTP else self.forward)(sig, None)

    def release(self) -> None:
        """Nothing ran (the command runs in this process): the previous handlers come back and
        the signals held meanwhile are delivered to this process."""
        for sig, handler in self.previous.items():
            self.signal.signal(sig, handler)
        for sig in self.held:
            os.kill(os.getpid(), sig)

    def _kill(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:  # already gone: its status is on the way
            pass

    def forward(self, sig, frame):
        if self.pgid is None:
            self.held.append(sig)
            return
        if sig == self.signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                sig = self.signal.SIGKILL
        self._kill(sig)

    def suspend(self, sig, frame):
        if self.pgid is None:
            self.held.append(sig)
            return
        self._kill(self.signal.SIGTSTP)
        self.signal.signal(self.signal.SIGTSTP, self.signal.SIG_DFL)
        os.kill(os.getpid(), self.signal.SIGTSTP)  # stops here until SIGCONT
        self.signal.signal(self.signal.SIGTSTP, self.suspend)
        self._kill(self.signal.SIGCONT)


def _lines(sock):
    """The server's reply lines, as they come."""
    buffer = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines


def run_through(sock, args: list[str]) -> int | None:
    """Run ``args`` in a worker of the connected server; its exit code, or None when the
    server closed before starting one (nothing ran)."""
    try:
        cwd = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # a working folder we cannot open: run in-process, where it still works
        return None
    forwarder = _Forwarder()  # from here on, a Ctrl-C or Ctrl-Z is the worker's
    try:
        request = encode_request("run", args)
        fds = struct.pack("4i", 0, 1, 2, cwd)
        sent = sock.sendmsg([request[:4096]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.sendall(request[sent:4096])
        sock.sendall(request[4096:])
    except (BrokenPipeError, ConnectionResetError):
        forwarder.release()
        return None
    finally:
        os.close(cwd)
    try:
        for line in _lines(sock):
            word, _, value = line.decode().partition(" ")
            if word == "pid":
                forwarder.attach(int(value))
            elif word == "exit":
                return 130 if forwarder.interrupts > 1 else int(value)
            elif word == "signal":
                if forwarder.interrupts > 1:
                    return 130
                _die_by(int(value))
    except ConnectionResetError:
        pass
    if forwarder.pgid is None:
        forwarder.release()
        return None
    os.write(2, b"kernelcli: error: the kernelcli server stopped during the request\n")
    return 255


def _die_by(sig: int) -> None:
    """End this process as the worker ended: by the same signal."""
    import signal

    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)  # a signal that does not end a process by default


def in_process() -> None:
    from kernelcli.cli import entry

    entry()


def main() -> None:
    """The console script."""
    args = sys.argv[1:]
    if enabled(args):
        try:
            path = socket_path()
        except InsecureDir as exc:
            os.write(2, f"kernelcli: warning: {exc}; not using the resident server\n".encode())
        else:
            sock = connect(path)
            if sock is not None:
                try:
                    code = run_through(sock, args)
                except KeyboardInterrupt:  # before the worker was known: the server ends it
                    sys.exit(130)
                finally:
                    sock.close()
                if code is not None:
                    sys.exit(code)
            start_in_background(path)
    in_process()


if __name__ == "__main__":
    main()
