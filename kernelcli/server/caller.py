"""What a call through the resident server carries of its caller's process, read by the thin
client in well under a millisecond (standard library only): resource limits (every RLIMIT_*,
soft and hard), nice value, scheduling policy, CPU affinity, OOM score adjustment, inheritable
fds, blocked signals and ignored signal dispositions, as text fields of the request; and the
caller's context (:func:`context`), which keys the server. A worker takes them on
(kernelcli.server.worker), reads the I/O priority from the peer itself, and gets environment, working
folder, umask and argv from the request (kernelcli.server.protocol).
"""

from __future__ import annotations

import os

MAX_FDS = 240  # inheritable fds passed beyond 0-2 (SCM_RIGHTS carries at most 253 per message)
UNSETTABLE = {9, 19}  # SIGKILL, SIGSTOP: never caught, blocked or ignored
# ioprio_get and ioprio_set (no Python API): the architectures whose numbers kernelcli knows; on
# others no server is used (client.enabled)
IOPRIO_SYSCALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "riscv64": (31, 30), "loongarch64": (31, 30),
                   "i686": (290, 289), "i386": (290, 289), "ppc64le": (274, 273), "ppc64": (274, 273),
                   "s390x": (283, 282), "armv7l": (315, 314), "armv8l": (315, 314)}


def read() -> dict[str, str] | None:
    """This process's attributes as text fields, or None when they cannot all be passed (more
    inheritable fds than one message carries)."""
    import _signal
    import resource

    fds = inheritable_fds()
    if len(fds) > MAX_FDS:
        return None
    try:
        with open("/proc/self/oom_score_adj", "rb") as fh:
            oom = fh.read().strip().decode()
    except OSError:
        oom = ""
    ignored = [n for n in range(1, _signal.NSIG) if n not in UNSETTABLE and _getsignal(_signal, n) is _signal.SIG_IGN]
    return {
        "fds": _ints(fds),
        "limits": ",".join(f"{r}:{s}:{h}" for r in limit_ids(resource) for s, h in [resource.getrlimit(r)]),
        "nice": str(os.getpriority(os.PRIO_PROCESS, 0)),
        "sched": f"{os.sched_getscheduler(0)}:{os.sched_getparam(0).sched_priority}",
        "cpus": _ints(sorted(os.sched_getaffinity(0))),
        "oom": oom,
        "blocked": _ints(sorted(int(s) for s in _signal.pthread_sigmask(_signal.SIG_BLOCK, []))),
        "ignored": _ints(ignored),
    }


def inheritable_fds() -> list[int]:
    """The descriptors above 2 that this process was given (inheritable ones: Python opens its
    own non-inheritable), in order."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(n) for n in range(3, 256)]
    fds = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    fds.append(fd)
            except OSError:  # the listing's own descriptor, closed by now
                pass
    return sorted(fds)


def _getsignal(_signal, n):
    try:
        return _signal.getsignal(n)
    except (ValueError, OSError):
        return None


def limit_ids(resource) -> list[int]:
    return sorted({getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")})


def _ints(values) -> str:
    return ",".join(map(str, values))


def ints(text: str) -> list[int]:
    """A field of numbers (fds, cpus, blocked, ignored) as a list."""
    return [int(v) for v in text.split(",") if v]


def limits(fields: dict[str, str]) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) of every limit in the ``limits`` field."""
    return [tuple(int(v) for v in item.split(":")) for item in fields["limits"].split(",")]


def context(pid: str | int = "self") -> bytes:
    """What keys a server (besides the install): the process's cgroup, namespaces, root folder,
    user and groups, capabilities, no_new_privs, seccomp mode and LSM label. A worker runs in its
    server's; so only a caller with the same reaches that server (the worker checks the peer's)."""
    base = f"/proc/{pid}"
    parts = []
    for name in ("cgroup", "attr/current"):
        try:
            with open(f"{base}/{name}", "rb") as fh:
                parts.append(fh.read())
        except OSError:
            parts.append(b"-")
    try:
        with open(f"{base}/status", "rb") as fh:
            parts += [line for line in fh.read().splitlines()
                      if line.startswith((b"Uid:", b"Gid:", b"Groups:", b"Cap", b"NoNewPrivs:", b"Seccomp:"))]
    except OSError:
        parts.append(repr((os.getresuid(), os.getresgid(), sorted(os.getgroups()))).encode())
    try:
        parts += [os.readlink(f"{base}/ns/{n}").encode() for n in sorted(os.listdir(f"{base}/ns"))
                  if not n.endswith("_for_children")]
        root = os.stat(f"{base}/root")
    except OSError:
        root = os.stat("/") if pid == "self" else None
    parts.append(b"%d:%d" % (root.st_dev, root.st_ino) if root else b"-")
    return b"\n".join(parts)
