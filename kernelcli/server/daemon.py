"""The resident kernelcli server: torch, numpy, Pillow and the library imported once; a forked
worker per request (Mercurial chg's design; the client is client.py, the wire protocol.py).

A call through it is the caller's call. The server starts clean (service.start_in_background:
minimal environment, no inherited fds or signal state, its own session, soft limits at the hard
ones; then worker.clean_scheduling). A worker takes on everything of its own caller's process
(kernelcli.server.worker: fds, limits, nice, scheduling, CPUs, I/O priority, OOM adjustment, signal
dispositions and mask; here: working folder, environment, umask, argv) and nothing of any other
caller's; where it cannot, it declines before telling its pid and the client runs the command
itself. A worker answers its client directly and watches it: a client that goes away takes its
worker with it, whatever happens to the server, and a server that dies (or is killed) ends no
running call.

The select loop never blocks on a connection: requests are read without blocking, each with a
deadline, so a slow or silent connection delays no one else.

Fork safety (measured, shared FACTS §7): torch's libgomp hangs every forked child once the
parent has run a multi-threaded op, so the server sets one torch thread right after import,
runs its warm-up op in that one thread, never initialises CUDA, and starts no thread pool;
each worker sets the thread count a fresh process of its caller would have (worker.fresh_threads).
A worker may initialise CUDA: it is a fork of a process that never did, which is as good as a
fresh process.

The server exits after ``--idle`` seconds without requests, when its socket is removed or
replaced, or when the install it loaded changes (checked every second); running requests
finish first.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import signal
import socket
import struct
import sys
import time

from . import caller, worker
from . import protocol as proto

MAX_REQUEST = 16 << 20  # bytes of one request (argv and environment are bounded by ARG_MAX anyway)
REQUEST_DEADLINE = 5.0  # seconds for a connection to send its whole request, from its accept
MAX_PENDING = 256  # connections still sending their request; beyond, the oldest is dropped
MAX_FDS = 253  # SCM_RIGHTS per message
SPARES = 3  # workers forked ahead (a 3-stage pipeline asks for three at once)
SPARE_AFTER = 0.02  # seconds without events before forking a missing spare
_kept = []  # the server's own standard streams, kept alive in a worker (collecting them would close fds 0-2)


def warm_up() -> int:
    """Import what a command needs and run one small convolution single-threaded; returns the
    torch thread count a fresh process would use (restored in each worker)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # before any op: children may fork safely and use more threads
    import ctypes  # noqa: F401  (prctl in workers)

    import numpy  # noqa: F401
    import PIL.Image
    import rich.console  # noqa: F401
    import rich.progress  # noqa: F401
    import rich.table  # noqa: F401
    import yaml  # noqa: F401

    PIL.Image.init()
    import simplejpeg  # noqa: F401  (images' JPEG codec)

    # every module a call imports, so that no worker compiles one
    from .. import cli  # noqa: F401
    from ..compute import bands, budget, convolve, engine, fast, filters, mapping, options, shapes  # noqa: F401
    from ..io import images, storage  # noqa: F401
    from ..kernels import analysis, generate, library as kernels  # noqa: F401
    from ..run import batch, runner  # noqa: F401
    from ..teach import animate, explain, grid, toolkit  # noqa: F401

    kernels.load_file(kernels.shipped_path())  # parsed once here; workers reuse it while it is unchanged
    torch.nn.functional.conv2d(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 3, 3))
    return threads


class Pending:
    """A connection still sending its request."""

    def __init__(self, conn, peer_pid: int):
        self.conn, self.fd, self.peer_pid = conn, conn.fileno(), peer_pid
        self.buffer, self.fds = bytearray(), []
        self.deadline = time.monotonic() + REQUEST_DEADLINE

    def drop(self, why: str | None = None) -> None:
        if why:
            log(f"dropped a request from pid {self.peer_pid}: {why}")
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.conn.close()


class Worker:
    def __init__(self, pid, conn, channel):
        self.pid, self.conn, self.channel = pid, conn, channel


