"""The runner: a whole job from paths to written files, for the CLI and for Python users.

It plans (inputs → outputs, names, formats, overwrite/skip/refuse), reads, renders, writes
atomically, writes the report, handles SIGINT/SIGTERM, the worker and torch thread counts and
the progress bar, and returns a :class:`kernelcli.run.batch.Report`. It never imports click::

    from kernelcli import apply_paths, apply_file
    report = apply_paths(["photos/"], ["sharpen"], output="out/", recursive=True)
    apply_file("in.png", ["blur", "outline"], "edges.png")
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .batch import Terminated
from ..console import error, make_progress, say, warn
from ..errors import KernelcliError, UsageError, WriteError
from ..kernels.kernel import MAX_KERNEL_SIZE

QUIET, NORMAL, VERBOSE = 0, 1, 2  # how much a run says on stderr (errors are always said)


# --------------------------------------------------------------------------- settings and the kernel library


def app_dir() -> Path:
    """The per-user configuration folder (as click.get_app_dir("kernelcli"))."""
    if sys.platform.startswith("win"):
        return Path(os.environ.get("APPDATA") or Path.home()) / "kernelcli"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "kernelcli"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kernelcli"


def user_kernel_files(extra=()) -> list:
    """Library files after the shipped one: per-user file, $KERNELCLI_KERNELS, then ``extra``."""
    files = []
    user = app_dir() / "kernels.yaml"
    if user.is_file():
        files.append(user)
    env = os.environ.get("KERNELCLI_KERNELS", "")
    files += [Path(p) for p in env.split(os.pathsep) if p]
    files += [p if "://" in str(p) else Path(p) for p in extra]  # [storage] kernel files at URLs
    return files


def load_library(extra=(), max_kernel: int = MAX_KERNEL_SIZE):
    """The shipped kernels, the user's files and ``extra`` files."""
    from ..kernels.library import KernelLibrary

    return KernelLibrary.load(user_kernel_files(extra), max_kernel=max_kernel)


def resolve(kernels, library=None) -> list:
    """Names, inline specs or Kernel values → Kernels (``library`` default: the user's library)."""
    from ..kernels.kernel import Kernel

    if not all(isinstance(k, Kernel) for k in kernels):
        library = library or load_library()
    return [k if isinstance(k, Kernel) else library.resolve(k) for k in kernels]


def warn_overrides(specs, kernels) -> None:
    """Say once per run which kernel a name now means where a later library file replaced it
    (a kernel of that name, or an alias equal to it): the shipped 'sharpen' is not what runs."""
    for spec, kernel in dict(zip(map(str, specs), kernels)).items():
        if getattr(kernel, "overrides", None):
            warn(f"kernel {spec!r} is {kernel.name!r} from {kernel.source}, which replaces {kernel.overrides}")


