"""The command line: parse options, call the library, report. No image logic here.

Exit codes: 0 ok · 1 runtime failure · 2 usage error · 3 some inputs of a batch failed · 130 interrupted.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import click

from .version import __version__
from .console import error, make_progress, say, warn
from .errors import KernelcliError, UsageError, WriteError
from .kernel import MAX_KERNEL_SIZE

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns kernelcli's own errors into one-line messages and exit codes, in one place."""

    def invoke(self, ctx):
        import signal
        import threading

        # SIGTERM ends every command as Ctrl-C does: through the code's own clean-up
        # (temporary files removed, a batch's summary printed), with exit 143.
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
        try:
            return super().invoke(ctx)
        except KernelcliError as exc:
            error(message(exc))
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            _silence_stdout()
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside a batch (a batch says more)
            error("interrupted")
            ctx.exit(_interrupt_code(exc))
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _interrupt_code(exc: BaseException) -> int:
    from .batch import Terminated

    return 143 if isinstance(exc, Terminated) else 130


def _raise_terminated(signum, frame):
    from .batch import Terminated

    raise Terminated()


# The flag that changes a library setting named by an error (KernelcliError.setting), as the
# end of the message; library messages describe the problem and never name a flag.
SETTING_FLAGS = {
    "max_kernel": " (--max-kernel raises it)",
    "overwrite": "; pass --overwrite to replace it",
}


def message(exc: KernelcliError) -> str:
    """What the user reads for a library error: its text and the flag that resolves it."""
    return str(exc) + SETTING_FLAGS.get(exc.setting, "")


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kernelcli")
@click.option("--no-server", is_flag=True, expose_value=False,
              help="Run in this process, not through the resident server (also: KERNELCLI_SERVER=off).")
def main():
    """Filter images with named convolution kernels, on the CPU or a GPU.

    \b
    Examples:
      kernelcli kernels list
      kernelcli kernels show sobel-right
      kernelcli apply -k sharpen photo.jpg              # writes photo-sharpen.jpg
      kernelcli apply -k blur -k outline in.png -o out.png
      kernelcli apply -k blur photos/ -o out/ --recursive
      cat in.png | kernelcli apply -k emboss - -o - > out.png
      kernelcli grid -k sobel-left -k sobel-right -k sharpen in.jpg -o grid.png
      kernelcli explain --size 32x32 -s sharpen -s "pool 2"

    Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error,
    3 some inputs of a batch failed, 130 interrupted (143 on SIGTERM).
    """


# --------------------------------------------------------------------------- the kernel library


def kernel_files_option(f):
    """--kernels FILE... and --max-kernel N: the command gets ``kernel_files`` and ``max_kernel``."""
    f = click.option("--max-kernel", "max_kernel", default=MAX_KERNEL_SIZE, show_default=True, type=click.IntRange(1, 1023),
                     metavar="N", help="Largest kernel side accepted from files, the command line and generators.")(f)
    return click.option(
        "--kernels",
        "kernel_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Extra kernel library (YAML); repeatable. Also read: $KERNELCLI_KERNELS and "
        f"{click.get_app_dir('kernelcli')}/kernels.yaml.",
    )(f)


def user_kernel_files(extra=()) -> list[Path]:
    """Library files after the shipped one: per-user file, $KERNELCLI_KERNELS, --kernels."""
    files = []
    user = Path(click.get_app_dir("kernelcli")) / "kernels.yaml"
    if user.is_file():
        files.append(user)
    env = os.environ.get("KERNELCLI_KERNELS", "")
    files += [Path(p) for p in env.split(os.pathsep) if p]
    files += [p if "://" in p else Path(p) for p in extra]  # [storage] --kernels URL
    return files


def load_library(extra=(), max_kernel: int = MAX_KERNEL_SIZE):
    from .kernels import KernelLibrary

    return KernelLibrary.load(user_kernel_files(extra), max_kernel=max_kernel)


def complete_kernels(ctx, param, incomplete):
    """Shell completion: kernel names and aliases of the library, with the user's files
    (and --kernels given before on the line). A broken library file completes nothing."""
    from click.shell_completion import CompletionItem

    try:
        library = load_library(ctx.params.get("kernel_files") or ())
    except KernelcliError:
        return []
    return [CompletionItem(name, help=k.description) for k in library for name in (k.name, *k.aliases)
            if name.startswith(incomplete)]


def complete_borders(ctx, param, incomplete):
    """Shell completion: the --border modes (constant takes a value: constant:V)."""
    from .options import BORDERS

    return [b + (":" if b == "constant" else "") for b in BORDERS if b.startswith(incomplete)]


@main.group(context_settings=CONTEXT)
def kernels():
    """List and inspect the kernel library."""


@kernels.command("list", context_settings=CONTEXT)
@kernel_files_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (name, description, matrix, …).")
def kernels_list(kernel_files, max_kernel, as_json):
    """List the available kernels.

    A table on a terminal; one tab-separated line per kernel (name, size, description)
    when piped. Besides these names, kernels can be generated wherever a name is taken:

    \b
      gaussian:SIGMA[,SIZE]  box:N  motion:LENGTH,ANGLE  log:SIGMA[,SIZE]
      dog:SIGMA1,SIGMA2[,SIZE]  unsharp:SIGMA,AMOUNT[,SIZE]  NAME@ANGLE (turned)
    """
    from .analysis import describe

    lib = load_library(kernel_files, max_kernel)
    if as_json:
        click.echo(json.dumps([describe(k) for k in lib], indent=2))
    elif sys.stdout.isatty():
        from rich.table import Table

        from .console import stdout_console

        table = Table("name", "size", "sum", "description", box=None, header_style="bold")
        for k in lib:
            total = f"{sum(sum(r) for r in k.matrix) * k.scale / k.divisor:g}" if k.kind == "plain" else k.kind
            table.add_row(k.name, "x".join(map(str, k.shape)), total, k.description)
        console = stdout_console()
        console.print(table)
        from .generate import GENERATORS, ROTATION_HELP

        console.print("\n[bold]generated[/] (usable wherever a name is):")
        for line in [*GENERATORS.values(), ROTATION_HELP]:
            console.print(f"  {line}")
    else:
        for k in lib:
            click.echo(f"{k.name}\t{'x'.join(map(str, k.shape))}\t{k.description}")


