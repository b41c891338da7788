"""The resident kernelcli server: torch, numpy, Pillow and the library imported once; a forked
worker per request (Mercurial chg's design; the client and the protocol are in client.py).

Fork safety (measured, shared FACTS §7): torch's libgomp hangs every forked child once the
parent has run a multi-threaded op, so the server sets one torch thread right after import,
runs its warm-up op in that one thread, never initialises CUDA, and starts no thread pool;
each worker restores the thread count a fresh process would have. A worker may initialise
CUDA: it is a fork of a process that never did, which is as good as a fresh process.

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

from . import client as proto

MAX_REQUEST = 64 << 20
SPARES = 3  # workers forked ahead (a 3-stage pipeline asks for three at once)
SPARE_AFTER = 0.02  # seconds without events before forking a missing spare
TERM_DELAY = 0.3  # seconds from a client's going away to SIGTERM for its worker (unless it ends)
KILL_GRACE = 2.3  # … and to SIGKILL
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

    from .kernels import analysis, generate, library as kernels
    from .run import batch
    from .compute import budget, convolve, fast, filters, mapping, options
    from . import cli
    from .teach import grid, toolkit
    from .io import images, storage  # noqa: F401  (every module an apply call imports, so no worker compiles one)

    kernels.load_file(kernels.shipped_path())  # parsed once here; workers reuse it while it is unchanged
    torch.nn.functional.conv2d(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 3, 3))
    return threads


class Worker:
    def __init__(self, pid, conn):
        self.pid, self.conn, self.term_at, self.kill_at = pid, conn, None, None


class Server:
    def __init__(self, path: str, idle: float):
        self.path, self.idle = path, idle
        self.workers: dict[int, Worker] = {}
        self.listener = None
        self.started = self.last_active = time.time()
        self.served = 0
        self.stopping = False
        self.spares: list[tuple[int, socket.socket]] = []

    # ------------------------------------------------------------------ start and stop

    def bind(self) -> None:
        """Listen at a temporary name, then rename onto the real one (atomic; an older server's
        socket is replaced and that server notices and exits)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(tmp)
        finally:
            os.umask(old)
        self.listener.listen(64)
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
            conns = {w.conn: w for w in self.workers.values()}
            deadlines = [t for w in self.workers.values() for t in (w.term_at, w.kill_at) if t is not None]
            if self.listener is not None and len(self.spares) < SPARES:
                deadlines.append(time.monotonic() + SPARE_AFTER)  # when nothing happens meanwhile
            timeout = min([1.0, *(max(0.0, t - time.monotonic()) for t in deadlines)])
            ready, _, _ = select.select([wake_r, *([self.listener] if self.listener else []), *conns], [], [], timeout)
            if wake_r in ready:
                while _read_nonblocking(wake_r):
                    pass
            self.reap()
            for conn in ready:
                if conn in conns and conns[conn].pid in self.workers:  # not reaped just now
                    self.client_event(conns[conn])
            if self.listener is not None and self.listener in ready:
                self.accept()
            if not ready and self.listener is not None and len(self.spares) < SPARES:
                spare = self.fork_spare()
                if spare:
                    self.spares.append(spare)
            now = time.monotonic()
            for w in self.workers.values():
                if w.term_at is not None and now >= w.term_at:
                    log(f"client of worker {w.pid} went away: stopping it")
                    _killpg(w.pid, signal.SIGTERM)
                    w.term_at = None
                if w.kill_at is not None and now >= w.kill_at:
                    _killpg(w.pid, signal.SIGKILL)
            if now - last_check >= 1.0 and self.listener is not None:
                last_check = now
                if not self.owns_socket():
                    self.close_listener("the socket was removed or replaced")
                elif proto.stamp() != stamp:
                    self.close_listener("the install or its environment changed")
                elif not self.workers and time.time() - self.last_active > self.idle:
                    self.close_listener(f"idle for {self.idle:g} s")
        log("exit")

    def _on_stop(self, signum, frame):
        self.stopping = True

    # ------------------------------------------------------------------ requests

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.last_active = time.time()
        fds = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer_pid, uid, _ = struct.unpack("3i", creds)
            if uid != os.geteuid():
                log(f"refused a connection from uid {uid} (pid {peer_pid})")
                conn.close()
                return
            conn.settimeout(5)
            raw, fds = read_raw(conn)
            conn.settimeout(None)
            verb = parse_request(raw)[0]
        except (OSError, ValueError) as exc:  # a client that died or spoke nonsense: drop it
            log(f"dropped a request: {exc}")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        if verb == "status":
            self.reply_status(conn)
        elif verb == "stop":
            self.stopping = True
            _send(conn, f"pid={os.getpid()}\n".encode())
            conn.close()
        elif verb == "run" and len(fds) == 4 and not self.stopping:
            self.start_worker(conn, raw, fds)
        else:
            for fd in fds:
                os.close(fd)
            conn.close()

    def reply_status(self, conn) -> None:
        fields = {"pid": os.getpid(), "socket": self.path, "uptime_s": round(time.time() - self.started, 1),
                  "requests": self.served, "workers": ",".join(map(str, self.workers)), "rss_kb": rss_kb(os.getpid()),
                  "idle_exit_s": f"{self.idle:g}"}
        _send(conn, "".join(f"{k}={v}\n" for k, v in fields.items()).encode())
        conn.close()

    def start_worker(self, conn, raw: bytes, fds: list[int]) -> None:
        """Hand the request to a spare worker (forked now if none is ready), tell the client its pid."""
        for _ in range(2):  # a spare that died meanwhile is replaced once
            spare = self.spares.pop(0) if self.spares else self.fork_spare()
            if spare is None:
                break
            pid, channel = spare
            try:
                socket.send_fds(channel, [raw[:65536]], [*fds, conn.fileno()])
            except (BrokenPipeError, ConnectionResetError):  # it died before getting the request
                channel.close()
                continue
            try:
                if len(raw) > 65536:  # it has the fds now; never send the request to a second one
                    channel.sendall(raw[65536:])
            except (BrokenPipeError, ConnectionResetError):
                log(f"worker {pid} went away while receiving a request")
            finally:
                channel.close()
            for fd in fds:
                os.close(fd)
            self.served += 1
            self.workers[pid] = Worker(pid, conn)
            _send(conn, b"pid %d\n" % pid)
            return
        for fd in fds:  # no worker: the client runs the command itself
            os.close(fd)
        conn.close()

    def fork_spare(self):
        """(pid, channel) of a worker forked ahead of the next request: forking this big process
        takes tens of milliseconds, off the caller's time this way. None if fork fails."""
        parent_end, child_end = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: clients run commands themselves
            log(f"cannot fork a worker: {exc}")
            parent_end.close()
            child_end.close()
            return None
        if pid == 0:
            parent_end.close()
            self.run_worker(child_end)  # never returns
        child_end.close()
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first
        except (PermissionError, ProcessLookupError):
            pass
        return pid, parent_end

    def run_worker(self, channel) -> None:
        """A worker: wait for one request on ``channel``, take on the caller's fds, folder,
        environment and umask, run the command, exit with its status."""
        code, reply = 1, None
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _die_with_parent()
            for sock in [self.listener, *(w.conn for w in self.workers.values()), *(c for _, c in self.spares)]:
                sock.close()
            os.close(self.wake_r)
            if not channel.recv(1, socket.MSG_PEEK):  # the server closed the channel: not needed
                os._exit(0)
            raw, fds = read_raw(channel)
            channel.close()
            _, mask, args, env = parse_request(raw)
            reply = fds.pop()  # the client's connection: the exit status goes straight back
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            os.fchdir(fds[3])
            for fd in fds:
                os.close(fd)
            os.umask(mask)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = ["kernelcli", *args]
            reopen_std_streams()
            import torch

            torch.set_num_threads(self.threads)
            from .cli import run

            code = run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:  # as Python does: die by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
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

    def client_event(self, worker: Worker) -> None:
        """The client spoke or went away: a client that is gone takes its worker with it."""
        try:
            data = worker.conn.recv(64)
        except (ConnectionResetError, OSError):
            data = b""
        if data or worker.kill_at is not None:
            return
        worker.kill_at = time.monotonic() + KILL_GRACE  # TERM now, KILL then, unless it ends first
        worker.term_at = time.monotonic() + TERM_DELAY  # it may just have sent its status and be ending

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
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.last_active = time.time()
            if os.WIFSIGNALED(status):  # an exit status the worker sent itself
                _killpg(pid, signal.SIGKILL)  # anything it started goes too
                if worker.kill_at is None:
                    _send(worker.conn, b"signal %d\n" % os.WTERMSIG(status))
            worker.conn.close()