@dataclass(frozen=True)
class Renderer:
    """One raster through one group of kernels into encoded bytes (pickled to Dask workers)."""

    kernels: tuple
    options: object = None  # kernelcli.compute.options.Options; None: the defaults
    quality: int = 95
    stats: bool = False
    limits: object = None  # kernelcli.io.images.Limits; None: the defaults
    background: tuple | None = None  # flatten transparency onto this colour for formats without alpha
    depth: int | None = None  # bits per channel of image outputs (8 or 16); None: the input's
    fmt: str | None = None  # the --format word: the format of every output (with a name of no known extension)

    def format_for(self, path) -> str:
        """The format an output gets: its name's, or the --format word's (images.format_for_path)."""
        from ..io.images import format_for_path

        return format_for_path(path, self.fmt)

    def _options(self, raster, fmt):
        """Raw floats out: arrays, and float images into a format that holds them (gray TIFF)."""
        from ..compute.options import Options

        raw = fmt in ("NPY", "CSV") or (raster.maxval is None and fmt == "TIFF" and raster.pixels.shape[0] == 1)
        return replace(self.options or Options(), raw=raw)

    def check_format(self, fmt, name) -> None:
        """Refuse a value map for an array output: .npy and .csv keep the raw result (scaled and
        biased: --scale and --bias apply), which no map fits into a range."""
        if fmt in ("NPY", "CSV") and self.options is not None and self.options.map is not None:
            raise UsageError(f"{name}: .{fmt.lower()} keeps the raw values; --map {self.options.map} fits results into "
                             "an image's range (write an image format, or leave out --map)")

    def check_memory(self, source, groups, fmt) -> None:
        """Refuse, from the input's header and before any work, a job over the memory budget."""
        from ..compute.budget import probe
        from ..compute.filters import check_memory

        raster = probe(source, self.limits)
        for group in groups if raster is not None else ():
            check_memory(raster, list(group), self._options(raster, fmt), name=str(source))

    def __call__(self, raster, group, fmt, name) -> bytes:
        from ..compute.filters import apply_kernels
        from ..io.images import encode

        self.check_format(fmt, name)
        options = self._options(raster, fmt)
        if raster.maxval is None and not options.raw and options.map is None:  # never clip floats unasked
            raise UsageError(f"{name}: the input holds float values and {fmt} holds 0–255: pass --map normalize "
                             "to stretch them (--map clip to clip), or write .npy (or a gray .tif) to keep them")
        result, step_stats = apply_kernels(raster, list(group), options)
        if self.stats:
            for k, st in zip(group, step_stats):
                if st is not None:
                    say(f"{name}: {k.name}: min {st.minimum:g}, max {st.maximum:g}, clipped {st.clipped:.2%}")
        return encode(result, fmt, quality=self.quality, name=str(name), background=self.background, depth=self.depth)


@dataclass(frozen=True)
class Batch:
    """How a batch finds its inputs, names and writes its outputs, and what it says."""

    output: str | None = None
    template: str | None = None  # --name
    each: bool = False
    recursive: bool = False
    include: tuple = ()
    exclude: tuple = ()
    files_from: str | None = None
    null: bool = False
    fmt: str | None = None  # a --format word
    overwrite: bool = False
    skip_existing: bool = False
    report_path: str | None = None
    jobs: int | None = None
    verbosity: int = NORMAL
    scheduler: str | None = None
    storage_options: tuple = ()


def _limits():
    from ..io.images import Limits

    return Limits()


# --------------------------------------------------------------------------- signals and threads


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def signals():
    """SIGTERM ends the run as Ctrl-C does (KeyboardInterrupt, as batch.Terminated: exit 143),
    through the code's own clean-up. Only on the main thread; the previous handler comes back."""
    import signal
    import threading

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interrupt_code(exc: BaseException) -> int:
    return 143 if isinstance(exc, Terminated) else 130


_torch_loading: list = []  # the one import thread of this process


def warm_torch():
    """Start importing torch on a thread, once per process; returns the thread (alive while the
    import runs). Where torch is loaded already (a resident server's worker), no thread starts."""
    import importlib
    import threading

    if not _torch_loading:
        thread = threading.Thread(target=importlib.import_module, args=("torch",), daemon=True)
        if "torch" not in sys.modules:
            thread.start()
        _torch_loading.append(thread)
    return _torch_loading[0]