@kernels.command("show", context_settings=CONTEXT)
@click.argument("name", shell_complete=complete_kernels)
@kernel_files_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the effective float weights.")
@click.option("--image", "image_path", metavar="FILE", help="Also draw the kernel as a heatmap picture (- for stdout).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --image file.")
def kernels_show(name, kernel_files, max_kernel, as_json, image_path, overwrite):
    """Show one kernel: its weights coloured by sign, sum, separability, origin.

    NAME is a kernel name or an inline matrix such as "1 2 1; 2 4 2; 1 2 1".
    With --image, draw it: a square per weight, red above zero, blue below, value inside.
    """
    from .analysis import describe

    kernel = load_library(kernel_files, max_kernel).resolve(name)
    info = describe(kernel)
    if image_path:
        from .grid import kernel_picture

        fmt = _sheet_output(image_path, None, overwrite)
        _emit(image_path, _encode_pil(kernel_picture(kernel, cell_px=64), fmt), overwrite)
        if image_path == "-":
            return
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from .console import print_kernel

    print_kernel(info)


# --------------------------------------------------------------------------- apply


max_memory_option = click.option(
    "--max-memory", metavar="SIZE", help="Refuse jobs estimated to need more memory (4G, 512M)  "
    "[default: half of the available memory].")


def geometry_options(f):
    for option in reversed(
        [
            click.option("--border", default="replicate", show_default=True, metavar="MODE",
                         shell_complete=complete_borders,
                         help="replicate | reflect | symmetric | circular | zeros | constant:V."),
            click.option("--padding", default="same", show_default=True, metavar="same|valid|N",
                         help="same keeps the size; valid adds none; N pads N pixels a side."),
            click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1)),
            click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1)),
            click.option("--convolve", is_flag=True, help="Flip kernels (true convolution); default is correlation."),
            click.option("--color", "color", default="channels", show_default=True,
                         type=click.Choice(["channels", "gray", "luma", "sum"]),
                         help="Filter each channel; convert to gray; luminance only; or sum channels."),
            click.option("--map", "map_mode", type=click.Choice(["clip", "abs", "offset", "normalize"]),
                         help="Fit results into the output range  [default: the kernel's, else clip]."),
            click.option("--scale", default=1.0, show_default=True, type=float, help="Multiply results before mapping."),
            click.option("--bias", metavar="B", help="Add B of full scale before mapping: 0.5 or 50%."),
            click.option("--device", metavar="DEV", envvar="KERNELCLI_DEVICE",
                         help="auto | cpu | cuda | cuda:N | mps  [default: auto; env KERNELCLI_DEVICE]."),
            max_memory_option,
        ]
    ):
        f = option(f)
    return f


def build_options(border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device, raw, stats=True,
                  max_memory=None):
    from .budget import parse_size
    from .options import Geometry, Options, parse_bias, parse_border, parse_padding

    mode, value = parse_border(border)
    geo = Geometry(mode, value, parse_padding(padding), stride, dilation)
    return Options(
        geometry=geo, convolve=convolve, color=color, map=map_mode, scale=scale,
        bias=None if bias is None else parse_bias(bias), raw=raw, device=device, stats=stats,
        max_memory=None if max_memory is None else parse_size(max_memory),
    )


def input_limit_options(f):
    for option in reversed([
        click.option("--max-pixels", default=100_000_000, show_default=True, type=click.IntRange(min=1),
                     help="Refuse images with more pixels (checked from the header, before decoding)."),
        click.option("--allow-truncated", is_flag=True, help="Accept cut-off image files, with a warning."),
    ]):
        f = option(f)
    return f


def _limits(max_pixels=100_000_000, allow_truncated=False):
    from .images import Limits

    return Limits(max_pixels=max_pixels, allow_truncated=allow_truncated)


class FormatChoice(click.Choice):
    """The --format words of the one format table (kernelcli.images.FORMATS); ``images_only``
    leaves out the arrays. Looked up when first needed, so that importing the CLI stays light."""

    def __init__(self, images_only: bool = False):
        self.images_only = images_only
        super().__init__((), case_sensitive=False)

    @property
    def choices(self):
        from .images import ARRAY_FORMATS, FORMATS

        return tuple(e for e, f in FORMATS.items() if not (self.images_only and f in ARRAY_FORMATS))

    @choices.setter
    def choices(self, value):
        pass


def _format_named(fmt):
    """The format of a --format word (None stays None)."""
    from .images import FORMATS

    return FORMATS[fmt.lower()] if fmt else None


EXIT_CODES_BATCH = (
    "Exit codes: 0 all done; 1 runtime failure (a single input failed, or the destination "
    "failed); 2 usage or configuration error, before any work; 3 the batch finished but some "
    "inputs failed; 130 interrupted (143 on SIGTERM)."
)


@main.command(context_settings=CONTEXT, epilog=EXIT_CODES_BATCH)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, required=True, metavar="KERNEL",
              shell_complete=complete_kernels,
              help='Kernel name or inline matrix ("0,-1,0; -1,5,-1; 0,-1,0"); repeat to chain.')
@click.argument("inputs", nargs=-1, metavar="INPUT...", type=click.Path(allow_dash=True))
@click.option("-o", "--output", metavar="PATH", help="Output file, folder (several inputs, a folder input, "
              "or a name ending in /), or - for stdout  [default: beside each input; stdout when INPUT is -].")
@click.option("--name", "template", metavar="TEMPLATE", help="Output file name from {stem} {ext} {kernel} "
              "{parent}  [default: {stem}-{kernel}{ext} beside inputs, {stem}{ext} under -o DIR].")
@click.option("--each", is_flag=True, help="One output per -k (each kernel alone) instead of a chain.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of folder inputs.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (name or relative path).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (name or relative path).")
@click.option("--files-from", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read input paths from FILE (- for stdin), one per line.")
@click.option("-0", "--null", is_flag=True, help="--files-from list is NUL-separated (find -print0).")
@click.option("--format", "fmt", type=FormatChoice(), metavar="EXT",
              help="Output format (converts on the way): any extension -o takes (png, jpg, gif, tif, npy, csv, …).")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG/WebP quality.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (never an input).")
@click.option("--skip-existing", is_flag=True, help="Keep existing outputs and skip their inputs (resume a run).")
@click.option("--report", "report_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write one JSON line per input (input, outputs, status, error) to FILE, or - for stdout. "
              "An output like the images: refused if it exists (without --overwrite) or is an input.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Files worked on at once  [default: CPU cores].")
@click.option("--stats", is_flag=True, help="Print each step's value range and share clipped to stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print a line per file.")
@click.option("--background", "flatten_on", metavar="COLOR",
              help="Flatten transparency onto this colour for formats without alpha (JPEG, BMP, PPM).")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",  # [storage]
              help="Option for s3:// or gs:// (e.g. endpoint_url=http://host:8333, anon=true); repeatable.")
