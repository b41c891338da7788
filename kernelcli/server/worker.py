"""A server worker taking on its caller's process (fields read by kernelcli.server.caller in the
client): fds at their numbers (:func:`place_fds`), scheduling policy, nice value, CPUs, I/O
priority, OOM adjustment and limits (:func:`take_on`, in an order that keeps the server's
privileges for as long as they are needed), torch's thread count (:func:`fresh_threads`),
signal dispositions and mask last, right before the command; a thread that ends the worker
when its client goes away (:func:`watch_client`). And the server's own clean scheduling.

Where the kernel refuses one (a hard limit above the server's without the privilege to raise
it, a nice value below the server's), :class:`Decline`: the client runs the command itself.
"""

from __future__ import annotations

import os

import select
import signal
import time

from . import caller
from .caller import limits

_IOPRIO_WHO_PROCESS = 1
TERM_DELAY = 0.3  # seconds from a client's going away to SIGTERM for its worker (unless it ends)
KILL_GRACE = 2.3  # … and to SIGKILL


class Decline(Exception):
    """A worker cannot take on this caller's process; ``retire``: because the server itself is
    below the caller (a limit or priority it cannot raise), so a server started by this caller
    would serve it."""

    def __init__(self, reason: str, retire: bool = False):
        super().__init__(reason)
        self.retire = retire


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
    cpus = set(caller.ints(fields["cpus"]))
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
    for res, soft, hard in caller.limits(fields):
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


def set_signals(fields: dict[str, str]) -> None:
    """Dispositions as in a fresh ``kernelcli`` process of this caller: ignored where the caller
    ignores (Python keeps an inherited SIG_IGN), else SIGINT raises KeyboardInterrupt, SIGPIPE and
    SIGXFSZ are ignored (as Python sets them), every other signal has its default action."""
    import signal

    skip = set(caller.ints(fields["ignored"]))
    for sig in signal.valid_signals():
        if sig in caller.UNSETTABLE:
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

    signal.pthread_sigmask(signal.SIG_SETMASK, caller.ints(fields["blocked"]))


def io_priority(pid: int) -> int | None:
    """ioprio_get(IOPRIO_WHO_PROCESS, pid) (0: this thread), None if it cannot be read."""
    syscall = _syscall()
    if syscall is None or pid < 0:
        return None
    value = syscall(caller.IOPRIO_SYSCALLS[os.uname().machine][0], _IOPRIO_WHO_PROCESS, pid)
    return None if value < 0 else value


def _ioprio_set(value: int) -> None:
    import ctypes

    syscall = _syscall()
    if syscall(caller.IOPRIO_SYSCALLS[os.uname().machine][1], _IOPRIO_WHO_PROCESS, 0, value) < 0:
        err = ctypes.get_errno()
        raise (PermissionError if err in (1, 13) else OSError)(err, os.strerror(err))


_libc = []


def _syscall():
    if os.uname().machine not in caller.IOPRIO_SYSCALLS:
        return None
    if not _libc:
        import ctypes

        _libc.append(ctypes.CDLL(None, use_errno=True).syscall)
    return _libc[0]


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


def fresh_threads(threads: int, cpus: int, environ) -> int:
    """The intra-op thread count torch picks in a fresh process with ``cpus`` CPUs in its
    affinity, given ``threads`` with all of the server's: OMP_NUM_THREADS or MKL_NUM_THREADS
    (capped at the cores) regardless of the affinity, else one per CPU of the affinity up to the
    cores (torch 2.x with OpenMP and MKL, measured with taskset)."""
    if environ.get("OMP_NUM_THREADS") or environ.get("MKL_NUM_THREADS"):
        return threads
    return max(1, min(threads, cpus))


def place_fds(fds: list[int], targets: list, keep: int, fields: dict) -> list[int]:
    """Received fds put where the caller had them (``targets``: a number, or None for wherever),
    every other fd of this process closed but ``keep``; the fds in order of ``fds``. The client
    connection (last) goes above the caller's open-files limit, out of the numbers its command uses."""
    import fcntl

    above = max([2, keep, *fds, *(t for t in targets if t is not None)]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in fds]
    keep_moved = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, above)
    close_all_but(set(moved) | {keep_moved})
    os.dup2(keep_moved, keep, inheritable=False)
    os.close(keep_moved)
    placed = []
    for fd, target in zip(moved, targets):
        if target is None:
            placed.append(fd)
        else:
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
            placed.append(target)
    soft = next((s for r, s, _ in limits(fields) if r == _rlimit_nofile()), None)
    if soft is not None and placed[-1] < soft:
        try:
            high = fcntl.fcntl(placed[-1], fcntl.F_DUPFD_CLOEXEC, soft)
            os.close(placed[-1])
            placed[-1] = high
        except OSError:
            pass
    return placed


def _rlimit_nofile() -> int:
    import resource

    return resource.RLIMIT_NOFILE


def close_all_but(keep: set[int]) -> None:
    start = 0
    for fd in sorted(keep):
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 1 << 20)


def watch_client(reply: int) -> None:
    """A thread that ends this worker's process group when its client goes away (killed, or its
    terminal closed): SIGTERM after TERM_DELAY (the command cleans up as on Ctrl-C), SIGKILL after
    KILL_GRACE. It has every signal blocked, so signals reach the command's threads as in-process."""
    import threading

    def watch():
        poll = select.poll()
        poll.register(reply, select.POLLRDHUP)
        while not poll.poll():
            pass
        time.sleep(TERM_DELAY)  # it may just have sent its status and be ending
        killpg(os.getpid(), signal.SIGTERM)
        time.sleep(KILL_GRACE - TERM_DELAY)
        killpg(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="kernelcli-client-watch").start()


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