@contextlib.contextmanager
def share_threads(workers: int):
    """Split the cores between files in flight and torch's own threads, for the run only: the
    caller's thread count comes back after it (a Python user's torch is left as it was)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_device(device) -> None:
    """An unknown or unavailable device is a usage error (exit 2), found before any file is looked
    at. auto and cpu are always there: for them torch is not waited for (it loads meanwhile)."""
    from ..compute.options import parse_device

    if parse_device(device or os.environ.get("KERNELCLI_DEVICE")) in (None, "auto", "cpu"):
        return
    from ..compute.convolve import resolve_device

    resolve_device(device)


# --------------------------------------------------------------------------- checks before any work


def format_named(fmt):
    """The format of a --format word (None stays None)."""
    from ..io.images import FORMATS

    return FORMATS[fmt.lower()] if fmt else None


def check_stdin(what: str) -> None:
    """stdin closed at start (``<&-``) is a usage error for anything that reads it."""
    from ..console import closed

    if closed("stdin"):
        raise UsageError(f"{what}: stdin is closed; pipe data in or name a file")


def check_input(path: str) -> None:
    """One input file, or - for stdin (refused when it is a terminal)."""
    if path == "-":
        check_stdin("no input")
        if sys.stdin.isatty():
            raise UsageError("no input: stdin is a terminal; pipe an image in or name a file")
        return
    from .batch import _kind, not_an_input

    kind = _kind(path)  # one classification for named inputs, folder scans and lists
    if kind != "file":
        raise UsageError(f"{path}: {not_an_input(kind)}")


def check_named_inputs(inputs, output=None) -> None:
    """Every path named as an input (not ``-``, not a URL) is a file or a folder, checked before any
    work: a missing name is a usage error, never a failure found halfway through a run. A missing
    last name that looks like an output (an image extension, no -o: ImageMagick's ``convert in.jpg
    out.jpg``) gets the hint ``did you mean -o NAME?``."""
    from .batch import _kind, not_an_input
    from ..io.images import FORMATS

    problems = []
    for path in inputs:
        kind = "file" if path == "-" or "://" in str(path) else _kind(Path(path))
        if kind not in ("file", "dir"):
            problems.append(f"{path}: {not_an_input(kind)}")
    if not problems:
        return
    last = str(inputs[-1])
    if (output is None and len(inputs) > 1 and problems[-1].startswith(f"{last}: ")
            and Path(last).suffix.lower()[1:] in FORMATS and _kind(Path(last)) == "missing"):
        import shlex

        problems[-1] += f"; did you mean -o {shlex.quote(last)}?"
    raise UsageError("; ".join(problems))


def _stdout_format_of(inputs) -> str | None:
    """The format stdout gets without --format from a single file input: an array stays an
    array (a .csv prints as CSV), an image stays binary. None when it is not known yet (stdin)."""
    from ..io.images import FORMATS

    if len(inputs) != 1 or inputs[0] == "-":
        return None
    return FORMATS.get(Path(inputs[0]).suffix.lower()[1:], "image")


def check_terminal(output: str, out_fmt: str | None) -> None:
    """Text (CSV) may print at a terminal; binary data is refused there (usage error)."""
    from ..io.images import TEXT_FORMATS

    if output == "-" and out_fmt is not None and out_fmt not in TEXT_FORMATS and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal; redirect stdout or use -o FILE")


def check_output(output: str, fmt, overwrite: bool, inputs) -> str | None:
    """Refuse, before any work, a terminal as stdout, an output that is one of ``inputs``,
    and an existing file without ``overwrite``. Returns the output's format (None for
    stdout without a format: the caller picks)."""
    from ..io.images import format_for_path

    if output == "-":
        from ..console import closed

        if closed("stdout"):
            raise UsageError("-o -: stdout is closed; redirect it to a file or use -o FILE")
        check_terminal(output, format_named(fmt) or _stdout_format_of(inputs))
        return format_named(fmt)
    from .batch import check_writable

    out_fmt = format_for_path(output, fmt)
    if os.path.exists(output):
        if any(p != "-" and os.path.exists(p) and os.path.samefile(p, output) for p in inputs):
            raise UsageError(f"{output}: is an input; refusing to overwrite it")
        if os.path.isdir(output):
            raise UsageError(f"{output}: is a directory")
        if not overwrite:
            raise UsageError(f"{output}: already exists", setting="overwrite")
    check_writable(Path(output))
    remove_stale_temps([Path(output).parent])
    return out_fmt


def remove_stale_temps(folders) -> None:
    """Temporary files of kernelcli's naming left in output folders by a killed run go."""
    from ..io.images import remove_stale_temps as remove

    for folder in dict.fromkeys(folders):
        for path in remove(folder):
            warn(f"{path}: removed a temporary file left by an interrupted kernelcli run")


def check_save(library, name, overwrite, path: Path) -> None:
    """A learned kernel may be saved as ``name`` into the library file ``path``."""
    from .batch import check_writable
    from ..kernels.kernel import NAME_RE

    if not NAME_RE.match(name):  # the option's value first, then the file
        raise UsageError(f"--save {name!r}: use lowercase words joined by hyphens, e.g. my-edge")
    if str(path) == "-":
        raise UsageError("--to -: a kernel library is a file; name one (stdout carries the learned kernel)")
    if path.is_dir():
        raise UsageError(f"--to {path}: is a directory")
    check_writable(Path(os.path.realpath(path)))
    remove_stale_temps([Path(os.path.realpath(path)).parent])
    if name in library and not overwrite:
        raise UsageError(f"a kernel named {name!r} exists already ({library.get(name).source})", setting="overwrite")


