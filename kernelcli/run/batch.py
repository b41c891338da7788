"""Batches: find inputs, plan every (input → output) before any work, run, report.

Plan first, act second: all refusals (existing outputs, an output that is an input, two
inputs onto one output) happen before the first file is read. Work then runs on a thread
pool; a bad input is recorded and the batch goes on, a failing destination stops it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import string
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import KernelcliError, UsageError, WriteError

IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".jpe", ".webp", ".tif", ".tiff", ".bmp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".npy", ".csv",
}
TEMPLATE_FIELDS = ("stem", "ext", "kernel", "parent")


class Interrupted(Exception):
    """The batch was asked to stop (Ctrl-C or SIGTERM); finished outputs are kept."""

    def __init__(self, exit_code: int = 130):
        super().__init__("interrupted")
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's signal handler (exit 143, not 130)."""


@dataclass(frozen=True)
class Source:
    """An input file and the relative path its outputs mirror under -o DIR. ``found``: it came
    from a folder, a prefix or a --files-from list rather than being named on the command line."""

    path: Path
    rel: Path
    found: bool = False


@dataclass
class Output:
    path: Path
    kernels: tuple  # the kernels applied in sequence for this output
    skip: bool = False


@dataclass
class Job:
    source: Source
    outputs: list[Output]
    error: str | None = None  # known bad before any work (e.g. missing file)


@dataclass
class Report:
    """Counts outcomes, keeps the failures, writes JSON lines, and decides the exit code."""

    total: int = 0
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    stream: object = None  # a text stream the JSON lines go to as they happen (--report -), or None
    lines: list[str] = field(default_factory=list)  # every JSON line, for a --report file written at the end
    on_fail: object = None  # called with (job, message) as each failure happens
    interrupted: int | None = None  # 130 (Ctrl-C) or 143 (SIGTERM) when the run was interrupted
    fatal: str | None = None  # the destination failed (or the report file could not be written): the run stopped
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, job: Job, status: str, error: str | None = None) -> None:
        with self._lock:
            if status == "ok":
                self.processed += 1
            elif status == "skipped":
                self.skipped += 1
            else:
                self.failed.append((str(job.source.path), error or ""))
                if self.on_fail is not None:
                    self.on_fail(job, error or "")
            line = json.dumps({  # ASCII: undecodable file names stay valid JSON
                "input": str(job.source.path),
                "outputs": [str(o.path) for o in job.outputs],
                "status": status,
                "error": error,
            }) + "\n"
            self.lines.append(line)
            if self.stream is not None:
                self.stream.write(line)
                self.stream.flush()

    def jsonl(self) -> bytes:
        """The whole report, one JSON line per input, in the order they finished."""
        with self._lock:
            return "".join(self.lines).encode("ascii")

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return 1
        if self.interrupted is not None:
            return self.interrupted
        if not self.failed:
            return 0
        return 1 if self.total == 1 else 3

    def summary(self) -> str:
        return f"{self.processed} processed, {self.skipped} skipped, {len(self.failed)} failed"


# --------------------------------------------------------------------------- finding inputs


def _matches(rel: Path, include, exclude) -> bool:
    def hit(patterns):
        return any(fnmatch.fnmatch(rel.as_posix(), p) or fnmatch.fnmatch(rel.name, p) for p in patterns)

    return (not include or hit(include)) and not hit(exclude)