class Server:
    def __init__(self, path: str, idle: float):
        self.path, self.idle = path, idle
        self.workers: dict[int, Worker] = {}
        self.pending: dict[int, Pending] = {}
        self.listener = None
        self.started = self.last_active = time.time()
        self.served = 0
        self.stopping = False
        self.accept_after = 0.0
        self.spares: list[tuple[int, socket.socket]] = []
        self.context = caller.context()  # every worker's, checked against its peer's
        self.environ = dict(os.environ)  # the stamp's part only (protocol.server_environment)

    # ------------------------------------------------------------------ start and stop

    def bind(self) -> None:
        """Listen at a temporary name, then rename onto the real one (atomic; an older server's
        socket is replaced and that server notices and exits)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            proto.bind(self.listener, tmp)
        finally:
            os.umask(old)
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.socket_stat = os.stat(tmp)
        os.rename(tmp, self.path)

    def owns_socket(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_ino, st.st_dev) == (self.socket_stat.st_ino, self.socket_stat.st_dev)

    def close_listener(self, why: str) -> None:
        if self.listener is None:
            return
        log(f"stop accepting: {why}")
        if self.owns_socket():
            os.unlink(self.path)
        self.listener.close()
        self.listener = None
        for _, channel in self.spares:  # its channel closes: it exits
            channel.close()
        self.spares.clear()
        for pending in list(self.pending.values()):  # their clients run the command themselves
            pending.drop()
        self.pending.clear()

    def serve(self, stamp: str, threads: int) -> None:
        self.threads = threads
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        last_check = time.monotonic()
        while self.listener is not None or self.workers:
            if self.stopping:
                self.close_listener("asked to stop")
            now = time.monotonic()
            watched = {wake_r: ("wake", None)}
            if self.listener is not None and now >= self.accept_after:
                watched[self.listener.fileno()] = ("accept", self.listener)
            for fd, pending in self.pending.items():
                watched[fd] = ("request", pending)
            for w in self.workers.values():
                if w.channel is not None:
                    watched[w.channel.fileno()] = ("worker", w)
            deadlines = [p.deadline for p in self.pending.values()]
            if self.listener is not None and len(self.spares) < SPARES:
                deadlines.append(now + SPARE_AFTER)  # when nothing happens meanwhile
            if self.listener is not None and self.accept_after > now:
                deadlines.append(self.accept_after)
            timeout = min([1.0, *(max(0.0, t - now) for t in deadlines)])
            poll = select.poll()
            for fd in watched:
                poll.register(fd, select.POLLIN)
            ready = [watched[fd] for fd, _ in poll.poll(timeout * 1000)]
            if ("wake", None) in ready:
                while _read_nonblocking(wake_r):
                    pass
            self.reap()
            for kind, item in ready:  # each still current (an earlier one may have ended it)
                if kind == "request" and self.pending.get(item.fd) is item:
                    self.read_request(item)
                elif kind == "worker" and item.channel is not None:
                    self.worker_message(item)
                elif kind == "accept" and self.listener is item:
                    self.accept()
            now = time.monotonic()
            for pending in [p for p in self.pending.values() if now >= p.deadline]:
                del self.pending[pending.fd]
                pending.drop(f"no whole request within {REQUEST_DEADLINE:g} s")
            if not ready and self.listener is not None and len(self.spares) < SPARES:
                spare = self.fork_spare()
                if spare:
                    self.spares.append(spare)
            if now - last_check >= 1.0 and self.listener is not None:
                last_check = now
                if not self.owns_socket():
                    self.close_listener("the socket was removed or replaced")
                elif proto.stamp() != stamp:
                    self.close_listener("the install or its environment changed")
                elif not self.workers and not self.pending and time.time() - self.last_active > self.idle:
                    self.close_listener(f"idle for {self.idle:g} s")
        log("exit")

    def _on_stop(self, signum, frame):
        self.stopping = True

    # ------------------------------------------------------------------ requests

    def accept(self) -> None:
        """Every connection waiting: each gets a buffer and a deadline (:meth:`read_request`)."""
        while self.listener is not None:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of fds: let the pending ones finish or expire first
                log(f"cannot accept a connection: {exc}")
                self.accept_after = time.monotonic() + 0.1
                return
            self.last_active = time.time()
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer_pid, uid, _ = struct.unpack("3i", creds)
            if uid != os.geteuid():
                log(f"refused a connection from uid {uid} (pid {peer_pid})")
                conn.close()
                continue
            conn.setblocking(False)
            _send(conn, b"ready\n")  # alive: the client may send its request and fds now
            if len(self.pending) >= MAX_PENDING:
                oldest = min(self.pending.values(), key=lambda p: p.deadline)
                del self.pending[oldest.fd]
                oldest.drop(f"more than {MAX_PENDING} connections sending requests")
            self.pending[conn.fileno()] = Pending(conn, peer_pid)

    def read_request(self, pending: Pending) -> None:
        """What has come of a request; once it is whole, handled."""
        try:
            data, fds, flags, _ = socket.recv_fds(pending.conn, 65536, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError as exc:
            data, fds, flags = None, [], 0
            why = str(exc)
        else:
            why = "closed before a whole request"
        pending.fds += fds
        buffer = pending.buffer
        if data:
            buffer += data
        size = struct.unpack(">I", buffer[:4])[0] if len(buffer) >= 4 else 0
        if not data or flags & socket.MSG_CTRUNC or size > MAX_REQUEST or len(pending.fds) > MAX_FDS:
            del self.pending[pending.fd]
            silent = not data and not buffer and not pending.fds  # a probe (is one listening?), not a request
            pending.drop(None if silent else why if not data else "too large a request or too many fds")
            return
        if len(buffer) < 4 + size:
            return
        del self.pending[pending.fd]
        try:
            request = proto.parse_request(bytes(buffer))
        except (ValueError, UnicodeDecodeError) as exc:
            pending.drop(f"malformed: {exc}")
            return
        conn, fds = pending.conn, pending.fds
        if request.verb == "status":
            self.reply_status(conn)
            return pending.drop()
        if request.verb == "stop":
            self.stopping = True
            _send(conn, f"pid={os.getpid()}\n".encode())
            return pending.drop()
        if request.verb != "run" or self.stopping or self.listener is None:
            return pending.drop()
        if len(fds) != 4 + len(caller.ints(request.caller["fds"])):
            return pending.drop("fds do not match the request")
        self.start_worker(conn, bytes(buffer), fds, pending.peer_pid)

    def reply_status(self, conn) -> None:
        fields = {"pid": os.getpid(), "socket": self.path, "uptime_s": round(time.time() - self.started, 1),
                  "requests": self.served, "workers": ",".join(map(str, self.workers)), "rss_kb": rss_kb(os.getpid()),
                  "idle_exit_s": f"{self.idle:g}"}
        _send(conn, "".join(f"{k}={v}\n" for k, v in fields.items()).encode())

    def start_worker(self, conn, raw: bytes, fds: list[int], peer_pid: int) -> None:
        """Hand the request to a spare worker (forked now if none is ready); the worker tells the
        client its pid once it has taken the caller on."""
        conn.setblocking(True)  # the worker shares it: it waits for `go` and writes its status
        message = struct.pack(">i", peer_pid) + raw
        for _ in range(2):  # a spare that died meanwhile is replaced once
            spare = self.spares.pop(0) if self.spares else self.fork_spare()
            if spare is None:
                break
            pid, channel = spare
            try:
                socket.send_fds(channel, [message[:65536]], [*fds, conn.fileno()])
            except (BrokenPipeError, ConnectionResetError):  # it died before getting the request
                channel.close()
                continue
            try:
                if len(message) > 65536:  # it has the fds now; never send the request to a second one
                    channel.sendall(message[65536:])
            except (BrokenPipeError, ConnectionResetError):
                log(f"worker {pid} went away while receiving a request")
            for fd in fds:
                os.close(fd)
            channel.setblocking(False)
            self.served += 1
            self.workers[pid] = Worker(pid, conn, channel)
            return
        for fd in fds:  # no worker: the client runs the command itself
            os.close(fd)
        conn.close()

    def worker_message(self, w: Worker) -> None:
        """A worker that declined says why; one that took its call closes the channel."""
        message = _recv_nonblocking(w.channel)
        if message is None:
            return
        if message:
            self.declined(w, message.decode(errors="replace"))
        w.channel.close()
        w.channel = None

    def declined(self, w: Worker, message: str) -> None:
        verdict, _, reason = message.partition(" ")
        log(f"worker {w.pid} declined a call ({reason}); it runs in its client's process")
        if verdict == "retire":  # the server is below this caller: the next server starts from one like it
            self.close_listener("a caller needs more than this server can give")

    def fork_spare(self):
        """(pid, channel) of a worker forked ahead of the next request: forking this big process
        takes tens of milliseconds, off the caller's time this way. None if fork fails."""
        parent_end, child_end = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: clients run commands themselves
            log(f"cannot fork a worker: {exc}")
            parent_end.close()
            child_end.close()
            return None
        if pid == 0:
            self.run_worker(child_end)  # never returns
        child_end.close()
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first
        except (PermissionError, ProcessLookupError):
            pass
        return pid, parent_end

    def run_worker(self, channel) -> None:
        """A worker: wait for one request on ``channel``, take on its caller, tell the client
        its pid, and once the client says go, run the command and exit with its status."""
        code, reply = 1, None
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            self.forget_sockets()
            worker.close_all_but({0, 1, 2, channel.fileno()})  # nothing of the server's or of another caller's
            set_title("kernelcli server: spare worker")
            if not channel.recv(1, socket.MSG_PEEK):  # the server closed the channel: not needed
                os._exit(0)
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # the caller's come at the end
            raw, fds = read_raw(channel)
            peer_pid = struct.unpack(">i", raw[:4])[0]
            request = proto.parse_request(raw[4:])
            reply = self.take_on(request, peer_pid, fds, channel)
            if reply is None:
                os._exit(0)
            set_title(f"kernelcli server: worker for pid {peer_pid}")
            channel.close()
            os.write(reply, b"pid %d\n" % os.getpid())
            if not _recv_line(reply).startswith(b"go"):  # the client gave up: nothing runs
                os._exit(0)
            os.umask(request.umask)
            os.environ.clear()
            os.environ.update(request.env)
            time.tzset()
            if "tempfile" in sys.modules:
                sys.modules["tempfile"].tempdir = None
            sys.argv = [request.argv0 or "kernelcli", *request.args]
            reopen_std_streams()
            import torch

            torch.set_num_threads(worker.fresh_threads(self.threads, len(caller.ints(request.caller["cpus"])),
                                                       self.environ))
            from ..cli import run

            worker.set_signals(request.caller)
            worker.block_signals(request.caller)
            code = run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:  # as Python does: die by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001  (a bug: show it, as an in-process run would)
            import traceback

            traceback.print_exc()
        finally:
            if reply is not None:  # before the teardown of this big process: the caller goes on
                try:
                    os.write(reply, b"exit %d\n" % code)
                except OSError:  # the client is gone
                    pass
            os._exit(code)

    def forget_sockets(self) -> None:
        """In a worker: the server's socket objects let go of their fds (closed with the rest),
        so that none of them closes a number the worker has reused when it is collected."""
        sockets = [self.listener, *(p.conn for p in self.pending.values()), *(c for _, c in self.spares),
                   *(w.conn for w in self.workers.values()), *(w.channel for w in self.workers.values())]
        for sock in sockets:
            if sock is not None:
                sock.detach()

    def take_on(self, request, peer_pid: int, fds: list[int], channel) -> int | None:
        """Give this worker the caller's fds, working folder and process attributes; the client
        connection's fd, or None after telling the server why not (the client runs the command)."""
        targets = [0, 1, 2, None, *caller.ints(request.caller["fds"]), None]
        try:
            placed = worker.place_fds(fds, targets, keep=channel.fileno(), fields=request.caller)
            reply, cwd = placed[-1], placed[3]
            os.fchdir(cwd)
            os.close(cwd)
            worker.watch_client(reply)  # before the caller's limits: a thread more may be over its RLIMIT_NPROC
            if peer_pid <= 0 or caller.context(peer_pid) != self.context:
                raise worker.Decline(f"pid {peer_pid} runs in another context (cgroup, namespaces, user or privileges)")
            worker.take_on(request.caller, peer_pid)
        except (KeyError, ValueError) as exc:  # a request without the fields this version sends
            _send(channel, f"decline malformed request: {exc!r}".encode())
            return None
        except worker.Decline as exc:
            _send(channel, f"{'retire' if exc.retire else 'decline'} {exc}".encode())
            return None
        return reply

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for spare in [s for s in self.spares if s[0] == pid]:  # a spare died
                spare[1].close()
                self.spares.remove(spare)
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self.last_active = time.time()
            if w.channel is not None:  # what it said before it ended (a decline)
                self.worker_message(w)
                if w.channel is not None:
                    w.channel.close()
            if os.WIFSIGNALED(status):  # an exit status the worker sent itself
                worker.killpg(pid, signal.SIGKILL)  # anything it started goes too
                _send(w.conn, b"signal %d\n" % os.WTERMSIG(status))
            w.conn.close()