@click.option("--scheduler", envvar="KERNELCLI_SCHEDULER", metavar="ADDRESS|local|local:N",  # [cluster]
              help="Run on Dask: a scheduler address, or local[:N] for a local cluster  [env KERNELCLI_SCHEDULER].")
@input_limit_options
@geometry_options
@kernel_files_option
def apply(kernel_specs, inputs, output, template, each, recursive, include, exclude, files_from, null, fmt,
          quality, overwrite, skip_existing, report_path, jobs, stats, quiet, verbose, flatten_on, storage_options,
          scheduler, max_pixels, allow_truncated, kernel_files, max_kernel, **geo):
    """Filter images (files, folders, .npy/.csv arrays, or - for stdin) with kernels.

    \b
    Examples:
      kernelcli apply -k sharpen photo.jpg                 # → photo-sharpen.jpg
      kernelcli apply -k blur -k outline photo.jpg -o edges.png
      kernelcli apply -k blur photos/ -o out/ --recursive --jobs 2
      find . -name '*.png' -print0 | kernelcli apply -k emboss --files-from - -0 -o out/
      kernelcli apply -k sobel-left -k sobel-right --each photo.jpg -o edges/
      kernelcli apply -k blur s3://bucket/photos/ -o s3://bucket/out/ -r --scheduler local:2
      cat in.png | kernelcli apply -k emboss - -o - | kernelcli apply -k sharpen - -o - > out.png

    Kernels apply as correlation (weights as written, like torch and OpenCV); --convolve
    flips them. Images keep their bit depth (8 or 16); .npy/.csv outputs hold the raw float
    result. With several -k, each step is mapped to the output depth before the next.
    """
    from .batch import check_template

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other; choose one")
    if template is not None:
        check_template(template)
    if files_from == "-" and "-" in inputs:
        raise UsageError("stdin cannot hold both the image and the --files-from list")
    if files_from == "-":
        _check_stdin("--files-from -")
    if files_from == "-" and sys.stdin.isatty():
        raise UsageError("--files-from -: stdin is a terminal; pipe a list of paths in")
    if not inputs and files_from is None:
        raise UsageError("no input given; name files or folders, - for stdin, or --files-from")
    torch_loading = _warm_torch()  # ~1 s, overlapped with planning and the first decodes
    _route_warnings()
    library = load_library(kernel_files, max_kernel)
    kernels_ = [library.resolve(spec) for spec in kernel_specs]
    options = build_options(raw=False, stats=stats, **geo)
    from .grid import parse_color

    job = _Render(kernels_, options, quality, stats, _limits(max_pixels, allow_truncated),
                  parse_color(flatten_on) if flatten_on else None)
    if storage_options or any("://" in str(p) for p in (*inputs, output, files_from, report_path) if p):  # [storage]
        from .storage import StorageOptions, locate

        where = StorageOptions.parse(storage_options)
        inputs, output = tuple(locate(p, where) for p in inputs), output and locate(output, where)
        if report_path and report_path != "-":
            report_path = locate(report_path, where)
        if ("-" in inputs or output == "-") and any("://" in str(p) for p in (*inputs, output)):
            raise UsageError("- (stdin/stdout) works with local files only; write to a file or s3:// instead")
    if "-" in inputs or output == "-":
        if report_path:
            raise UsageError("--report is for files and folders; with - (stdin/stdout) there is one image and its "
                             "exit code")
        _check_device(options)
        return _apply_stream(job, inputs, output, fmt, files_from, each, overwrite)
    _apply_batch(torch_loading, job, inputs, output, template, each, recursive, include, exclude, files_from, null, fmt,
                 overwrite, skip_existing, report_path, jobs, quiet, verbose, scheduler, library)


class _Render:
    """One raster through one group of kernels into encoded bytes, with --stats lines."""

    def __init__(self, kernels_, options, quality, stats, limits, background=None):
        self.kernels, self.options, self.quality, self.stats = kernels_, options, quality, stats
        self.limits, self.background = limits, background

    def _options(self, raster, fmt):
        """Raw floats out: arrays, and float images into a format that holds them (gray TIFF)."""
        from dataclasses import replace

        raw = fmt in ("NPY", "CSV") or (raster.maxval is None and fmt == "TIFF" and raster.pixels.shape[0] == 1)
        return replace(self.options, raw=raw)

    def check_memory(self, source, groups, fmt) -> None:
        """Refuse, from the input's header and before any work, a job over --max-memory."""
        from .budget import probe
        from .filters import check_memory

        raster = probe(source)
        for group in groups if raster is not None else ():
            check_memory(raster, list(group), self._options(raster, fmt), name=str(source))

    def __call__(self, raster, group, fmt, name) -> bytes:
        from .filters import apply_kernels
        from .images import encode

        options = self._options(raster, fmt)
        if raster.maxval is None and not options.raw and self.options.map is None:  # never clip floats unasked
            raise UsageError(f"{name}: the input holds float values and {fmt} holds 0–255: pass --map normalize "
                             "to stretch them (--map clip to clip), or write .npy (or a gray .tif) to keep them")
        result, step_stats = apply_kernels(raster, list(group), options)
        if self.stats:
            for k, st in zip(group, step_stats):
                if st is not None:
                    say(f"{name}: {k.name}: min {st.minimum:g}, max {st.maximum:g}, clipped {st.clipped:.2%}")
        return encode(result, fmt, quality=self.quality, name=str(name), background=self.background)


def _apply_stream(job, inputs, output, fmt, files_from, each, overwrite):
    """One image from stdin or a file, to stdout or a file."""
    if len(inputs) != 1 or files_from is not None or each and len(job.kernels) > 1:
        raise UsageError("- (stdin/stdout) takes exactly one input and one output")
    _single(inputs[0], output or "-", fmt, overwrite, lambda raster, out_fmt, name: job(raster, job.kernels, out_fmt, name),
            limits=job.limits)


def _route_warnings():
    from .images import route_warnings

    route_warnings()