# --------------------------------------------------------------------------- one file or a stream


def read_stdin(limit: int = 1 << 30) -> bytes:
    """All of stdin, up to ``limit`` bytes (one more is read to tell "too much")."""
    from ..io.images import read_capped

    data = read_capped(sys.stdin.buffer, limit + 1)
    if len(data) > limit:
        from ..io.images import ImageError

        raise ImageError(f"stdin: more than {limit} bytes; refused")
    return data


def read_input(path: str, limits=None):
    """One raster from a file or - (stdin), its reader's notes said as warnings."""
    from ..io.images import read, route_warnings

    limits = limits or _limits()
    route_warnings()
    raster = read(path, read_stdin(limits.max_bytes) if path == "-" else None, limits)
    for note in raster.notes:
        warn(note)
    return raster


def emit(output: str, data: bytes, overwrite: bool, detail: str = "", verbosity: int = NORMAL) -> None:
    """Bytes to stdout (``-``) or atomically to a file, reported on stderr only when verbose
    (a single written file says nothing on success, like ImageMagick)."""
    from ..io.images import write_atomic

    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(output, data, overwrite=overwrite)
        if verbosity >= VERBOSE:
            say(f"wrote {output}{detail}")


def run_single(source, output, render, *, fmt=None, overwrite=False, suffix=None, limits=None,
               verbosity: int = NORMAL, depth: int | None = None) -> str:
    """Read one input (a file or - for stdin), ``render(raster, fmt, name) -> bytes``, write one
    output (a file, or - for stdout). Without ``output``, the result goes beside the input as
    ``{stem}-{suffix}{ext}`` (stdout for stdin). Every check comes before any work (``depth``:
    the bits per channel render will write). Returns the output."""
    from ..io.images import FORMATS, check_depth, extension_for

    check_input(source)
    if output is None:
        if source == "-":
            output = "-"
        else:
            stem, ext = os.path.splitext(source)
            output = f"{stem}-{suffix}{extension_for(format_named(fmt)) if fmt else ext}"
    out_fmt = check_output(output, fmt, overwrite, [source])
    check_depth(out_fmt, depth, str(output))  # known from the name or --format: before reading
    raster = read_input(source, limits or _limits())
    out_fmt = out_fmt or (raster.format if raster.format in FORMATS.values() else "PNG")
    check_terminal(output, out_fmt)
    check_depth(out_fmt, depth, str(output))  # stdout without --format: the input's format
    emit(output, render(raster, out_fmt, output), overwrite, verbosity=verbosity)
    return output


def transform_file(source, output, fn, *, suffix, fmt=None, overwrite=False, device=None, limits=None,
                   verbosity: int = NORMAL, depth: int | None = None) -> str:
    """A Raster → Raster function (a toolkit operation) on one file or stream: arrays out stay
    raw floats, arrays written as images are clipped to 0–255; images are written at ``depth``
    bits per channel (None: the input's). Returns the output."""
    from ..io.images import ARRAY_FORMATS, encode

    check_device(device)

    def render(raster, out_fmt, name):
        if out_fmt in ARRAY_FORMATS:
            raster = replace(raster, maxval=None)
        elif raster.maxval is None:
            raster = replace(raster, maxval=255.0)
        return encode(fn(raster), out_fmt, name=str(name), depth=depth)

    return run_single(source, output, render, fmt=fmt, overwrite=overwrite, suffix=suffix, limits=limits,
                      verbosity=verbosity, depth=depth)


def picture_output(output, fmt, overwrite, inputs=()) -> str:
    """Check where a picture goes before any work; return its Pillow format name."""
    from ..io.images import IMAGE_FORMATS

    out_fmt = check_output(output, fmt, overwrite, inputs) or "PNG"
    check_terminal(output, out_fmt)
    if out_fmt not in IMAGE_FORMATS:
        raise UsageError(f"{output}: a picture needs an image format such as .png")
    return out_fmt


