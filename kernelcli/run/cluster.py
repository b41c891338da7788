"""Run a planned apply batch on Dask (``--scheduler ADDRESS|local|local:N``, ``kernelcli[dask]``).

The client plans exactly as a local run (listing, names, overwrite/skip, refusals: ``batch.plan``),
then submits chunks of jobs; each worker reads → filters → writes with the library
(:func:`process_files`) and returns one record per input. The client records them in the same
``batch.Report`` as a local run as they arrive (progress bar, ``--report``, summary, exit code).

- Ctrl-C (or SIGTERM) cancels the tasks not yet finished and exits 130 (143); outputs already
  written are whole and kept.
- A worker that dies: the scheduler runs its tasks again elsewhere. Writes are idempotent
  (an output that already holds the same bytes counts as written), so a retried chunk neither
  fails on nor changes what the dead worker finished; nothing partial is ever visible.
- ``--device cuda``: the tasks ask for the Dask resource ``GPU`` (start GPU workers with
  ``dask worker ADDRESS --resources GPU=1``).

:func:`process_files` is a plain function: any engine (a Ray ``map_batches``, a process pool,
a loop) can call it on a list of jobs.
"""

from __future__ import annotations

import math
import threading
import time

from .batch import Interrupted, Job, Report, Terminated, process_job
from ..errors import KernelcliError, UsageError, WriteError


def process_files(jobs: list[Job], render, *, limits=None, overwrite: bool = False, stop=None) -> list[dict]:
    """Read → filter → write each job's input; one record per job, in order.

    ``render(raster, kernels, fmt, name) -> bytes`` encodes one output (``fmt`` from the output's
    name, or ``render.format_for(path)`` where render has it, as runner.Renderer). A record is a dict:
    ``status`` ("ok", "skipped", "failed"), ``error`` (the message or None), ``notes``
    (reader warnings) and ``fatal`` (True when the destination failed: the chunk stops there).
    ``stop`` (anything with ``is_set()``): once set, the file at hand is finished and no
    other is started; the records end there.
    """
    from ..io import storage
    from ..io.images import format_for_path

    format_of = getattr(render, "format_for", format_for_path)  # a Renderer knows the --format word
    stop = stop if stop is not None else threading.Event()
    records = []
    for job in jobs:
        if stop.is_set():
            break
        notes: list[str] = []

        def read(path):
            raster = storage.read(path, limits)
            notes.extend(raster.notes)
            return raster

        record = {"status": "failed", "error": None, "notes": notes, "fatal": False}
        try:
            record["status"] = process_job(
                job, read=read, stop=stop,
                render=lambda raster, group, path: render(raster, group, format_of(path), path),
                write=lambda path, data: storage.write(path, data, overwrite=overwrite, idempotent=True),
            )
        except WriteError as exc:
            record.update(error=str(exc), fatal=True)
        except Interrupted:
            break
        except (KernelcliError, MemoryError, RuntimeError) as exc:  # memory failures are this input's, named
            from ..compute.budget import job_failure

            failure = job_failure(job.source.path, exc)
            if failure is None and not isinstance(exc, KernelcliError):
                raise
            record["error"] = str(failure or exc)
        records.append(record)
        if record["fatal"]:
            break
    return records


class TaskCancelled:
    """``is_set()`` inside a Dask task: true once the client has cancelled the task, so a
    running chunk stops after the file at hand (Dask cannot stop a running thread)."""

    def is_set(self) -> bool:
        from distributed import get_worker
        from distributed.worker import thread_state

        key = getattr(thread_state, "key", None)
        if key is None:
            return False
        task = get_worker().state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")