def find_inputs(paths, *, recursive=False, include=(), exclude=(), listed=(), avoid=None, on_skip=None,
                kernels=None):
    """Sources from command-line paths (files or folders) and ``listed`` paths (--files-from).

    Folders yield their image files (by extension; content decides later), descending with
    ``recursive``; ``avoid`` (the output folder) is never read, neither in a folder nor from a
    list. Files found in folders and lists that kernelcli wrote itself are left out (see
    ``own_outputs``; ``kernels`` is the library whose names make up output names); files named
    on the command line are always inputs. Returns (sources, jobs of paths that are missing or
    not files, recorded as failures). Only regular files are taken: ``on_skip(path)`` is told
    of FIFOs, devices and sockets found in folders and lists.
    """
    sources, bad = [], []
    avoid = Path(avoid).resolve() if avoid and not _is_url(avoid) else avoid
    for given, is_listed in [(p, False) for p in paths] + [(p, True) for p in listed]:
        if _is_url(given):  # [storage] a prefix ("folder") or an object in a store, or a web URL
            from ..io.storage import as_path, list_objects

            objects = list_objects(as_path(given), recursive=recursive, avoid=avoid)
            if len(objects) == 1 and objects[0][0] == as_path(given):  # the one object named: taken as given
                sources.append(Source(objects[0][0], PurePosixPath(objects[0][1])))
                continue
            for o, key in objects:  # a prefix: its image objects, as the files of a folder
                rel = PurePosixPath(key)
                if not any(part in ("", ".", "..") for part in key.split("/")):
                    if _wanted(rel, include, exclude):
                        sources.append(Source(o, rel, True))
                elif rel.suffix.lower() in IMAGE_EXTENSIONS and _matches(rel, include, exclude):
                    # S3 keeps keys as written: in//x.png, in/../x.png are no path to mirror under -o
                    bad.append(Job(Source(o, PurePosixPath(rel.name), True), [], error=(
                        f"{o}: the key has an empty, '.' or '..' part, which cannot be mirrored inside the "
                        "output folder; refused (rename the object)")))
            continue
        path = Path(given)
        kind = _kind(path)
        if kind == "dir" and not is_listed:
            sources += _scan(path, recursive, include, exclude, avoid, on_skip)
        elif kind == "file" and is_listed and avoid is not None and not _is_url(avoid) and _under(path, avoid):
            continue  # an earlier run's output listed again (find . | … -o out/): never an input
        elif kind == "file":
            rel = path if is_listed and not path.is_absolute() and ".." not in path.parts else Path(path.name)
            sources.append(Source(path, Path(os.path.normpath(rel)), is_listed))
        elif kind == "other" and is_listed and on_skip is not None:
            on_skip(path)  # a FIFO, device or socket in a list: skipped like one in a folder
        else:
            bad.append(Job(Source(path, Path(path.name)), [], error=f"{given}: {not_an_input(kind)}"))
    return own_outputs(sources, kernels), bad


def _under(path: Path, folder: Path) -> bool:
    real = Path(path).resolve()
    return folder == real or folder in real.parents


def own_outputs(sources, kernels):
    """``sources`` less the found files that kernelcli wrote beside their inputs: ``S-LABEL.x``
    where a found file ``S.*`` sits in the same folder and LABEL names kernels of ``kernels``
    (``blur``, ``blur+outline``, ``sharpen-r90``, ``gaussian-2``, ``inline-1a2b3c``) — the
    default output name ``{stem}-{kernel}{ext}``. So a run over a folder can be run again or
    resumed with --skip-existing, and a run with other kernels does not filter earlier results.
    Files named on the command line stay inputs: that is how to filter such a file on purpose.
    """
    if kernels is None:
        return sources
    stems = {(s.path.parent, s.path.stem) for s in sources if s.found}

    def written(s: Source) -> bool:
        stem = s.path.stem
        return any(stem[i] == "-" and (s.path.parent, stem[:i]) in stems and _is_label(stem[i + 1:], kernels)
                   for i in range(1, len(stem) - 1))

    return [s for s in sources if not (s.found and written(s))]


def _is_label(label: str, kernels) -> bool:
    """``label`` is what {kernel} becomes for kernels of this library: names joined by ``+``,
    each perhaps turned (``-r90``), generated (``gaussian-2``) or inline (``inline-1a2b3c``)."""
    from ..kernels.generate import GENERATORS

    made = re.compile(rf"inline-[0-9a-f]{{6}}|(?:{'|'.join(map(re.escape, GENERATORS))})(?:-[0-9.]+)+")

    def one(text):
        return any(t in kernels or made.fullmatch(t) for t in (text, re.sub(r"-r-?[0-9.]+$", "", text)))

    return all(one(p) for p in label.split("+"))


def not_an_input(kind: str) -> str:
    """Why a path of this kind (see _kind) is not an input, as a message names it."""
    return {"dir": "is a directory, not an image", "other": "not a regular file (a FIFO, device or socket)",
            "missing": "no such file"}.get(kind, kind)