def _single(source, output, fmt, overwrite, render, suffix=None, limits=None):
    """Read one input (a file or - for stdin), render it to bytes, write one output (a file,
    or - for stdout). Without ``output``, the result goes beside the input as
    ``{stem}-{suffix}{ext}`` (stdout for stdin). Every check comes before any work."""
    from .images import FORMATS, extension_for, read

    _route_warnings()
    _check_input(source)
    if output is None:
        if source == "-":
            output = "-"
        else:
            stem, ext = os.path.splitext(source)
            output = f"{stem}-{suffix}{extension_for(_format_named(fmt)) if fmt else ext}"
    out_fmt = _check_output(output, fmt, overwrite, [source])
    limits = limits or _limits()
    raster = read(source, _read_stdin(limits.max_bytes) if source == "-" else None, limits)
    for note in raster.notes:
        warn(note)
    out_fmt = out_fmt or (raster.format if raster.format in FORMATS.values() else "PNG")
    _check_terminal(output, out_fmt)
    _emit(output, render(raster, out_fmt, output), overwrite)


def _check_input(path: str) -> None:
    """One input file, or - for stdin (refused when it is a terminal)."""
    if path == "-":
        _check_stdin("no input")
        if sys.stdin.isatty():
            raise UsageError("no input: stdin is a terminal; pipe an image in or name a file")
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # too long, a NUL byte, no permission
        raise UsageError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path}: is a directory")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path}: not a regular file (a FIFO, device or socket)")


def _check_stdin(what: str) -> None:
    """stdin closed at start (``<&-``) is a usage error for anything that reads it."""
    from .console import closed

    if closed("stdin"):
        raise UsageError(f"{what}: stdin is closed; pipe data in or name a file")


def _check_output(output: str, fmt, overwrite: bool, inputs) -> str | None:
    """Refuse, before any work, a terminal as stdout, an output that is one of ``inputs``,
    and an existing file without ``overwrite``. Returns the output's format (None for
    stdout without --format: the caller picks)."""
    from .images import format_for_path

    if output == "-":
        from .console import closed

        if closed("stdout"):
            raise UsageError("-o -: stdout is closed; redirect it to a file or use -o FILE")
        _check_terminal(output, _format_named(fmt) or _stdout_format_of(inputs))
        return _format_named(fmt)
    from .batch import check_writable

    out_fmt = _check_format(format_for_path(output), fmt, output)
    if os.path.exists(output):
        if any(p != "-" and os.path.exists(p) and os.path.samefile(p, output) for p in inputs):
            raise UsageError(f"{output}: is an input; refusing to overwrite it")
        if os.path.isdir(output):
            raise UsageError(f"{output}: is a directory")
        if not overwrite:
            raise UsageError(f"{output}: already exists; pass --overwrite to replace it")
    check_writable(Path(output))
    _remove_stale_temps([Path(output).parent])
    return out_fmt


def _remove_stale_temps(folders) -> None:
    """Temporary files of kernelcli's naming left in output folders by a killed run go."""
    from .images import remove_stale_temps

    for folder in dict.fromkeys(folders):
        for path in remove_stale_temps(folder):
            warn(f"{path}: removed a temporary file left by an interrupted kernelcli run")


def _stdout_format_of(inputs) -> str | None:
    """The format stdout gets without --format from a single file input: an array stays an
    array (a .csv prints as CSV), an image stays binary. None when it is not known yet (stdin)."""
    from .images import FORMATS

    if len(inputs) != 1 or inputs[0] == "-":
        return None
    return FORMATS.get(Path(inputs[0]).suffix.lower()[1:], "image")


def _check_terminal(output: str, out_fmt: str | None) -> None:
    """Text (CSV) may print at a terminal; binary data is refused there (usage error)."""
    from .images import TEXT_FORMATS

    if output == "-" and out_fmt is not None and out_fmt not in TEXT_FORMATS and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal; redirect stdout or use -o FILE")


def _emit(output: str, data: bytes, overwrite: bool, detail: str = "") -> None:
    """Bytes to stdout (``-``) or atomically to a file, reported on stderr."""
    from .images import write_atomic

    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(output, data, overwrite=overwrite)
        say(f"wrote {output}{detail}")


