"""The caller's process, as a call through the resident server carries it: what the thin client
reads of its own process (standard library, well under a millisecond) and what a server worker
takes on before it runs the command, each attribute read and applied here, in one place.

Taken on per call (a worker is a fork of the server and starts from the server's state):
resource limits (every RLIMIT_*, soft and hard), nice value, scheduling policy, CPU affinity,
I/O priority, OOM score adjustment, open file descriptors (0-2 and every inheritable one),
blocked signals and ignored signal dispositions. Environment, working folder, umask and argv
are the server's part (kernelcli.server).

Not taken on but part of the server's key (:func:`context`): what a running process cannot
change or should not be trusted to (cgroup, namespaces, root folder, user and groups,
capabilities, no_new_privs, seccomp, LSM label). A caller that differs in any of these reaches
another server.

Where a worker cannot take an attribute on (a hard limit above the server's without the
privilege to raise it, a nice value below the server's), it raises :class:`Decline` and the
client runs the command in its own process: correct, only slower.
"""

from __future__ import annotations

import os

MAX_FDS = 240  # inheritable fds passed beyond 0-2 (SCM_RIGHTS carries at most 253 per message)
# Signals the kernel or the C library reserve (SIGKILL, SIGSTOP cannot be caught, blocked or ignored)
_UNSETTABLE = {9, 19}


class Decline(Exception):
    """A worker cannot take on this caller's process; ``retire``: because the server itself is
    below the caller (a limit or priority it cannot raise), so a server started by this caller
    would serve it."""

    def __init__(self, reason: str, retire: bool = False):
        super().__init__(reason)
        self.retire = retire


# --------------------------------------------------------------------------- in the client


def read() -> dict[str, str] | None:
    """This process's attributes as text fields, or None when they cannot all be passed (more
    inheritable fds than one message carries)."""
    import _signal
    import resource

    fds = inheritable_fds()
    if len(fds) > MAX_FDS:
        return None
    limits = ",".join(f"{r}:{s}:{h}" for r in _limit_ids(resource) for s, h in [resource.getrlimit(r)])
    try:
        with open("/proc/self/oom_score_adj", "rb") as fh:
            oom = fh.read().strip().decode()
    except OSError:
        oom = ""
    ignored = [n for n in range(1, _signal.NSIG) if n not in _UNSETTABLE and _getsignal(_signal, n) is _signal.SIG_IGN]
    return {
        "fds": _ints(fds),
        "limits": limits,
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


def _limit_ids(resource) -> list[int]:
    return sorted({getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")})


def _ints(values) -> str:
    return ",".join(map(str, values))


def _parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


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


# --------------------------------------------------------------------------- in a server worker


def take_on(fields: dict[str, str], peer_pid: int) -> None:
    """Give this process (a server worker, single-threaded) the caller's scheduling, CPUs, I/O
    priority, OOM adjustment and limits, in an order that keeps the server's privileges for as
    long as they are needed. Raises :class:`Decline` for what the kernel refuses."""
    import resource

    nice = int(fields["nice"])
    policy, priority = (int(v) for v in fields["sched"].split(":"))
    if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, priority):
        _do(lambda: os.sched_setscheduler(0, policy, os.sched_param(priority)), f"scheduling policy {policy}")
    if os.getpriority(os.PRIO_PROCESS, 0) != nice:
        _do(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice), f"nice {nice}")
    cpus = set(_parse_ints(fields["cpus"]))
    if os.sched_getaffinity(0) != cpus:
        _do(lambda: os.sched_setaffinity(0, cpus), f"CPUs {fields['cpus']}")
        if os.sched_getaffinity(0) != cpus:
            raise Decline(f"CPUs {fields['cpus']} are not all available to the server")
    ioprio = io_priority(peer_pid)
    if ioprio is None:
        raise Decline("the caller's I/O priority cannot be read")
    if io_priority(0) != ioprio:
        _do(lambda: _ioprio_set(ioprio), f"I/O priority {ioprio:#x}")
    if fields["oom"]:
        with open("/proc/self/oom_score_adj", "r+b") as fh:
            if fh.read().strip().decode() != fields["oom"]:
                _do(lambda: (fh.seek(0), fh.write(fields["oom"].encode()), fh.flush()),
                    f"OOM score adjustment {fields['oom']}")
    for item in fields["limits"].split(","):
        res, soft, hard = (int(v) for v in item.split(":"))
        now = resource.getrlimit(res)
        if now != (soft, hard):
            try:
                resource.setrlimit(res, (soft, hard))
            except (ValueError, OSError) as exc:  # Python turns EPERM into ValueError
                raising = _above(hard, now[1])
                raise Decline(f"cannot take on limit {_limit_name(resource, res)} {_text(soft)}:{_text(hard)} "
                              f"(this server's hard limit: {_text(now[1])}): {exc}", retire=raising) from None


def _do(action, what: str) -> None:
    try:
        action()
    except PermissionError as exc:  # EPERM, EACCES: the server is below this caller
        raise Decline(f"cannot take on {what}: {exc.strerror}", retire=True) from None
    except (OSError, ValueError) as exc:
        raise Decline(f"cannot take on {what}: {exc}") from None


def _above(a: int, b: int) -> bool:
    """Whether limit ``a`` is above limit ``b`` (-1, RLIM_INFINITY, is above all)."""
    return a != b and (a == -1 or (b != -1 and a > b))


def _text(limit: int) -> str:
    return "unlimited" if limit == -1 else str(limit)


def _limit_name(resource, res: int) -> str:
    return next((n for n in sorted(dir(resource)) if n.startswith("RLIMIT_") and getattr(resource, n) == res), str(res))


def blocked(fields: dict[str, str]) -> list[int]:
    return _parse_ints(fields["blocked"])


def ignored(fields: dict[str, str]) -> set[int]:
    return set(_parse_ints(fields["ignored"]))


def fd_targets(fields: dict[str, str]) -> list[int]:
    return _parse_ints(fields["fds"])


def cpu_count(fields: dict[str, str]) -> int:
    return len(_parse_ints(fields["cpus"]))


def set_signals(fields: dict[str, str]) -> None:
    """Dispositions as in a fresh ``kernelcli`` process of this caller: ignored where the caller
    ignores (Python keeps an inherited SIG_IGN), else SIGINT raises KeyboardInterrupt, SIGPIPE and
    SIGXFSZ are ignored (as Python sets them), every other signal has its default action."""
    import signal

    skip = ignored(fields)
    for sig in signal.valid_signals():
        if sig in _UNSETTABLE:
            continue
        if sig in skip or sig in (signal.SIGPIPE, signal.SIGXFSZ):
            handler = signal.SIG_IGN
        elif sig == signal.SIGINT:
            handler = signal.default_int_handler
        else:
            handler = signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):  # reserved by the C library (the first real-time signals)
            pass