def encode_pil(img, fmt) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def write_picture(img, output, out_fmt, overwrite, detail: str = "", verbosity: int = NORMAL) -> None:
    """A PIL picture (a sheet, a kernel heatmap) to a checked output."""
    emit(output, encode_pil(img, out_fmt), overwrite, detail, verbosity)


# --------------------------------------------------------------------------- a batch: files and folders


def _check_folder_output(output, dir_mode, inputs, listed, each) -> None:
    """-o names a folder when there are several outputs; a name with a file format's extension
    (out.png) is then a mistake, never a folder to create."""
    from ..io import storage
    from ..io.images import FORMATS

    suffix = Path(str(output)).suffix.lower()[1:] if output else ""
    if not dir_mode or suffix not in FORMATS or str(output).endswith(("/", os.sep)) or storage.is_dir(output):
        return
    why = ("--each writes one output per kernel" if each
           else "a folder input gives several outputs" if any(storage.is_dir(p) for p in inputs)
           else f"{len(inputs) + len(listed)} inputs give several outputs")
    raise UsageError(f"{output}: -o names one .{suffix} file but {why}; give -o a folder (e.g. out/) "
                     "or a single input")


def _check_request(inputs, b: Batch) -> None:
    from .batch import check_template

    if b.overwrite and b.skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other; choose one")
    if b.template is not None:
        check_template(b.template)
    if b.files_from == "-" and "-" in inputs:
        raise UsageError("stdin cannot hold both the image and the --files-from list")
    if b.files_from == "-":
        check_stdin("--files-from -")
        if sys.stdin.isatty():
            raise UsageError("--files-from -: stdin is a terminal; pipe a list of paths in")
    if not inputs and b.files_from is None:
        raise UsageError("no input given; name files or folders, - for stdin, or --files-from")


def _locate(inputs, b: Batch):
    """[storage] URLs and --storage-option: paths become store locations."""
    if not (b.storage_options or any("://" in str(p) for p in (*inputs, b.output, b.files_from, b.report_path) if p)):
        return inputs, b
    from ..io.storage import StorageOptions, locate

    where = StorageOptions.parse(b.storage_options)
    inputs, output = tuple(locate(p, where) for p in inputs), b.output and locate(b.output, where)
    report_path = locate(b.report_path, where) if b.report_path and b.report_path != "-" else b.report_path
    files_from = locate(b.files_from, where) if b.files_from and b.files_from != "-" else b.files_from
    if ("-" in inputs or output == "-") and any("://" in str(p) for p in (*inputs, output)):
        raise UsageError("- (stdin/stdout) works with local files only; write to a file or s3:// instead")
    return inputs, replace(b, output=output, report_path=report_path, files_from=files_from)


def apply_paths(inputs, kernels, *, batch: Batch = Batch(), options=None, quality: int = 95, stats: bool = False,
                limits=None, background=None, library=None, depth: int | None = None):
    """Filter files and folders (or - for stdin/stdout) with ``kernels`` (names, inline specs or
    Kernel values) in sequence, or each alone with ``batch.each``; returns the batch.Report, whose
    ``exit_code`` is the command's (0 ok, 1 a single input or the destination failed, 3 some inputs
    failed, 130/143 interrupted). ``depth`` (8 or 16) sets the bits per channel of image outputs.
    Problems found before any work raise UsageError."""
    torch_loading = warm_torch()  # ~1 s, overlapped with planning and the first decodes
    _check_request(inputs, batch)
    from ..io.images import route_warnings

    route_warnings()
    library = library or load_library()  # also tells planning which names are kernelcli's own outputs
    resolved = resolve(kernels, library)
    warn_overrides(kernels, resolved)
    renderer = Renderer(tuple(resolved), options, quality, stats, limits or _limits(), background, depth, batch.fmt)
    if not batch.scheduler:  # [cluster] workers check their own devices
        check_device(renderer.options.device if renderer.options is not None else None)
    inputs, batch = _locate(tuple(os.fspath(p) for p in inputs), batch)
    check_named_inputs(inputs, batch.output)
    if "-" in inputs or batch.output == "-":
        return _stream(inputs, renderer, batch)
    with signals():
        return _run_batch(torch_loading, renderer, inputs, batch, library)


