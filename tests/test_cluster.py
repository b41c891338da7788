"""apply on a real multi-process Dask cluster, S3 → S3 (servers: tests/servers.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import kernelcli
from kernelcli.run.cluster import chunked
from tests.conftest import run
from tests.servers import start_worker, stop, wait_for, worker_env

ROOT = Path(__file__).resolve().parents[1]


def upload_images(fs, prefix: str, count: int, size=(40, 30), seed=0) -> dict[str, np.ndarray]:
    """``count`` random RGB PNGs under ``prefix/in/``; returns name → pixels."""
    rng = np.random.default_rng(seed)
    images, blobs = {}, {}
    for i in range(count):
        arr = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        images[f"img{i:03}.png"] = arr
        blobs[f"{prefix}/in/img{i:03}.png"] = buf.getvalue()
    fs.pipe(blobs)
    return images


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def executed(client) -> dict[str, int]:
    return client.run(lambda dask_worker: dask_worker.state.executed_count)


def cli(*args, env):
    """The real command in its own process (to be killed, interrupted, waited on with a timeout)."""
    return subprocess.Popen([sys.executable, "-m", "kernelcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_chunks_keep_every_worker_busy_and_retries_cheap():
    assert [len(c) for c in chunked(list(range(10)), 2)] == [2, 2, 2, 2, 2]
    assert sum(len(c) for c in chunked(list(range(1000)), 2)) == 1000
    assert max(len(c) for c in chunked(list(range(1000)), 2)) == 32
    assert chunked([], 3) == []


def test_s3_to_s3_on_the_cluster_equals_the_library_and_a_local_run(s3, dask_cluster, prefix, tmp_path, monkeypatch):
    fs = s3.fs()
    images = upload_images(fs, prefix, 24)
    monkeypatch.setenv("KERNELCLI_SCHEDULER", dask_cluster.address)
    with dask_cluster.client() as client:
        before = executed(client)
        result = run("apply", "-k", "sharpen", "-k", "blur", f"s3://{prefix}/in/", "-o", f"s3://{prefix}/out/",
                     "--report", tmp_path / "run.jsonl")
        after = executed(client)
    assert result.exit_code == 0, result.stderr
    assert "24 processed, 0 skipped, 0 failed" in result.stderr
    assert all(after[w] > before[w] for w in before) and len(before) == 2  # both workers did work
    outputs = {k.rsplit("/", 1)[1]: fs.cat(k) for k in fs.find(f"{prefix}/out")}
    assert sorted(outputs) == sorted(images)
    for name, arr in images.items():  # pixel for pixel as the library
        np.testing.assert_array_equal(decoded(outputs[name]), kernelcli.apply(arr, "sharpen", "blur"))
    local = run("apply", "-k", "sharpen", "-k", "blur", f"s3://{prefix}/in/", "-o", tmp_path / "local", "-q")
    assert local.exit_code == 0, local.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()} == outputs  # byte for byte
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 24


def test_a_worker_killed_mid_job_has_its_tasks_retried_elsewhere(s3_server, dask_cluster, prefix, tmp_path):
    fs = s3_server.fs()
    images = upload_images(fs, prefix, 64, size=(128, 96), seed=1)
    victim = start_worker(dask_cluster.address, "127.0.0.3", worker_env(s3_server), tmp_path / "victim.log", "victim")
    try:
        with dask_cluster.client() as client:
            client.wait_for_workers(3, timeout=60)
            address = next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == "victim")
            proc = cli("apply", "-k", "gaussian:2", f"s3://{prefix}/in/", "-o", f"s3://{prefix}/out/",
                       "--scheduler", dask_cluster.address, env=s3_server.env)
            try:
                wait_for(lambda: client.processing(workers=[address]).get(address), "a task on the victim",
                         timeout=60, proc=proc)
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                out, err = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)
    finally:
        stop(victim)
    assert proc.returncode == 0, err
    assert "64 processed, 0 skipped, 0 failed" in err
    outputs = {k.rsplit("/", 1)[1]: fs.cat(k) for k in fs.find(f"{prefix}/out")}
    assert sorted(outputs) == sorted(images)
    for name, arr in images.items():
        np.testing.assert_array_equal(decoded(outputs[name]), kernelcli.apply(arr, "gaussian:2"))


def test_ctrl_c_cancels_the_tasks_and_exits_130(s3_server, dask_cluster, prefix):
    fs = s3_server.fs()
    count = 120
    images = upload_images(fs, prefix, count, size=(128, 96), seed=2)
    proc = cli("apply", "-k", "gaussian:2", f"s3://{prefix}/in/", "-o", f"s3://{prefix}/out/",
               "--scheduler", dask_cluster.address, env=s3_server.env)
    try:
        wait_for(lambda: fs.find(f"{prefix}/out"), "the first output", timeout=60, proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "(interrupted)" in err and "Traceback" not in err
    with dask_cluster.client() as client:  # the tasks are gone and no worker runs one (bounded wait)
        wait_for(lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
                 and not any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()),
                 "an idle cluster", timeout=30)
    written = {k.rsplit("/", 1)[1]: fs.cat(k) for k in fs.find(f"{prefix}/out")}
    assert 0 < len(written) < count  # stopped with work left: running chunks stopped too
    for name, data in written.items():  # every output whole and right
        np.testing.assert_array_equal(decoded(data), kernelcli.apply(images[name], "gaussian:2"))
    time.sleep(0.5)
    assert len(fs.find(f"{prefix}/out")) == len(written)  # nothing written once the workers are idle


def test_a_bad_local_scheduler_is_a_usage_error(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    result = run("apply", "-k", "blur", tmp_path / "a.png", "-o", tmp_path / "out.png", "--scheduler", "local:x")
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: --scheduler local:x: expected local or local:N with N ≥ 1\n"
    assert not (tmp_path / "out.png").exists()


def test_cuda_without_gpu_workers_is_a_usage_error(dask_cluster, tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    result = run("apply", "-k", "blur", tmp_path / "a.png", "-o", tmp_path / "out.png", "--device", "cuda",
                 "--scheduler", dask_cluster.address)
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: --device cuda: no worker of {dask_cluster.address} offers the GPU "
                             "resource; start GPU workers with: dask worker ADDRESS --resources GPU=1\n")
    assert not (tmp_path / "out.png").exists()
