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

PROTOCOL = 1
IDLE_SECONDS = 600  # a server with no request for this long exits ($KERNELCLI_SERVER_IDLE)
# Environment the server reads once at start (threads, loader, Python, CUDA, locale, config folders).
STAMP_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "LD_", "PYTHON", "CUDA_", "TORCH_", "LC_")
# Not $KERNELCLI_KERNELS nor $KERNELCLI_DEVICE: they are read per request, in the worker.
STAMP_ENV_NAMES = ("LANG", "LANGUAGE", "HOME", "XDG_CONFIG_HOME")
# Installed packages whose files the server keeps in memory: a change means a new server.
STAMP_PACKAGES = {"torch": ("version.py", "lib/libtorch_cpu.so"), "numpy": ("version.py",), "PIL": ("_version.py",),
                  "click": (), "rich": (), "yaml": ()}
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")


class InsecureDir(Exception):
    """The socket folder is not a private folder of this user."""


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


def socket_dir() -> str:
    """``$KERNELCLI_SERVER_DIR``, else ``$XDG_RUNTIME_DIR/kernelcli``, else ``/tmp/kernelcli-$UID``;
    created 0700 and checked with lstat (a real folder, ours, no group or other bits)."""
    path = os.environ.get("KERNELCLI_SERVER_DIR")
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = (os.path.join(runtime, "kernelcli") if runtime and _private(runtime)
                else f"/tmp/kernelcli-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    if not _private(path):
        raise InsecureDir(f"{path}: not a private folder of this user (owner, mode 0700, no symlink)")
    return path


def _private(path: str) -> bool:
    import stat

    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def stamp() -> str:
    """A hash of what a running server cannot change: this install (kernelcli's files, the
    packages it keeps loaded, the interpreter, the protocol) and the environment read at start."""
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    files = [sys.executable, here] + [os.path.join(here, n) for n in sorted(os.listdir(here))
                                      if n.endswith((".py", ".yaml"))]
    for name, extra in STAMP_PACKAGES.items():
        top = next((os.path.join(p, name) for p in sys.path
                    if p and os.path.isfile(os.path.join(p, name, "__init__.py"))), None)
        if top:
            files += [top, os.path.join(top, "__init__.py")] + [os.path.join(top, e) for e in extra]
    stats = []
    for f in files:
        try:
            st = os.stat(f)
            stats.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stats.append((f, None))
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(STAMP_ENV_PREFIXES) or k in STAMP_ENV_NAMES)
    data = repr((PROTOCOL, sys.version, stats, env)).encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"  # zlib: hashlib would load OpenSSL (~10 ms)


def socket_path() -> str:
    return os.path.join(socket_dir(), f"server-{stamp()}.sock")


def connect(path: str):
    """A connection to the server at ``path``, or None when none answers."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
        sock.close()
        return None
    except OSError:  # e.g. a path longer than AF_UNIX allows: no server can listen there either
        sock.close()
        return None
    return sock


def encode_request(verb: str, args: list[str] = (), env: dict | None = None) -> bytes:
    mask = os.umask(0)
    os.umask(mask)
    fields = [verb.encode(), b"%d" % mask, b"%d" % len(args), *(os.fsencode(a) for a in args)]
    fields += [k + b"=" + v for k, v in (env if env is not None else os.environb).items()]
    payload = b"\0".join(fields)
    return struct.pack(">I", len(payload)) + payload


def ask(path: str, verb: str) -> dict | None:
    """``status`` or ``stop`` to the server at ``path``: its ``key=value`` reply, None when none answers."""
    sock = connect(path)
    if sock is None:
        return None
    try:
        sock.settimeout(10)
        sock.sendall(encode_request(verb, env={}))
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return None
    finally:
        sock.close()
    if not reply:
        return None
    return dict(line.split("=", 1) for line in reply.decode().splitlines() if "=" in line)


def start_in_background(path: str, idle: float | None = None) -> int | None:
    """Start a server for ``path`` unless one answers or another process is starting one (a file
    lock held until the new server listens: a cold 3-stage pipeline starts one server).
    Returns the new server's pid, or None."""
    import fcntl

    lock = os.open(path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        sock = connect(path)  # one may have started between our first try and the lock
        if sock is not None:
            sock.close()
            return None
        if idle is None:
            idle = float(os.environ.get("KERNELCLI_SERVER_IDLE") or IDLE_SECONDS)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        log = os.path.join(os.path.dirname(path), "server.log")
        argv = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                "import kernelcli.server as s; s.main(sys.argv[2:])",
                root, "--socket", path, "--idle", str(idle), "--lock-fd", str(lock)]
        os.set_inheritable(lock, True)
        return os.posix_spawn(sys.executable, argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ])
    finally:
        os.close(lock)  # the server keeps its own copy until it listens


class _Forwarder:
    """Signals to the worker's process group, as chg does: Ctrl-C, TERM, HUP, QUIT, WINCH, USR1/2
    are passed on; a second Ctrl-C kills the worker; Ctrl-Z stops the worker, then this process,
    and both continue together."""

    def __init__(self, pgid: int):
        import signal

        self.signal, self.pgid, self.interrupts = signal, pgid, 0
        for name in FORWARDED_SIGNALS:
            signal.signal(getattr(signal, name), self.forward)
        signal.signal(signal.SIGTSTP, self.suspend)

    def _kill(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:  # already gone: its status is on the way
            pass

    def forward(self, sig, frame):
        if sig == self.signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                sig = self.signal.SIGKILL
        self._kill(sig)

    def suspend(self, sig, frame):
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
    try:
        request = encode_request("run", args)
        fds = struct.pack("4i", 0, 1, 2, cwd)
        sent = sock.sendmsg([request[:4096]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.sendall(request[sent:4096])
        sock.sendall(request[4096:])
    except (BrokenPipeError, ConnectionResetError):
        return None
    finally:
        os.close(cwd)
    forwarder = None
    try:
        for line in _lines(sock):
            word, _, value = line.decode().partition(" ")
            if word == "pid":
                forwarder = _Forwarder(int(value))
            elif word == "exit":
                return 130 if forwarder and forwarder.interrupts > 1 else int(value)
            elif word == "signal":
                if forwarder and forwarder.interrupts > 1:
                    return 130
                _die_by(int(value))
    except ConnectionResetError:
        pass
    if forwarder is None:
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