def _stream(inputs, renderer: Renderer, b: Batch):
    from .batch import Report

    if b.report_path:
        raise UsageError("--report is for files and folders; with - (stdin/stdout) there is one image and its "
                         "exit code")
    if len(inputs) != 1 or b.files_from is not None or b.each and len(renderer.kernels) > 1:
        raise UsageError("- (stdin/stdout) takes exactly one input and one output")
    run_single(inputs[0], b.output or "-", lambda raster, fmt, name: renderer(raster, renderer.kernels, fmt, name),
               fmt=b.fmt, overwrite=b.overwrite, limits=renderer.limits, verbosity=b.verbosity, depth=renderer.depth)
    return Report(total=1, processed=1)


def apply_file(source, kernels, output=None, *, fmt=None, overwrite: bool = False, options=None, quality: int = 95,
               limits=None, library=None, verbosity: int = QUIET):
    """One file (or - for stdin) through ``kernels`` to ``output`` (a file, or - for stdout;
    default: ``{stem}-{kernel}{ext}`` beside the input), as ``kernelcli apply``. Returns the Report."""
    return apply_paths([str(source)], kernels, options=options, quality=quality, limits=limits, library=library,
                       batch=Batch(output=None if output is None else str(output), fmt=fmt, overwrite=overwrite,
                                   verbosity=verbosity))


@dataclass
class _Plan:
    jobs: list
    groups: list
    single: bool
    output: str | None


def _plan(inputs, renderer: Renderer, b: Batch, library=None) -> _Plan:
    """Inputs → jobs with their outputs; every refusal comes here, before any work."""
    from . import batch
    from ..io import storage
    from ..io.images import extension_for, format_for_path, read_capped

    listed = []
    if b.files_from is not None:
        try:
            data = (read_capped(sys.stdin.buffer, batch.MAX_LIST_BYTES + 1) if b.files_from == "-"
                    else storage.read_list_bytes(b.files_from, batch.MAX_LIST_BYTES))
        except OSError as exc:
            raise UsageError(f"--files-from {b.files_from}: cannot read: {exc.strerror or exc}") from None
        listed = batch.read_list(data, b.null, str(b.files_from))
    many = b.each and len(renderer.kernels) > 1
    output = b.output
    dir_mode = bool(output) and (
        str(output).endswith(("/", os.sep)) or storage.is_dir(output) or len(inputs) + len(listed) > 1
        or any(storage.is_dir(p) for p in inputs) or many)
    _check_folder_output(output, dir_mode, inputs, listed, many)
    if output:  # [storage] a store's endpoint, credentials and bucket answer before any work
        output = storage.check_output(output, listing=dir_mode)
    sources, bad = batch.find_inputs(inputs, recursive=b.recursive, include=b.include, exclude=b.exclude,
                                     listed=listed, avoid=output if dir_mode else None, kernels=library,
                                     on_skip=lambda p: warn(f"{p}: not a regular file (a FIFO, device or socket); skipped"))
    if not sources and not bad:
        where = ", ".join(map(str, inputs)) or b.files_from
        raise UsageError(f"no input images found in {where}" + ("" if b.recursive else " (use --recursive for sub-folders)"))
    single = len(sources) + len(bad) == 1 and not any(storage.is_dir(p) for p in inputs)
    if single and bad:
        raise UsageError(bad[0].error)
    groups = [(k,) for k in renderer.kernels] if b.each else [tuple(renderer.kernels)]
    out_file = output if output and not dir_mode else None
    if out_file:
        if len(groups) > 1:
            raise UsageError("--each writes several outputs; give -o a folder (ending in /)")
        format_for_path(out_file, b.fmt)
    template = b.template or ("{stem}{ext}" if dir_mode and not b.each else "{stem}-{kernel}{ext}")
    jobs = batch.plan(sources, groups, out_dir=output if dir_mode else None, out_file=out_file, template=template,
                      ext_for=lambda s: extension_for(format_named(b.fmt)) if b.fmt else s.path.suffix,
                      overwrite=b.overwrite, skip_existing=b.skip_existing) + bad
    return _Plan(jobs, groups, single, output)