def _kind(path: Path) -> str:
    """'file' (regular), 'dir', 'other' (FIFO, device, socket), 'missing', or why it cannot be
    looked at (a name too long, a NUL byte from a binary list). Never opens the path."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"


def _scan(folder: Path, recursive, include, exclude, avoid, on_skip=None):
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (avoid is None or (root_path / d).resolve() != avoid))
        if not recursive:
            dirs[:] = []
        for name in sorted(files):
            path = root_path / name
            rel = path.relative_to(folder)
            if not _wanted(rel, include, exclude):
                continue
            if _kind(path) != "other":  # a broken link fails later, when read, as a named failure
                found.append(Source(path, rel, True))
            elif on_skip is not None:
                on_skip(path)
    return found


def _wanted(rel, include, exclude) -> bool:
    """A file found in a folder (or an object under a prefix) is an input: an image extension,
    no hidden part (``.x``), and it passes --include/--exclude."""
    return (rel.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in rel.parts)
            and _matches(rel, include, exclude))


MAX_LIST_BYTES = 128 << 20  # a --files-from list: about a million paths
MAX_LIST_ENTRY = 16 << 10  # one path or URL in it: longer than any a system opens (PATH_MAX is 4096)


def read_list(data: bytes, null: bool, name: str = "-") -> list[str]:
    """Paths from --files-from ``name``: one per line, or NUL-separated with --null. A list over
    MAX_LIST_BYTES (``data`` may hold one byte more, to tell) or an entry over MAX_LIST_ENTRY
    bytes is a usage error that never shows the entry."""
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"--files-from {name}: the list is longer than {MAX_LIST_BYTES >> 20} MiB; "
                         "split it into several runs, or name the folders instead")
    text = data.decode("utf-8", errors="surrogateescape")
    items = text.split("\0") if null else text.splitlines()
    for number, item in enumerate(items, 1):
        if len(item) > MAX_LIST_ENTRY:
            raise UsageError(f"--files-from {name}: {'entry' if null else 'line'} {number} is longer than "
                             f"{MAX_LIST_ENTRY} characters, longer than any path or URL; is it a list of paths?")
    return [item for item in items if item.strip()] if not null else [item for item in items if item]


# --------------------------------------------------------------------------- planning


def check_template(template: str) -> str:
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is not None and (name not in TEMPLATE_FIELDS or spec or conv):
            raise UsageError(
                f"--name {template!r}: unknown field {{{name}}}; use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            )
    return template


def output_name(template: str, source: Source, kernel_label: str, ext: str) -> str:
    """Fill the template; input names are values here, never templates themselves."""
    return template.format(stem=source.path.stem, ext=ext, kernel=kernel_label, parent=source.path.parent.name)


def inside(base: Path, sub: Path, name: str, template: str) -> Path:
    """``base / sub / name`` for a name filled from ``template``, refused (UsageError) unless
    it stays inside ``base``: no absolute name, no ``..``, ``.`` or empty part (an empty
    {parent}), and no symlinked folder on the way that leads out of ``base``."""
    if Path(sub).is_absolute() or ".." in Path(sub).parts:  # an input's place: found inputs never have one
        raise UsageError(f"{base}: an input's sub-folder {sub} leads outside the output folder")
    path = base / sub / name
    parts = name.replace(os.sep, "/").split("/")
    if os.path.isabs(name) or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"--name {template!r} gives {path}, outside the folder {base}; "
                         "a name may not be absolute or contain an empty, . or .. part")
    if _is_url(base):  # [storage] object keys have no links: the name checks above are the whole rule
        return path
    real_base = base.resolve()
    real = path.parent.resolve() / path.name  # a link at the name itself is replaced, not followed
    if real != real_base and real_base not in real.parents:
        raise UsageError(f"--name {template!r} gives {path}, which leads to {real} outside the folder {base}")
    return path


def check_writable(path: Path, *, name: bool = True) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written: the
    nearest folder that exists must be a folder we may write in (missing ones are created);
    with ``name``, every part still to be made must fit the file system's name length."""
    whole = Path(os.path.abspath(path))
    folder = whole.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{path}: cannot write here: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write here: no permission to write in {folder}")
    if name:
        try:
            longest = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            longest = 255
        for part in whole.relative_to(folder).parts:
            if len(os.fsencode(part)) > longest:
                raise UsageError(f"{path}: cannot write here: a name of {len(os.fsencode(part))} bytes, over the "
                                 f"{longest} this file system allows")