def read_raw(conn) -> tuple[bytes, list[int]]:
    """One message from the server to a worker (peer pid, then the request as the client sent
    it) and the fds that came with it; ValueError if the channel closed early."""
    first, fds, _, _ = socket.recv_fds(conn, 65536, MAX_FDS + 1)
    try:
        if len(first) < 8:
            raise ValueError("short request")
        (size,) = struct.unpack(">I", first[4:8])
        chunks, got = [first], len(first) - 8
        while got < size:
            chunk = conn.recv(min(1 << 20, size - got))
            if not chunk:
                raise ValueError("truncated request")
            chunks.append(chunk)
            got += len(chunk)
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        raise
    return b"".join(chunks), fds


def _recv_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = os.read(fd, 64)
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def reopen_std_streams() -> None:
    """New sys.stdin/stdout/stderr on the passed fds, buffered as at interpreter start:
    stdout line-buffered on a terminal, stderr always line-buffered."""
    import io

    _kept.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    enc, errors = sys.__stdout__.encoding, sys.__stdout__.errors
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False), enc, errors)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.open(1, "wb", closefd=False), enc, errors,
                                                   line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.open(2, "wb", closefd=False), enc, "backslashreplace",
                                                   line_buffering=True)


def set_title(title: str) -> None:
    """What ``ps`` shows for this process: ``title`` as its command line (written over the
    original argv, as setproctitle does; the interpreter keeps its own copy), ``kernelcli`` as
    its name (comm)."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    except (OSError, ValueError, IndexError):
        return
    if start <= 0 or end <= start:
        return
    data = title.encode()[: end - start - 1]
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)
    pr_set_name = 15
    ctypes.CDLL(None).prctl(pr_set_name, b"kernelcli", 0, 0, 0)


def _send(conn, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError:  # gone, or not reading
        pass


def _read_nonblocking(fd) -> bytes:
    try:
        return os.read(fd, 512)
    except BlockingIOError:
        return b""


def _recv_nonblocking(sock) -> bytes | None:
    """What a non-blocking socket has (b"" at its end), None if nothing yet."""
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def log(message: str) -> None:
    """A line in server.log (fd 2). A log that cannot be written (a full disk) is skipped: the
    server goes on serving."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n".encode(errors="replace")
    try:
        os.write(2, line)
    except OSError:
        pass