def _check_plan(p: _Plan, b: Batch, renderer: Renderer) -> None:
    from . import batch
    from ..io.images import check_depth

    for j in p.jobs:  # output formats are known from the names: check them before any work
        for o in j.outputs:
            out_fmt = renderer.format_for(o.path)
            check_depth(out_fmt, renderer.depth, str(o.path))
            renderer.check_format(out_fmt, o.path)
    if b.report_path and b.report_path != "-":
        batch.check_report(batch._path(b.report_path), p.jobs, overwrite=b.overwrite)
    remove_stale_temps(o.path.parent for j in p.jobs for o in j.outputs
                       if not batch._is_url(o.path) and o.path.parent.is_dir())
    stored = [o.path for j in p.jobs for o in j.outputs if batch._is_url(o.path)]  # [storage] a killed run's
    if b.report_path and batch._is_url(b.report_path):                           # incomplete uploads
        stored.append(batch._path(b.report_path))
    if stored:
        from ..io.storage import abort_stale_uploads

        for url in abort_stale_uploads(stored):
            warn(f"{url}: aborted an incomplete upload left by an interrupted kernelcli run")


def _run_batch(torch_loading, renderer: Renderer, inputs, b: Batch, library=None):
    import threading

    from . import batch

    p = _plan(inputs, renderer, b, library)
    _check_plan(p, b, renderer)
    process = None
    if not b.scheduler:  # [cluster] workers read and check the device and the memory budget themselves
        process = _local_process(p, renderer, b, torch_loading)
    report = batch.Report(total=len(p.jobs), on_fail=lambda j, message: error(message))
    if b.report_path == "-":
        report.stream = sys.stdout
    progress = make_progress(len(p.jobs), b.verbosity == QUIET or p.single)  # no bar for one file

    def on_done(j):
        if progress is not None:
            progress.advance(1)
        if b.verbosity >= VERBOSE and not p.single:  # one file says "wrote" at the end
            say(f"{j.source.path} -> {', '.join(str(o.path) for o in j.outputs) or '-'}")

    try:
        _execute(p, renderer, b, process, report, threading.Event(), on_done)
    finally:
        if progress is not None:
            progress.close()
    _write_report(report, b)
    _summarise(report, p, b)
    return report


def _local_process(p: _Plan, renderer: Renderer, b: Batch, torch_loading):
    """The per-job function of a local run: prefetched reads, the renderer, atomic writes."""
    from . import batch
    from ..io import storage
    from ..compute.budget import MEMORY_ERRORS, job_failure

    if p.single and p.jobs[0].outputs and not batch._is_url(p.jobs[0].source.path):  # from the header
        renderer.check_memory(p.jobs[0].source.path, p.groups, renderer.format_for(p.jobs[0].outputs[0].path))

    def read_warned(path):
        raster = storage.read(path, renderer.limits)
        for note in raster.notes:
            warn(note)
        return raster

    prefetch = batch.Prefetch(p.jobs, read_warned, torch_loading)

    def process(j, stop):
        try:
            return batch.process_job(
                j, read=prefetch.take, stop=stop,
                render=lambda raster, group, path: renderer(raster, group, renderer.format_for(path), path),
                write=lambda path, data: storage.write(path, data, overwrite=b.overwrite))
        except MEMORY_ERRORS as exc:  # over the budget, or an allocation failed: this input fails, named
            failure = job_failure(j.source.path, exc)
            if failure is None:
                raise
            raise failure from None

    return process