def _read_stdin(limit: int = 1 << 30) -> bytes:
    """All of stdin, up to ``limit`` bytes (one more is read to tell "too much")."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        from .images import ImageError

        raise ImageError(f"stdin: more than {limit} bytes; refused")
    return data


def _check_format(out_fmt, fmt, output):
    if fmt and _format_named(fmt) != out_fmt:
        raise UsageError(f"--format {fmt} does not match the output name {output}")
    return out_fmt


def _warm_torch():
    """Start importing torch on a thread; returns the thread (done when the import is)."""
    import importlib
    import threading

    thread = threading.Thread(target=importlib.import_module, args=("torch",), daemon=True)
    thread.start()
    return thread


def _check_device(options):
    """An unavailable device is a usage error (exit 2), found before any output is written."""
    from .convolve import resolve_device

    resolve_device(options.device)


def _apply_batch(torch_loading, job, inputs, output, template, each, recursive, include, exclude, files_from, null, fmt,
                 overwrite, skip_existing, report_path, jobs, quiet, verbose, scheduler=None, library=None):
    import threading

    from . import batch, storage
    from .images import extension_for, format_for_path

    listed = []
    if files_from is not None:
        data = sys.stdin.buffer.read() if files_from == "-" else storage.read_list_bytes(files_from)
        listed = batch.read_list(data, null)
    dir_mode = bool(output) and (
        str(output).endswith(("/", os.sep)) or storage.is_dir(output) or len(inputs) + len(listed) > 1
        or any(storage.is_dir(p) for p in inputs) or (each and len(job.kernels) > 1)
    )
    _check_folder_output(output, dir_mode, inputs, listed, each and len(job.kernels) > 1)
    if output:  # [storage] a store's endpoint, credentials and bucket answer before any work
        output = storage.check_output(output, listing=dir_mode)
    sources, bad = batch.find_inputs(inputs, recursive=recursive, include=include, exclude=exclude,
                                     listed=listed, avoid=output if dir_mode else None, kernels=library,
                                     on_skip=lambda p: warn(f"{p}: not a regular file (a FIFO, device or socket); skipped"))
    if not sources and not bad:
        where = ", ".join(map(str, inputs)) or files_from
        raise UsageError(f"no input images found in {where}" + ("" if recursive else " (use --recursive for sub-folders)"))
    single = len(sources) + len(bad) == 1 and not any(storage.is_dir(p) for p in inputs)
    if single and bad:
        raise UsageError(bad[0].error)

    groups = [(k,) for k in job.kernels] if each else [tuple(job.kernels)]
    out_file = output if output and not dir_mode else None
    if out_file:
        if len(groups) > 1:
            raise UsageError("--each writes several outputs; give -o a folder (ending in /)")
        _check_format(format_for_path(out_file), fmt, out_file)
    if template is None:
        template = "{stem}{ext}" if dir_mode and not each else "{stem}-{kernel}{ext}"

    def ext_for(source):
        return extension_for(_format_named(fmt)) if fmt else source.path.suffix

    jobs_ = batch.plan(sources, groups, out_dir=output if dir_mode else None, out_file=out_file, template=template,
                       ext_for=ext_for, overwrite=overwrite, skip_existing=skip_existing)
    jobs_ += bad
    for j in jobs_:  # output formats are known from the names: check them before any work
        for o in j.outputs:
            format_for_path(o.path)
    if report_path and report_path != "-":
        batch.check_report(batch._path(report_path), jobs_, overwrite=overwrite)
    _remove_stale_temps(o.path.parent for j in jobs_ for o in j.outputs  # stores have none: one PUT each
                        if not batch._is_url(o.path) and o.path.parent.is_dir())

    def read_warned(path):
        raster = storage.read(path, job.limits)
        for note in raster.notes:
            warn(note)
        return raster

    if not scheduler:  # [cluster] workers read and check the device and the memory budget themselves
        if single and jobs_[0].outputs and not batch._is_url(jobs_[0].source.path):  # from the header
            job.check_memory(jobs_[0].source.path, groups, format_for_path(jobs_[0].outputs[0].path))
        prefetch = batch.Prefetch(jobs_, read_warned, torch_loading)
        _check_device(job.options)
    stop = threading.Event()
    report = batch.Report(total=len(jobs_), on_fail=lambda j, message: error(message))
    progress = make_progress(len(jobs_), quiet)

    def write(path, data):
        storage.write(path, data, overwrite=overwrite)

    def process(j):
        render = lambda raster, group, path: job(raster, group, format_for_path(path), path)  # noqa: E731
        return batch.process_job(j, read=prefetch.take, render=render, write=write, stop=stop)

    def on_done(j):
        if progress is not None:
            progress.advance(1)
        if verbose and not quiet:
            say(f"{j.source.path} -> {', '.join(str(o.path) for o in j.outputs) or '-'}")

    if report_path == "-":
        report.stream = sys.stdout
    workers = jobs or os.cpu_count() or 1
    _share_threads(workers)
    code = fatal = None
    try:
        if scheduler:  # [cluster]
            from . import cluster

            cluster.run(jobs_, job, scheduler=scheduler, report=report, stop=stop, limits=job.limits,
                        overwrite=overwrite, device=job.options.device, on_done=on_done, on_note=warn)
        else:
            batch.run(jobs_, process, workers=workers, report=report, stop=stop, on_done=on_done)
    except batch.Interrupted as exc:
        code = exc.exit_code
    except WriteError as exc:
        fatal = exc
    finally:
        if progress is not None:
            progress.close()
    if report_path and report_path != "-":  # written whole, also after an interrupt or a failure
        try:
            storage.write(batch._path(report_path), report.jsonl(), overwrite=overwrite)
        except KernelcliError as exc:
            error(f"--report {exc}")
            fatal = fatal or (exc if code is None else None)
    ctx = click.get_current_context()
    if fatal is not None:
        say(f"stopped: {report.summary()}")
        ctx.exit(1)
    if single and code is None:
        if not quiet and report.processed:
            say(f"wrote {', '.join(str(o.path) for o in jobs_[0].outputs)}")
        elif not quiet and report.skipped:
            say(f"skipped {jobs_[0].source.path}: output exists")
        ctx.exit(report.exit_code)
    if not quiet or report.failed or code:
        say(report.summary() + (" (interrupted)" if code else ""))
        for path, _ in report.failed:
            say(f"  failed: {path}")
    ctx.exit(code or report.exit_code)


def _check_folder_output(output, dir_mode, inputs, listed, each) -> None:
    """-o names a folder when there are several outputs; a name with a file format's extension
    (out.png) is then a mistake, never a folder to create."""
    from . import storage
    from .images import FORMATS

    suffix = Path(str(output)).suffix.lower()[1:] if output else ""
    if not dir_mode or suffix not in FORMATS or str(output).endswith(("/", os.sep)) or storage.is_dir(output):
        return
    why = ("--each writes one output per kernel" if each
           else "a folder input gives several outputs" if any(storage.is_dir(p) for p in inputs)
           else f"{len(inputs) + len(listed)} inputs give several outputs")
    raise UsageError(f"{output}: -o names one .{suffix} file but {why}; give -o a folder (e.g. out/) "
                     "or a single input")


def _share_threads(workers: int) -> None:
    """Split the cores between files in flight and torch's own threads."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# --------------------------------------------------------------------------- grid


@main.command(context_settings=CONTEXT, epilog="Exit codes: 0 ok; 1 an input could not be read or the "
              "output written; 2 usage or configuration error.")
@click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL", shell_complete=complete_kernels,
              help="A column per kernel; repeatable.")
@click.option("--all", "all_kernels", is_flag=True, help="Every kernel of the library (with yours), "
              "but the multi-channel ones.")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path(allow_dash=True))
@click.option("-o", "--output", required=True, metavar="PATH", help="The sheet (.png, .jpg, …), or - for stdout.")
@click.option("--transpose", is_flag=True, help="One row per kernel, one column per input.")
@click.option("--cols", type=click.IntRange(min=1), help="Wrap a single input's cells into N columns.")
@click.option("--no-labels", is_flag=True, help="Leave out the kernel names.")
@click.option("--show-kernels", is_flag=True, help="Draw each kernel as a small heatmap under its name.")
@click.option("--cell", default="256", show_default=True, metavar="PX|full",
              help="Long side of each cell; inputs are downscaled before filtering. full keeps them.")
