"""The resident server's wire and rendezvous, shared by the thin client, the server and
`kernelcli server start|stop|status`: where the socket lives (a private folder, a name holding a
stamp of the install), how a request is encoded, and how a server is started in the background.
Standard library only, and nothing else of kernelcli, so every side can build on it.
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
class InsecureDir(Exception):
    """The socket folder is not a private folder of this user."""


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
    files = [sys.executable]
    for folder, dirs, names in os.walk(here):  # every module of the package, in every sub-package
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [folder] + [os.path.join(folder, n) for n in sorted(names) if n.endswith((".py", ".yaml"))]
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