def check_report(path, jobs, *, overwrite: bool) -> None:
    """The --report file is an output planned with the others: never an input, never one of
    the image outputs, never an existing file without ``overwrite``; its folder writable."""
    taken = {_key(o.path): "is also an image output" for j in jobs for o in j.outputs}
    taken.update({_key(j.source.path): "is an input" for j in jobs if not j.error})
    key = _key(path)
    if key in taken:
        raise UsageError(f"--report {path}: {taken[key]}; choose another name")
    if _is_url(path):  # [storage] the bucket answers for writing; an existing object is kept
        from ..io.storage import check_bucket

        check_bucket(path, write=True)
        if path.exists() and not overwrite:
            raise UsageError(f"--report {path}: already exists; pass --overwrite to replace it")
        return
    if os.path.isdir(path):
        raise UsageError(f"--report {path}: is a directory")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"--report {path}: already exists; pass --overwrite to replace it")
    try:
        check_writable(path)
    except UsageError as exc:
        raise UsageError(f"--report {exc}") from None


def plan(sources, groups, *, out_dir=None, out_file=None, template=None, ext_for=None,
         overwrite=False, skip_existing=False) -> list[Job]:
    """Resolve every output path and refuse bad plans before any work.

    ``groups`` is a list of kernel tuples, one output per group (one group: the kernels in
    sequence; with --each: one group per kernel). ``ext_for(source)`` gives the output
    extension. Raises UsageError for clobbering, output == input, collisions, names leading
    out of the output folder, and folders that cannot be written.
    """
    def paths(s):
        for group in groups:
            if out_file is not None:
                yield group, _path(out_file)
                continue
            name = output_name(template, s, "+".join(k.name for k in group), ext_for(s))
            base, sub = (_path(out_dir), s.rel.parent) if out_dir is not None else (s.path.parent, Path())
            yield group, inside(base, sub, name, template)

    planned = [(s, list(paths(s))) for s in sources]
    written = {}  # output key → the input it is written from
    for s, outs in planned:
        for _, path in outs:
            written.setdefault(_key(path), _key(s.path))
    # A found file this very run writes from another input is an output, not an input (a re-run
    # with --name); named on the command line it stays an input and the plan is refused below.
    planned = [(s, outs) for s, outs in planned
               if not (s.found and written.get(_key(s.path), _key(s.path)) != _key(s.path))]
    inputs = {}
    for s, _ in planned:
        inputs.setdefault(_key(s.path), s.path)
    jobs, seen = [], {}
    for s, outs in planned:
        outputs = []
        for group, path in outs:
            key = _key(path)
            if key in inputs:
                raise UsageError(f"{path}: is an input; refusing to overwrite it (choose another -o or --name)")
            if key in seen:
                raise UsageError(f"{seen[key]} and {s.path} would both be written to {path}; use --name with {{parent}} or another -o")
            seen[key] = s.path
            skip = False
            if _exists(path):  # False, not an error, for a name too long: that input fails later
                if skip_existing:
                    skip = True
                elif not overwrite:
                    raise UsageError(f"{path}: already exists; pass --overwrite to replace it or --skip-existing to keep it")
            outputs.append(Output(path, group, skip))
        jobs.append(Job(s, outputs))
    first = {}  # a store's bucket was checked for writing by storage.check_output
    for o in (o for j in jobs for o in j.outputs if not _is_url(o.path)):
        first.setdefault(o.path.parent, o.path)
    for path in first.values():  # each folder once, named by an output the user will recognise
        check_writable(path, name=False)  # a name too long fails its input alone, when written
    return jobs


def _exists(path) -> bool:
    """An output is there already: an object in a store, or anything on disk (a dangling link too)."""
    return path.exists() if _is_url(path) else os.path.lexists(path)


def _key(path: Path) -> str:
    """One key per file on disk: resolved path (follows links), so a link to an input is an input."""
    if _is_url(path):  # [storage] an object has one name
        return str(path)
    return os.path.normcase(str(Path(path).resolve()))