@click.option("--gap", default=8, show_default=True, type=click.IntRange(min=0), help="Pixels between cells.")
@click.option("--background", default="white", show_default=True, metavar="COLOR", help="Sheet colour.")
@click.option("--format", "fmt", type=FormatChoice(images_only=True), metavar="EXT",
              help="Format for stdout: an image extension -o takes (png, jpg, gif, …)  [default: png].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@input_limit_options
@geometry_options
@kernel_files_option
def grid(kernel_specs, all_kernels, inputs, output, transpose, cols, no_labels, show_kernels, cell, gap,
         background, fmt, overwrite, max_pixels, allow_truncated, kernel_files, max_kernel, **geo):
    """A labelled contact sheet: each INPUT, then the same image through each kernel.

    \b
    Examples:
      kernelcli grid -k sobel-left -k sobel-right -k sharpen photo.jpg -o grid.png
      kernelcli grid --all --cols 6 photo.jpg -o all.png
      kernelcli grid -k blur -k outline a.jpg b.jpg --transpose --show-kernels -o sheet.png

    Each cell uses the kernel's own default value mapping unless --map is given, so edge
    kernels and blurs look right side by side.
    """
    from .filters import apply_each
    from .grid import Cell, arrange, compose, fit, parse_color
    from .images import read

    library = load_library(kernel_files, max_kernel)
    # --all: every kernel that works on any image; channel mixers need a given channel count
    kernels_ = [k for k in library if k.kind != "multi-channel"] if all_kernels else []
    kernels_ += [k for k in (library.resolve(s) for s in kernel_specs) if k not in kernels_]
    if not kernels_:
        raise UsageError("no kernels: give -k KERNEL (repeatable) or --all")
    if inputs.count("-") > 1:
        raise UsageError("stdin (-) can be read once")
    if cell != "full" and not (cell.isdigit() and int(cell) > 0):
        raise UsageError(f"--cell {cell!r}: give a number of pixels or full")
    long_side = None if cell == "full" else int(cell)
    colour = parse_color(background)
    _route_warnings()
    out_fmt = _sheet_output(output, fmt, overwrite, inputs)
    options = build_options(raw=False, **geo)
    from .convolve import resolve_device

    resolve_device(options.device)

    for path in inputs:
        _check_input(path)
    limits = _limits(max_pixels, allow_truncated)
    rows = []
    for path in inputs:
        raster = fit(read(path, _read_stdin(limits.max_bytes) if path == "-" else None, limits), long_side)
        row = [Cell(Path(path).name if path != "-" else "stdin", raster)]
        for k, (result, _) in zip(kernels_, apply_each(raster, kernels_, options)):
            row.append(Cell(k.name, result, k))
        rows.append(row)
    sheet = compose(arrange(rows, transpose=transpose, cols=cols), labels=not no_labels,
                    show_kernels=show_kernels, gap=gap, background=colour, fmt=out_fmt,
                    max_memory=options.max_memory)
    _emit(output, _encode_pil(sheet, out_fmt), overwrite, f" ({sheet.width}x{sheet.height})")


def _sheet_output(output, fmt, overwrite, inputs=()) -> str:
    """Check where a picture goes before any work; return its Pillow format name."""
    from .images import IMAGE_FORMATS

    out_fmt = _check_output(output, fmt, overwrite, inputs) or "PNG"
    _check_terminal(output, out_fmt)
    if out_fmt not in IMAGE_FORMATS:
        raise UsageError(f"{output}: a picture needs an image format such as .png")
    return out_fmt


def _encode_pil(img, fmt) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


# --------------------------------------------------------------------------- the toolkit


def single_io_options(f):
    for option in reversed([
        click.argument("source", metavar="INPUT", type=click.Path(allow_dash=True)),
        click.option("-o", "--output", metavar="PATH", help="Output file or - for stdout  [default: beside INPUT]."),
        click.option("--format", "fmt", type=FormatChoice(), metavar="EXT",
                     help="Output format for stdout: any extension -o takes (png, gif, npy, csv, …)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output file."),
        click.option("--device", metavar="DEV", envvar="KERNELCLI_DEVICE", help="auto | cpu | cuda | cuda:N | mps."),
        max_memory_option,
    ]):
        f = option(f)
    return f


def _max_memory(text):
    from .budget import parse_size

    return None if text is None else parse_size(text)


def _toolkit_render(fn):
    """Wrap a Raster→Raster toolkit function for _single: arrays out stay raw floats,
    arrays written as images are clipped to 0–255."""
    from dataclasses import replace

    from .images import ARRAY_FORMATS, encode

    def render(raster, out_fmt, name):
        if out_fmt in ARRAY_FORMATS:
            raster = replace(raster, maxval=None)
        elif raster.maxval is None:
            raster = replace(raster, maxval=255.0)
        return encode(fn(raster), out_fmt, name=str(name))

    return render


@main.command(context_settings=CONTEXT)
@click.option("--op", type=click.Choice(["max", "avg"]), default="max", show_default=True)
@click.option("--size", "size", type=click.IntRange(min=1), default=2, show_default=True, help="Window side K.")
@click.option("--stride", type=click.IntRange(min=1), help="Step between windows  [default: K].")
@click.option("--padding", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pixels added on each side (max: ignored; avg: counted as zeros).")
@single_io_options
def pool(op, size, stride, padding, source, output, fmt, overwrite, device, max_memory):
    """Max or average pooling, as torch.nn.MaxPool2d / AvgPool2d.

    \b
    Examples:
      kernelcli pool --op max --size 2 samples/example-5x5.csv -o -
      kernelcli pool --op avg --size 4 photo.jpg -o small.png
    """
    from .convolve import resolve_device
    from .toolkit import pool as pool_

    resolve_device(device)
    budget = _max_memory(max_memory)
    render = _toolkit_render(lambda r: pool_(r, op, size, stride, padding, device, max_memory=budget))
    _single(source, output, fmt, overwrite, render, suffix=f"{op}pool{size}")


@main.command(context_settings=CONTEXT)
@click.option("--factor", type=click.IntRange(min=1), default=2, show_default=True)
@single_io_options
def upsample(factor, source, output, fmt, overwrite, device, max_memory):
    """Enlarge by a whole factor with a transposed convolution initialised as a bilinear
    kernel (the FCN technique); equals bilinear interpolation with half-pixel centres.

    \b
    Example:
      kernelcli upsample --factor 2 samples/chelsea.jpg -o big.png
    """
    from .convolve import resolve_device
    from .toolkit import upsample as upsample_

    resolve_device(device)
    budget = _max_memory(max_memory)
    _single(source, output, fmt, overwrite, _toolkit_render(lambda r: upsample_(r, factor, device, max_memory=budget)),
            suffix=f"x{factor}")


@main.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "spec", required=True, metavar="KERNEL", shell_complete=complete_kernels,
              help="Kernel name or inline matrix.")
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--padding", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rows/columns cropped from each side of the full result.")
@click.option("--dilation", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--map", "map_mode", type=click.Choice(["clip", "abs", "offset", "normalize"]), default="clip",
              show_default=True, help="For image outputs.")