MIN_OPEN_FILES = 64  # a server that may hold fewer fds cannot serve (each call passes 4 and more)


def main(argv=None) -> None:
    """``python -c 'import kernelcli.server.daemon as s; s.main(…)' --socket PATH [--idle S] [--lock-fd N]``;
    started by the client (protocol.start_in_background), in its own session."""
    import resource

    parser = argparse.ArgumentParser(prog="kernelcli-server")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=float, default=proto.IDLE_SECONDS)
    parser.add_argument("--lock-fd", type=int)
    opts = parser.parse_args(argv)
    os.chdir("/")
    worker.close_all_but({0, 1, 2} | ({opts.lock_fd} if opts.lock_fd is not None else set()))
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    worker.clean_scheduling()
    set_title(f"kernelcli server --socket {opts.socket} --idle {opts.idle:g}")
    stamp = proto.stamp()
    log(f"starting for {opts.socket}")
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files < MIN_OPEN_FILES:
        log(f"not serving: at most {open_files} open files (ulimit -n) allowed, {MIN_OPEN_FILES} needed")
        sys.exit(1)
    threads = warm_up()
    worker.io_priority(0)  # loads the C library's syscall() once here, not in every worker
    gc.freeze()  # what is loaded now stays: a worker's collections neither walk nor copy it
    server = Server(opts.socket, opts.idle)
    if proto.stamp() != stamp:
        log("the install changed while starting; not serving")
        sys.exit(1)
    server.bind()
    if opts.lock_fd is not None:
        os.close(opts.lock_fd)  # others may start a server again (after this one is gone)
    log(f"listening (torch threads per worker: up to {threads})")
    server.serve(stamp, threads)