def connect(address: str):
    """A Dask client for ``address`` (``tcp://host:port``), or a new LocalCluster for
    ``local`` / ``local:N`` (N worker processes of one thread; default: CPU cores).
    Returns (client, cluster or None). An unreachable scheduler is a usage error."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError('--scheduler needs Dask: pip install "kernelcli[dask]"') from None
    if address == "local" or address.startswith("local:"):
        count = address.partition(":")[2]
        if count and not (count.isdigit() and int(count) > 0):
            raise UsageError(f"--scheduler {address}: expected local or local:N with N ≥ 1")
        import os

        cluster = LocalCluster(n_workers=int(count) if count else os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--scheduler {address}: cannot reach the scheduler: {exc}") from None


def chunked(items: list, workers: int, *, per_worker: int = 4, largest: int = 32) -> list[list]:
    """About ``per_worker`` chunks a worker (for balance and cheap retries), at most ``largest`` items."""
    size = max(1, min(largest, math.ceil(len(items) / max(1, workers * per_worker))))
    return [items[i:i + size] for i in range(0, len(items), size)]


def run(jobs: list[Job], render, *, scheduler: str, report: Report, stop: threading.Event, limits=None,
        overwrite: bool = False, device: str | None = None, on_done=None, on_note=None) -> None:
    """Run the planned ``jobs`` on Dask, recording outcomes in ``report`` as they arrive.

    Raises WriteError when a destination failed (the rest is cancelled) and Interrupted on
    Ctrl-C/SIGTERM (130/143; tasks cancelled), as :func:`kernelcli.run.batch.run` does.
    """
    from distributed import as_completed

    todo = []
    for job in jobs:  # known bad before any work, or all outputs kept: recorded here, never sent
        if job.error or all(o.skip for o in job.outputs):
            report.record(job, "failed" if job.error else "skipped", job.error)
            if on_done is not None:
                on_done(job)
        else:
            todo.append(job)
    if not todo:
        return
    client, cluster = connect(scheduler)
    futures = {}
    try:
        info = client.scheduler_info(n_workers=-1).get("workers", {})
        workers = max(1, len(info))
        resources = None
        if device and device.startswith("cuda") and cluster is None:  # a local cluster has this machine's GPUs
            if not any(w.get("resources", {}).get("GPU") for w in info.values()):
                raise UsageError(f"--device {device}: no worker of {scheduler} offers the GPU resource; "
                                 "start GPU workers with: dask worker ADDRESS --resources GPU=1")
            resources = {"GPU": 1}
        for chunk in chunked(todo, workers):
            future = client.submit(process_files, chunk, render, limits=limits, overwrite=overwrite,
                                   stop=TaskCancelled(), pure=False, resources=resources)
            futures[future] = chunk
        _collect(client, futures, report, stop, on_done, on_note, as_completed)
    finally:
        client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)


def _collect(client, futures: dict, report: Report, stop, on_done, on_note, as_completed) -> None:
    from distributed import KilledWorker

    pending = set(futures)
    results = as_completed(list(futures))
    fatal = None
    try:
        while pending and fatal is None:
            done = results.next_batch(block=False)
            if not done:
                time.sleep(0.05)  # short waits keep Ctrl-C responsive in the main thread
                continue
            for future in done:
                pending.discard(future)
                chunk = futures[future]
                try:
                    records = future.result()
                except KilledWorker as exc:  # it killed worker after worker: give up on these inputs
                    records = [{"status": "failed", "error": f"{job.source.path}: {exc}", "notes": [], "fatal": False}
                               for job in chunk]
                for job, record in zip(chunk, records):
                    for note in record["notes"]:
                        if on_note is not None:
                            on_note(note)
                    report.record(job, record["status"], record["error"])
                    if on_done is not None:
                        on_done(job)
                    if record["fatal"]:
                        fatal = WriteError(record["error"])
    except KeyboardInterrupt as exc:
        stop.set()
        client.cancel(list(pending), force=True)
        raise Interrupted(143 if isinstance(exc, Terminated) else 130) from None
    if fatal is not None:
        stop.set()
        client.cancel(list(pending), force=True)
        raise fatal