def read_raw(conn) -> tuple[bytes, list[int]]:
    """One request as sent (length prefix included) and the fds that came with it; ValueError if
    the peer closed or sent too much."""
    first, fds, _, _ = socket.recv_fds(conn, 65536, 8)
    try:
        if len(first) < 4:
            raise ValueError("short request")
        (size,) = struct.unpack(">I", first[:4])
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        chunks, got = [first], len(first) - 4
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


def parse_request(raw: bytes):
    """(verb, umask, argv, environment) of a request; ValueError if malformed."""
    fields = raw[4:].split(b"\0")
    verb, mask, argc = fields[0].decode(), int(fields[1]), int(fields[2])
    args = [os.fsdecode(a) for a in fields[3: 3 + argc]]
    env = dict(os.fsdecode(f).split("=", 1) for f in fields[3 + argc:] if b"=" in f)
    return verb, mask, args, env


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


def _die_with_parent() -> None:
    """SIGTERM this worker if the server dies (no orphan keeps writing)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _send(conn, data: bytes) -> None:
    try:
        conn.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _read_nonblocking(fd) -> bytes:
    try:
        return os.read(fd, 512)
    except BlockingIOError:
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
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    """``python -c 'import kernelcli.server as s; s.main(…)' --socket PATH [--idle S] [--lock-fd N]``;
    started by the client (client.start_in_background), in its own session."""
    parser = argparse.ArgumentParser(prog="kernelcli-server")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=float, default=proto.IDLE_SECONDS)
    parser.add_argument("--lock-fd", type=int)
    opts = parser.parse_args(argv)
    os.chdir("/")
    stamp = proto.stamp()
    log(f"starting for {opts.socket}")
    threads = warm_up()
    gc.freeze()  # what is loaded now stays: a worker's collections neither walk nor copy it
    server = Server(opts.socket, opts.idle)
    if proto.stamp() != stamp:
        log("the install changed while starting; not serving")
        sys.exit(1)
    server.bind()
    if opts.lock_fd is not None:
        os.close(opts.lock_fd)  # others may start a server again (after this one is gone)
    log(f"listening (torch threads per worker: {threads})")
    server.serve(stamp, threads)