def _is_url(path) -> bool:
    """[storage] ``scheme://…`` (an ObjectPath or text); decided without importing fsspec."""
    return "://" in str(path)


def _path(text):
    """[storage] A Path for local paths, an ObjectPath for URLs."""
    if _is_url(text):
        from ..io.storage import as_path

        return as_path(text)
    return Path(text)


# --------------------------------------------------------------------------- running


def run(jobs, process, *, workers: int = 1, report: Report, stop: threading.Event, on_done=None) -> None:
    """Run ``process(job)`` for every job on ``workers`` threads, recording outcomes.

    ``process`` returns "ok" or "skipped" or raises KernelcliError (a failed input).
    WriteError (the destination failed) stops the batch and is re-raised; ``stop`` being
    set (by a signal) makes workers finish the file at hand and raises Interrupted.
    """
    fatal: list[BaseException] = []
    interrupt_code = 130

    def one(job: Job):
        if stop.is_set() or fatal:
            return
        if job.error:
            report.record(job, "failed", job.error)
        else:
            try:
                status = process(job)
            except WriteError as exc:
                fatal.append(exc)
                stop.set()
                report.record(job, "failed", str(exc))
                return
            except Interrupted:
                return
            except KernelcliError as exc:
                report.record(job, "failed", str(exc))
                status = "failed"
            else:
                report.record(job, status)
        if on_done is not None:
            on_done(job)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="kernelcli")
    pending: set = set()
    try:
        for job in jobs:  # inside the try: a signal while jobs are still being handed out is handled too
            pending.add(pool.submit(one, job))
        while pending:  # short waits keep Ctrl-C responsive in the main thread
            done, pending = wait(pending, timeout=0.2)
            for f in done:
                f.result()
    except KeyboardInterrupt as exc:
        stop.set()
        interrupt_code = 143 if isinstance(exc, Terminated) else 130
        _wait_through_signals(pending)  # workers finish the file at hand; none starts a new one
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if fatal:
        raise fatal[0]
    if stop.is_set():
        raise Interrupted(interrupt_code)


def _wait_through_signals(pending) -> None:
    """Wait for the files in flight; a second Ctrl-C or SIGTERM does not cut one in half
    (its temporary file would be left): the run ends as soon as they are done."""
    while pending:
        try:
            _, pending = wait(pending, timeout=0.2)
        except KeyboardInterrupt:
            continue


class Prefetch:
    """Decodes the first inputs on one thread while torch is still being imported, so the
    second core is not idle during start-up; stops once torch is ready or 256 MiB of pixels
    wait. ``take(path)`` returns the decoded raster (or raises its error), else reads."""

    def __init__(self, jobs, read, loading, budget: int = 256 << 20):
        self._read, self._futures, self._lock = read, {}, threading.Lock()
        paths = [j.source.path for j in jobs if not j.error and not all(o.skip for o in j.outputs)]

        def run():
            used = 0
            for path in paths:
                if not loading.is_alive() or used > budget:
                    return
                future = Future()
                with self._lock:
                    self._futures[path] = future
                try:
                    raster = read(path)
                except Exception as exc:  # the job that takes it raises it (a MemoryError too): never left waiting
                    future.set_exception(exc)
                else:
                    used += raster.pixels.nbytes
                    future.set_result(raster)

        threading.Thread(target=run, daemon=True).start()

    def take(self, path):
        with self._lock:
            future = self._futures.pop(path, None)
        return future.result() if future is not None else self._read(path)


def process_job(job: Job, *, read, render, write, stop: threading.Event) -> str:
    """Read the input once and write each of its outputs; "skipped" when all are kept.

    ``render(raster, kernels, path) -> bytes``; ``stop`` is checked before the read and before
    each render, so an interrupt starts no new work, and a result rendered when it comes is
    still written, whole (the work is done: discarding it would only lose it).
    """
    todo = [o for o in job.outputs if not o.skip]
    if not todo:
        return "skipped"
    if stop.is_set():
        raise Interrupted()
    raster = read(job.source.path)
    for out in todo:
        if stop.is_set():
            raise Interrupted()
        write(out.path, render(raster, out.kernels, out.path))
    return "ok"