def block_signals(fields: dict[str, str]) -> None:
    """The caller's blocked signals, last thing before the command runs."""
    import signal

    signal.pthread_sigmask(signal.SIG_SETMASK, blocked(fields))


# I/O priority: no Python API; ioprio_get/ioprio_set by number (architectures listed; elsewhere
# the client does not use a server: client.enabled)
IOPRIO_SYSCALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "riscv64": (31, 30), "loongarch64": (31, 30),
                   "i686": (290, 289), "i386": (290, 289), "ppc64le": (274, 273), "ppc64": (274, 273),
                   "s390x": (283, 282), "armv7l": (315, 314), "armv8l": (315, 314)}
_IOPRIO_WHO_PROCESS = 1


def io_priority(pid: int) -> int | None:
    """ioprio_get(IOPRIO_WHO_PROCESS, pid) (0: this thread), None if it cannot be read."""
    syscall = _syscall()
    if syscall is None or pid < 0:
        return None
    value = syscall(IOPRIO_SYSCALLS[os.uname().machine][0], _IOPRIO_WHO_PROCESS, pid)
    return None if value < 0 else value


def _ioprio_set(value: int) -> None:
    import ctypes

    syscall = _syscall()
    if syscall(IOPRIO_SYSCALLS[os.uname().machine][1], _IOPRIO_WHO_PROCESS, 0, value) < 0:
        err = ctypes.get_errno()
        raise (PermissionError if err in (1, 13) else OSError)(err, os.strerror(err))


_libc = []


def _syscall():
    if os.uname().machine not in IOPRIO_SYSCALLS:
        return None
    if not _libc:
        import ctypes

        _libc.append(ctypes.CDLL(None, use_errno=True).syscall)
    return _libc[0]


# --------------------------------------------------------------------------- a clean server


def server_limits() -> dict[int, tuple[int, int]]:
    """The soft limits a server starts with, whoever starts it: each at its hard limit (the most
    any caller may ask of a worker), except core dumps (none of the server's) and the stack
    (8 MiB, the usual default: it sizes thread stacks and the memory layout at exec).
    Hard limits stay as they are (raising one needs a privilege)."""
    import resource

    out = {}
    for res in _limit_ids(resource):
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


def clean_scheduling() -> None:
    """The server's own scheduling as a fresh login's: CFS, nice 0 (or as low as RLIMIT_NICE
    allows), every CPU this cgroup allows, no I/O class (follows nice), OOM adjustment 0 where
    permitted. Before torch is imported: its thread count follows the CPUs."""
    import resource

    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    floor = max(0, 20 - resource.getrlimit(resource.RLIMIT_NICE)[0])
    for target in (0, floor):
        if target < nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, target)
                break
            except OSError:
                pass
    try:
        os.sched_setaffinity(0, range(max(os.cpu_count() or 1, 1024)))
    except OSError:
        pass
    try:
        _ioprio_set(0)
    except (OSError, TypeError):  # TypeError: an architecture without the table
        pass
    try:
        with open("/proc/self/oom_score_adj", "wb") as fh:
            fh.write(b"0")
    except OSError:
        pass