@kernel_files_option
@single_io_options
def transpose(spec, stride, padding, dilation, map_mode, kernel_files, max_kernel, source, output, fmt, overwrite, device,
              max_memory):
    """Transposed convolution: each input pixel adds value × kernel into the output, as
    torch.nn.ConvTranspose2d. Output size (n−1)·stride − 2·padding + dilation·(k−1) + 1.

    \b
    Examples:
      kernelcli transpose -k "0 1; 2 3" samples/example-2x2.csv -o -            # 0 0 1 / 0 4 6 / 4 12 9
      kernelcli transpose -k "0 1; 2 3" --stride 2 samples/example-2x2.csv -o -
    """
    from .convolve import resolve_device
    from .toolkit import transpose as transpose_

    kernel = load_library(kernel_files, max_kernel).resolve(spec)
    if kernel.kind != "plain":
        raise UsageError(f"kernel {kernel.name!r} is {kernel.kind}; transpose takes a plain matrix")
    resolve_device(device)
    budget = _max_memory(max_memory)
    render = _toolkit_render(lambda r: transpose_(r, kernel.weights, stride, padding, dilation, device, map_mode,
                                                  max_memory=budget))
    _single(source, output, fmt, overwrite, render, suffix=f"t-{kernel.name}")


@main.command(context_settings=CONTEXT)
@click.argument("source", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.argument("target", metavar="TARGET", type=click.Path(exists=True, dir_okay=False))
@click.option("--size", "size_text", default="3x3", show_default=True, metavar="HxW", help="Kernel size to learn.")
@click.option("--per-channel", is_flag=True, help="One kernel per colour channel instead of one for all.")
@click.option("--border", default="replicate", show_default=True, metavar="MODE", help="As in apply.",
              shell_complete=complete_borders)
@click.option("--padding", default="same", show_default=True, metavar="same|valid|N", help="As in apply.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the kernel and the fit as JSON.")
@click.option("--save", "save_name", metavar="NAME", help="Add the learned kernel to a kernel library.")
@click.option("--to", "save_to", metavar="FILE", type=click.Path(dir_okay=False),
              help=f"Library file for --save  [default: {click.get_app_dir('kernelcli')}/kernels.yaml].")
@click.option("--overwrite", is_flag=True, help="Let --save replace a kernel of the same name.")
@max_memory_option
@kernel_files_option
def learn(source, target, size_text, per_channel, border, padding, stride, dilation, as_json, save_name, save_to,
          overwrite, max_memory, kernel_files, max_kernel):
    """Find the kernel that turns INPUT into TARGET (linear least squares).

    Prints the kernel on stdout (rows of numbers) and the fit on stderr. Target pixels at 0
    or full scale of an image are left out, as they may have been clipped. A relative error
    above 2% means no kernel of this size explains the pair; kernelcli says so.

    \b
    Examples:
      kernelcli apply -k sharpen samples/camera.png -o sharp.npy
      kernelcli learn samples/camera.png sharp.npy --size 3x3
      kernelcli learn samples/camera.png sharp.npy --save my-sharpen
    """
    import re as re_

    import numpy as np

    from .images import read
    from .options import Geometry, parse_border, parse_padding
    from .toolkit import learn as learn_

    m = re_.fullmatch(r"(\d+)x(\d+)", size_text)
    if not m or not all(int(v) > 0 for v in m.groups()):
        raise UsageError(f"--size {size_text!r}: write HxW, e.g. 3x3")
    shape = (int(m.group(1)), int(m.group(2)))
    library = load_library(kernel_files, max_kernel) if save_name else None
    save_path = Path(save_to) if save_to else Path(click.get_app_dir("kernelcli")) / "kernels.yaml"
    if save_name:
        _check_save(library, save_name, overwrite, save_path)
    mode, value = parse_border(border)
    fit = learn_(read(source), read(target), shape, Geometry(mode, value, parse_padding(padding), stride, dilation),
                 per_channel=per_channel, max_memory=_max_memory(max_memory))
    clean = [np.round(k, 6) + 0.0 for k in fit.kernels]
    if as_json:
        click.echo(json.dumps({"kernels": [k.tolist() for k in clean], "rms": fit.rms,
                               "relative_error": fit.relative_error, "explained": fit.explained,
                               "pixels_used": fit.pixels_used, "pixels_total": fit.pixels_total}, indent=2))
    else:
        for i, k in enumerate(clean):
            if len(clean) > 1:
                click.echo(f"# channel {i + 1}")
            for row in k:
                click.echo(" ".join(f"{v:.6g}" for v in row))
    say(f"fit: rms error {fit.rms:.4g}, relative error {fit.relative_error:.3g} "
        f"({fit.pixels_used} of {fit.pixels_total} target values used)")
    if not fit.explained:
        warn(f"{target} is not explained by a {shape[0]}x{shape[1]} kernel of {source} "
             f"(relative error {fit.relative_error:.1%} > 2%); try another --size, --padding or --border")
    if save_name:
        if len(clean) > 1:
            raise UsageError("--save takes one kernel; learn without --per-channel")
        from .kernels import save_kernel

        save_kernel(save_path, save_name, clean[0], f"Learned from {Path(source).name} -> {Path(target).name} "
                    f"(relative error {fit.relative_error:.2g}).", overwrite=overwrite, max_kernel=max_kernel)
        say(f"saved {save_name!r} to {save_path}")


def _check_save(library, name, overwrite, path: Path):
    from .batch import check_writable
    from .kernel import NAME_RE

    if str(path) == "-":
        raise UsageError("--to -: a kernel library is a file; name one (stdout carries the learned kernel)")
    if path.is_dir():
        raise UsageError(f"--to {path}: is a directory")
    check_writable(Path(os.path.realpath(path)))
    _remove_stale_temps([Path(os.path.realpath(path)).parent])
    if not NAME_RE.match(name):
        raise UsageError(f"--save {name!r}: use lowercase words joined by hyphens, e.g. my-edge")
    if name in library and not overwrite:
        raise UsageError(f"a kernel named {name!r} exists already ({library.get(name).source}); "
                         "pass --overwrite to replace it")


@main.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL", shell_complete=complete_kernels,
              help="A kernel, as in apply, under --padding/--stride/--dilation; repeat to chain.")
