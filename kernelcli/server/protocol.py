"""The resident server's wire and rendezvous, shared by the thin client, the server and
`kernelcli server start|stop|status`: where the socket lives (a private folder, a name holding a
stamp of the install and of the caller's context) and how a request is encoded and decoded:
what every call needs, kept small (a call compiles it where no bytecode cache is written).
Standard library only, and nothing of kernelcli but kernelcli.server.caller, so every side can build on
it; starting a server and asking one for its status are kernelcli.server.service's.

Request: ``>I`` length, then NUL-separated fields: verb (``run``, ``status``, ``stop``), umask,
argv[0], argc, argv…, the number of caller fields, ``name=value`` caller fields
(kernelcli.server.caller.read), then ``NAME=VALUE`` environment entries. With the first bytes of a
``run`` ride fds 0, 1, 2, the working folder and the caller's other inheritable fds (in the
order of its ``fds`` field).
"""

from __future__ import annotations

import _socket  # the C module: `socket` would import selectors and enum (~15 ms)
import os
import struct
import sys

PROTOCOL = 2
IDLE_SECONDS = 600  # a server with no request for this long exits ($KERNELCLI_SERVER_IDLE)
# Environment a process reads once at start (threads, loader, malloc, Python, CUDA, locale, config
# folders): the stamp covers it and it is all of the server's environment. A worker gets its caller's.
STAMP_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "LD_", "MALLOC_", "PYTHON", "CUDA_", "TORCH_",
                      "PYTORCH_", "LC_")
# Not $KERNELCLI_KERNELS nor $KERNELCLI_DEVICE: they are read per request, in the worker.
STAMP_ENV_NAMES = ("LANG", "LANGUAGE", "HOME", "XDG_CONFIG_HOME", "GLIBC_TUNABLES")
# Installed packages whose files the server keeps in memory: a change means a new server (any
# install, upgrade or removal also changes the site-packages listing, which the stamp covers too).
STAMP_PACKAGES = {"torch": ("version.py", "lib/libtorch_cpu.so"), "numpy": ("version.py",), "PIL": ("_version.py",),
                  "click": (), "rich": (), "yaml": ()}
SUN_PATH_MAX = 107  # bytes of an AF_UNIX path (108 with its NUL)
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kernelcli/, above kernelcli/server/


class UnusableDir(Exception):
    """The socket folder cannot be used: the call runs in its own process."""


class InsecureDir(UnusableDir):
    """The socket folder is not a private folder of this user."""


def socket_dir() -> str:
    """``$KERNELCLI_SERVER_DIR`` (as set, else UnusableDir), else ``$XDG_RUNTIME_DIR/kernelcli``
    where that is usable, else ``/tmp/kernelcli-$UID``; created 0700 and checked with lstat (a
    real folder, ours, no group or other bits)."""
    path = os.environ.get("KERNELCLI_SERVER_DIR")
    if path:
        return _private_folder(path)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private(runtime):  # a stale one (tmux after logout) is not: /tmp then
        try:
            return _private_folder(os.path.join(runtime, "kernelcli"))
        except UnusableDir:
            pass
    return _private_folder(f"/tmp/kernelcli-{os.geteuid()}")


def _private_folder(path: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnusableDir(f"{path}: cannot create the server folder: {exc.strerror}") from None
    if not _private(path):
        raise InsecureDir(f"{path}: not a private folder of this user (owner, mode 0700, no symlink)")
    return path


def _private(path: str) -> bool:
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def stamp() -> str:
    """A hash of what a running server cannot change: this install (every file of the kernelcli
    package, kernels.yaml, the packages it keeps loaded, the site-packages listing, the
    interpreter, the protocol), the environment read at start, and the caller's context
    (kernelcli.server.caller.context)."""
    import zlib

    from .caller import context

    files = [os.path.realpath(sys.executable)] + _package_files(PACKAGE)  # `python` and `python3` alike
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
    installed = []
    for p in dict.fromkeys(sys.path):
        if p.endswith(("site-packages", "dist-packages")):
            try:
                installed.append(sorted(n for n in os.listdir(p) if n.endswith((".dist-info", ".egg-info", ".pth"))))
            except OSError:
                installed.append(None)
    env = sorted(server_environment().items())
    data = repr((PROTOCOL, sys.version, sys.prefix, stats, installed, env)).encode("utf-8", "surrogateescape") + context()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"  # zlib: hashlib would load OpenSSL (~10 ms)


def _package_files(folder: str) -> list[str]:
    """Every file under the package folder (its modules at any depth, kernels.yaml), not caches."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir(follow_symlinks=False):
            out += _package_files(entry.path)
        else:
            out.append(entry.path)
    return out


def server_environment() -> dict[str, str]:
    """The part of the environment a server is started with, and keyed by."""
    return {k: v for k, v in os.environ.items() if k.startswith(STAMP_ENV_PREFIXES) or k in STAMP_ENV_NAMES}


def socket_path() -> str:
    """This call's server socket; UnusableDir when there can be none (the folder cannot be
    used, or the path is too long for AF_UNIX even through /proc/self/fd)."""
    path = os.path.join(socket_dir(), f"server-{stamp()}.sock")
    if len(os.fsencode(path)) > SUN_PATH_MAX and not os.path.isdir("/proc/self/fd"):
        raise UnusableDir(f"{os.path.dirname(path)}: too long a path for a socket")
    return path


def _at(path: str, action):
    """``action(address)`` for a socket at ``path``: the path itself, or, when it is too long
    for AF_UNIX, the same name through /proc/self/fd/N of its folder."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return action(path)
    folder, name = os.path.split(path)
    fd = os.open(folder, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return action(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def bind(sock, path: str) -> None:
    _at(path, sock.bind)


def connect(path: str, timeout: float | None = None):
    """A connection to the server at ``path``, or None when none listens there."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _at(path, sock.connect)
    except OSError:  # none listens (or the backlog is full for longer than the timeout)
        sock.close()
        return None
    return sock


def encode_request(verb: str, args: list[str] = (), env: dict | None = None, caller: dict | None = None) -> bytes:
    mask = os.umask(0)
    os.umask(mask)
    caller = caller or {}
    fields = [verb.encode(), b"%d" % mask, os.fsencode(sys.argv[0] if sys.argv else ""), b"%d" % len(args),
              *(os.fsencode(a) for a in args), b"%d" % len(caller), *(f"{k}={v}".encode() for k, v in caller.items())]
    fields += [k + b"=" + v for k, v in (os.environb if env is None else env).items()]
    payload = b"\0".join(fields)
    return struct.pack(">I", len(payload)) + payload


class Request:
    """A decoded request (:func:`parse_request`)."""

    def __init__(self, verb, umask, argv0, args, caller, env):
        self.verb, self.umask, self.argv0, self.args, self.caller, self.env = verb, umask, argv0, args, caller, env


def parse_request(raw: bytes) -> Request:
    """A request as sent (length prefix included); ValueError if it is malformed."""
    fields = raw[4:].split(b"\0")
    verb, mask, argv0, argc = fields[0].decode(), int(fields[1]), os.fsdecode(fields[2]), int(fields[3])
    args = [os.fsdecode(a) for a in fields[4: 4 + argc]]
    if len(args) != argc:
        raise ValueError("truncated argv")
    at = 4 + argc
    count = int(fields[at])
    caller = dict(f.decode().split("=", 1) for f in fields[at + 1: at + 1 + count])
    env = dict(os.fsdecode(f).split("=", 1) for f in fields[at + 1 + count:] if b"=" in f)
    return Request(verb, mask, argv0, args, caller, env)
