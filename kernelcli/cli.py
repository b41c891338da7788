"""The command line: parse options, call the library, report. No image logic here.

Exit codes: 0 ok · 1 runtime failure · 2 usage or configuration error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .console import error, say, warn
from .errors import KernelcliError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_CODES_HELP = "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error."


class Group(click.Group):
    """Turns kernelcli's own errors into one-line messages and exit codes, in one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KernelcliError as exc:
            error(str(exc))
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            _silence_stdout()
            ctx.exit(1)


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kernelcli")
def main():
    """Filter images with named convolution kernels, on the CPU or a GPU.

    \b
    Examples:
      kernelcli kernels list
      kernelcli kernels show sobel-right
      kernelcli apply -k sharpen photo.jpg              # writes photo-sharpen.jpg
      kernelcli apply -k blur -k outline in.png -o out.png
      cat in.png | kernelcli apply -k emboss - -o - > out.png
    """


# --------------------------------------------------------------------------- the kernel library


def kernel_files_option(f):
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
    files += [Path(p) for p in extra]
    return files


def load_library(extra=()):
    from .kernels import KernelLibrary

    return KernelLibrary.load(user_kernel_files(extra))


@main.group(context_settings=CONTEXT)
def kernels():
    """List and inspect the kernel library."""


@kernels.command("list", context_settings=CONTEXT)
@kernel_files_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (name, description, matrix, …).")
def kernels_list(kernel_files, as_json):
    """List the available kernels.

    A table on a terminal; one tab-separated line per kernel (name, size, description)
    when piped.
    """
    from .kernels import describe

    lib = load_library(kernel_files)
    if as_json:
        click.echo(json.dumps([describe(k) for k in lib], indent=2))
    elif sys.stdout.isatty():
        from rich.table import Table

        from .console import stdout_console

        table = Table("name", "size", "sum", "description", box=None, header_style="bold")
        for k in lib:
            s = sum(sum(r) for r in k.matrix) * k.scale / k.divisor
            table.add_row(k.name, "x".join(map(str, k.shape)), f"{s:g}", k.description)
        stdout_console().print(table)
    else:
        for k in lib:
            click.echo(f"{k.name}\t{'x'.join(map(str, k.shape))}\t{k.description}")


@kernels.command("show", context_settings=CONTEXT)
@click.argument("name")
@kernel_files_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the effective float weights.")
def kernels_show(name, kernel_files, as_json):
    """Show one kernel: its weights coloured by sign, sum, separability, origin.

    NAME is a kernel name or an inline matrix such as "1 2 1; 2 4 2; 1 2 1".
    """
    from .kernels import describe

    info = describe(load_library(kernel_files).resolve(name))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from .console import render_matrix, stdout_console

    out = stdout_console()
    out.print(f"[bold]{info['name']}[/]  {info['size'][0]}x{info['size'][1]}  {info['description']}")
    if info["divisor"] != 1 or info["scale"] != 1:
        out.print(f"written (× {info['scale']:g} / {info['divisor']:g}):")
        out.print(render_matrix(info["written"]))
        out.print("applied weights:")
    out.print(render_matrix(info["matrix"]))
    sep = "no"
    if info["separable"]:
        f = info["factors"]
        sep = f"yes: column {_fmt(f['column'])} × row {_fmt(f['row'])}"
    out.print(f"sum {info['sum']:g} · separable {sep} · default map {info['map']} · anchor {tuple(info['anchor'])}")
    source = f"from {info['source']}"
    if info["overrides"]:
        source += f" (overrides the kernel of the same name in {info['overrides']})"
    if info["aliases"]:
        source += f" · aliases: {', '.join(info['aliases'])}"
    out.print(source)


def _fmt(values) -> str:
    return "[" + " ".join(f"{v:g}" for v in values) + "]"


# --------------------------------------------------------------------------- apply