def _execute(p: _Plan, renderer: Renderer, b: Batch, process, report, stop, on_done) -> None:
    """Run the jobs locally on threads or on Dask; interruption and a failed destination are
    recorded in ``report`` (its ``interrupted`` and ``fatal``)."""
    from . import batch

    try:
        if b.scheduler:  # [cluster]
            from . import cluster

            cluster.run(p.jobs, renderer, scheduler=b.scheduler, report=report, stop=stop, limits=renderer.limits,
                        overwrite=b.overwrite, device=renderer.options.device if renderer.options else None,
                        on_done=on_done, on_note=warn)
        else:
            workers = b.jobs or os.cpu_count() or 1
            with share_threads(workers):
                batch.run(p.jobs, lambda j: process(j, stop), workers=workers, report=report, stop=stop,
                          on_done=on_done)
    except batch.Interrupted as exc:
        report.interrupted = exc.exit_code
    except WriteError as exc:
        report.fatal = str(exc)


def _write_report(report, b: Batch) -> None:
    """The --report file, written whole, also after an interrupt or a failure."""
    from . import batch
    from ..io import storage

    if not b.report_path or b.report_path == "-":
        return
    try:
        storage.write(batch._path(b.report_path), report.jsonl(), overwrite=b.overwrite)
    except KernelcliError as exc:
        error(f"--report {exc}")
        if report.fatal is None and report.interrupted is None:
            report.fatal = str(exc)


def _summarise(report, p: _Plan, b: Batch) -> None:
    """The lines a run ends with on stderr."""
    loud = b.verbosity >= NORMAL
    if report.fatal is not None:
        say(f"stopped: {report.summary()}")
    elif p.single and report.interrupted is None:  # one file: silent on success unless verbose
        if b.verbosity >= VERBOSE and report.processed:
            say(f"wrote {', '.join(str(o.path) for o in p.jobs[0].outputs)}")
        elif b.verbosity >= VERBOSE and report.skipped:
            say(f"skipped {p.jobs[0].source.path}: output exists")
    elif loud or report.failed or report.interrupted:
        say(report.summary() + (" (interrupted)" if report.interrupted else ""))
        for path, _ in report.failed:
            say(f"  failed: {path}")


# --------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class Sheet:
    """How a contact sheet is laid out (kernelcli.teach.grid)."""

    transpose: bool = False
    cols: int | None = None
    labels: bool = True
    show_kernels: bool = False
    long_side: int | None = 256  # None: full size
    gap: int = 8
    background: str = "white"


def make_grid(inputs, kernels, output, *, sheet: Sheet = Sheet(), fmt=None, overwrite=False, options=None,
              limits=None, verbosity: int = NORMAL):
    """A labelled contact sheet: each input, then the same image through each kernel; written to
    ``output`` (a file or -). Returns the PIL image."""
    from ..compute.filters import apply_each
    from ..teach.grid import Cell, arrange, compose, fit, parse_color
    from ..io.images import read, route_warnings
    from ..compute.options import Options

    options, limits = options or Options(), limits or _limits()
    if list(inputs).count("-") > 1:
        raise UsageError("stdin (-) can be read once")
    colour = parse_color(sheet.background)
    route_warnings()
    check_device(options.device)
    for path in inputs:  # options, then inputs, then the output
        check_input(path)
    out_fmt = picture_output(output, fmt, overwrite, inputs)
    rows = []
    for path in inputs:
        raster = fit(read(path, read_stdin(limits.max_bytes) if path == "-" else None, limits), sheet.long_side)
        row = [Cell(Path(path).name if path != "-" else "stdin", raster)]
        row += [Cell(k.name, result, k) for k, (result, _) in zip(kernels, apply_each(raster, kernels, options))]
        rows.append(row)
    img = compose(arrange(rows, transpose=sheet.transpose, cols=sheet.cols), labels=sheet.labels,
                  show_kernels=sheet.show_kernels, gap=sheet.gap, background=colour, fmt=out_fmt,
                  max_memory=options.max_memory)
    write_picture(img, output, out_fmt, overwrite, f" ({img.width}x{img.height})", verbosity)
    return img


def kernel_picture(kernel, output, *, fmt=None, overwrite=False, verbosity: int = NORMAL) -> None:
    """Draw ``kernel`` as a heatmap picture into ``output`` (a file or -)."""
    from ..teach.grid import kernel_picture as draw

    out_fmt = picture_output(output, fmt, overwrite)
    write_picture(draw(kernel, cell_px=64), output, out_fmt, overwrite, verbosity=verbosity)