@click.option("--padding", default="same", show_default=True, metavar="same|valid|N", help="As in apply.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1), help="As in apply.")
@click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1), help="As in apply.")
@click.option("-s", "--step", "steps", multiple=True, metavar="STEP",
              help='After the -k kernels: "KERNEL [stride=S] [padding=P] [dilation=D]", "conv HxW …", '
              '"pool K [stride=S]", "transpose K|HxW [stride=S] [padding=P]" or "upsample F"; repeat in order.')
@click.option("--size", "size_text", required=True, metavar="HxW[xC]", help="Input size (C channels, default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@kernel_files_option
def explain(kernel_specs, padding, stride, dilation, steps, size_text, as_json, kernel_files, max_kernel):
    """Output size (formula filled in), receptive field and cost of each step of a chain.

    A table on a terminal; one tab-separated line per step when piped (step, in, out,
    receptive field, jump, cost, height formula, width formula).

    \b
    Examples:
      kernelcli explain -k sharpen --padding valid --stride 2 --size 6x8
      kernelcli explain --size 32x32x3 -k sharpen -s "pool 2" -s "conv 3x3 stride=2" -s "upsample 2"
    """
    import re as re_

    from .explain import explain as explain_, kernel_step, parse_step, render
    from .options import parse_padding

    m = re_.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", size_text)
    if not m:
        raise UsageError(f"--size {size_text!r}: write HxW or HxWxC, e.g. 32x32x3")
    if not kernel_specs and not steps:
        raise UsageError("nothing to explain; give -k KERNEL (as in apply) or -s STEP")
    library = load_library(kernel_files, max_kernel)
    chain = [kernel_step(k, library, parse_padding(padding), stride, dilation) for k in kernel_specs]
    rows = explain_(chain + [parse_step(s, library) for s in steps], int(m.group(1)), int(m.group(2)),
                    int(m.group(3) or 1))
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        click.echo(render(rows, table=sys.stdout.isatty()), nl=False)


# --------------------------------------------------------------------------- the resident server


@main.group("server", context_settings=CONTEXT)
def server_group():
    """The resident server that makes each call fast (started by calls when none runs)."""


@server_group.command("start", context_settings=CONTEXT)
@click.option("--idle", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Exit after this long without requests  [default: 600; env KERNELCLI_SERVER_IDLE].")
def server_start(idle):
    """Start the server now, unless one runs for this install."""
    from . import service as server

    info = server.start(idle)
    say(f"server running: pid {info['pid']}, socket {info['socket']}")


@server_group.command("stop", context_settings=CONTEXT)
def server_stop():
    """Stop the server (requests in progress finish first)."""
    from . import service as server

    pid = server.stop()
    say("no server running" if pid is None else f"stopped the server (pid {pid})")


@server_group.command("status", context_settings=CONTEXT)
def server_status():
    """Print pid, socket, uptime, requests served and memory (exit 1 if none runs)."""
    from . import service as server

    info = server.status()
    if info is None:
        raise KernelcliError("no server running for this install and environment")
    for key, value in info.items():
        click.echo(f"{key}: {value}")


# --------------------------------------------------------------------------- bench


@main.command(context_settings=CONTEXT)
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Runs of each command.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where workloads and outputs go  [default: a temporary folder].")
@click.option("--samples", type=click.Path(exists=True, file_okay=False),
              help="Folder of sample photos  [default: the repository's samples/].")
@click.option("--only", metavar="W1,W2,…", help="Run only these workloads.")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality for all tools.")
@click.option("--device", metavar="DEV", help="Passed to kernelcli's commands (e.g. cuda).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(repeat, workdir, samples, only, quality, device, as_json, quiet):
    """Time kernelcli against ImageMagick and libvips on the same generated files.

    \b
    W1  150 JPEGs 512x512, sharpen, one process for the folder (mogrify -path; a vips loop)
    W2  one 6000x4000 JPEG, sharpen (vips conv; convert -morphology Correlate)
    W3  the same photo, Gaussian blur sigma 5 (vips gaussblur; convert -blur 0x5)
    W4  kernelcli --help, kernelcli kernels list
    W5  peak memory of W2
    Peers run when convert/mogrify (ImageMagick) and vips (libvips-tools) are on PATH.
    """
    import shutil
    import tempfile

    from .bench import bench as run_bench

    samples_dir = Path(samples) if samples else Path(__file__).resolve().parents[1] / "samples"
    if not (samples_dir / "camera.png").exists():
        raise UsageError(f"{samples_dir}: no sample photos here; pass --samples DIR (the repository's samples/)")
    wanted = [w.strip().upper() for w in only.split(",")] if only else None
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kernelcli-bench-"))
    mark = work / ".kernelcli-bench"  # bench replaces its own files here on every run: only in its own folder
    if workdir == "-" or (work.is_dir() and any(work.iterdir()) and not mark.exists()):
        raise UsageError(f"--workdir {workdir}: not a new or empty folder, nor one made by kernelcli bench; "
                         "bench replaces files in it, so give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    mark.touch()
    log = (lambda m: None) if quiet else say
    log(f"workloads in {work}")
    try:
        data = run_bench(work, samples_dir, repeat=repeat, quality=quality, device=device, only=wanted, log=log)
    finally:
        if not workdir:  # our own temporary folder; a --workdir is the user's and stays
            shutil.rmtree(work, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from .console import print_bench

    print_bench(data, repeat)


def entry() -> None:
    """The ``kernelcli`` console script. Runs the click group, then, once torch has been
    imported, leaves without the interpreter's teardown: unloading torch costs about 0.3 s
    and there is nothing left to save (outputs are written and closed, streams flushed)."""
    code = run()
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


def run() -> int:
    """The click group on ``sys.argv``, streams flushed; the exit code (the server's workers call this)."""
    from .console import guard_streams

    guard_streams()
    try:
        main(prog_name="kernelcli")
        code = 0
    except WriteError as exc:  # stdout failed outside a command (kernelcli --help >&-)
        error(str(exc))
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            _silence_stdout()
        except WriteError as exc:  # the last of stdout did not fit (a full disk)
            error(str(exc))
            code = code or 1
    return code


if __name__ == "__main__":
    entry()