def geometry_options(f):
    for option in reversed(
        [
            click.option("--border", default="replicate", show_default=True, metavar="MODE",
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
        ]
    ):
        f = option(f)
    return f


def build_options(border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device, raw):
    from .convolve import Geometry, parse_border, parse_padding
    from .filters import Options
    from .mapping import parse_bias

    mode, value = parse_border(border)
    geo = Geometry(mode, value, parse_padding(padding), stride, dilation)
    return Options(
        geometry=geo, convolve=convolve, color=color, map=map_mode, scale=scale,
        bias=None if bias is None else parse_bias(bias), raw=raw, device=device,
    )


FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF",
           "bmp": "BMP", "npy": "NPY", "csv": "CSV"}


@main.command(context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, required=True, metavar="KERNEL",
              help='Kernel name or inline matrix ("0,-1,0; -1,5,-1; 0,-1,0"); repeat to chain.')
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=True, allow_dash=True))
@click.option("-o", "--output", metavar="PATH", help="Output file, or - for stdout  [default: INPUT's folder, "
              "named {stem}-{kernel}{ext}; stdout when INPUT is -].")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), help="Output format for stdout (or to check -o).")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG/WebP quality.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--stats", is_flag=True, help="Print each step's value range and share clipped to stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@geometry_options
@kernel_files_option
def apply(kernel_specs, input_path, output, fmt, quality, overwrite, stats, quiet, kernel_files, **geo):
    """Filter INPUT (an image, .npy/.csv array, or - for stdin) with kernels in sequence.

    \b
    Examples:
      kernelcli apply -k sharpen photo.jpg
      kernelcli apply -k blur -k outline photo.jpg -o edges.png
      kernelcli apply -k "1, -1" --padding valid samples/band-6x8.csv -o -
      cat in.png | kernelcli apply -k emboss - -o - | kernelcli apply -k sharpen - -o - > out.png

    Kernels apply as correlation (weights as written, like torch and OpenCV); --convolve
    flips them. Images keep their bit depth (8 or 16); .npy/.csv outputs hold the raw float
    result. With several -k, each step is mapped to the output depth before the next.
    """
    from .filters import apply_kernels
    from .images import extension_for, format_for_path, read

    library = load_library(kernel_files)
    kernels_ = [library.resolve(spec) for spec in kernel_specs]
    from_stdin = input_path == "-"
    if from_stdin and sys.stdin.isatty():
        raise UsageError("no input: stdin is a terminal; pipe an image in or name a file")
    if output is None and from_stdin:
        output = "-"
    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write image data to a terminal; redirect stdout or use -o FILE")
    if not from_stdin and not os.path.exists(input_path):
        raise UsageError(f"{input_path}: no such file")
    if not from_stdin and os.path.isdir(input_path):
        raise UsageError(f"{input_path}: is a directory; give an image file")

    # Decide the output before reading, so usage errors come before any work.
    if to_stdout:
        out_fmt = FORMATS[fmt] if fmt else None
    else:
        if output is None:
            stem, ext = os.path.splitext(input_path)
            ext = extension_for(FORMATS[fmt]) if fmt else ext
            output = f"{stem}-{'+'.join(k.name for k in kernels_)}{ext}"
        out_fmt = format_for_path(output)
        if fmt and FORMATS[fmt] != out_fmt:
            raise UsageError(f"--format {fmt} does not match the output name {output}")
        if os.path.exists(output):
            if os.path.exists(input_path) and os.path.samefile(output, input_path):
                raise UsageError(f"{output}: is the input; refusing to overwrite it")
            if not overwrite:
                raise UsageError(f"{output}: already exists; pass --overwrite to replace it")

    raster = read(input_path, sys.stdin.buffer.read() if from_stdin else None)
    for note in raster.notes:
        warn(note)
    if out_fmt is None:
        out_fmt = raster.format if raster.format in FORMATS.values() else "PNG"
    options = build_options(raw=out_fmt in ("NPY", "CSV"), **geo)
    result, step_stats = apply_kernels(raster, kernels_, options)
    if stats:
        for k, st in zip(kernels_, step_stats):
            say(f"{k.name}: min {st.minimum:g}, max {st.maximum:g}, clipped {st.clipped:.2%}")

    from .images import encode, write_atomic

    data = encode(result, out_fmt, quality=quality, name=output)
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(output, data, overwrite=overwrite)
        say(f"wrote {output}", quiet=quiet)


if __name__ == "__main__":
    main()
