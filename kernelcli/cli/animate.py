"""kernelcli animate: a kernel sliding over a small grid of numbers, as GIF or APNG (kernelcli.teach.animate)."""

from __future__ import annotations

import click

from ..run import runner
from ..errors import UsageError
from . import common
from .common import CONTEXT

INPUT_BYTES = 1 << 20  # an input of at most 16x16 numbers is far smaller; anything larger is refused unread


@click.command(context_settings=CONTEXT, epilog="Exit codes: 0 ok; 1 the input could not be read or the output "
               "written; 2 usage error (also an input larger than 16x16).")
@click.argument("source", metavar="[INPUT]", required=False, type=click.Path(allow_dash=True))
@click.option("-k", "--kernel", "spec", metavar="KERNEL", shell_complete=common.complete_kernels,
              help="Kernel name or inline matrix (a plain matrix).")
@click.option("--pool", type=click.Choice(["max", "avg"]), help="Animate max or average pooling (window: --size).")
@click.option("--transposed", is_flag=True, help="Transposed convolution (as kernelcli transpose), drawn as the "
              "equivalent direct convolution over the input with zeros inserted.")
@click.option("--size", "size", type=common.SHAPE, metavar="N|HxW", help="Without INPUT: the input of a diagram "
              "without numbers, N (N×N) or HxW cells. With --pool: the window, N or HxW  [default: 2].")
@common.border
@common.padding
@common.stride
@common.dilation
@click.option("--convolve", is_flag=True, help="Flip the kernel (true convolution); default is correlation.")
@click.option("-o", "--output", metavar="PATH", help="The animation: .gif, .png (APNG), or - for stdout.")
@click.option("--format", "fmt", type=click.Choice(["gif", "png"], case_sensitive=False),
              help="Format for stdout  [default: gif].")
@click.option("--delay", default=800, show_default=True, type=click.IntRange(20, 10_000), metavar="MS",
              help="Milliseconds per frame; the last frame (the whole output) stays 3 times as long.")
@click.option("--trace", is_flag=True, help="Print a tab-separated line per output cell (frame) to stdout: output "
              "row, output column, the window's top row and left column in the padded input, the value.")
@common.overwrite
@common.max_memory
@common.kernel_files
@common.verbosity
def animate(source, spec, pool, transposed, size, border, padding, stride, dilation, convolve, output, fmt,
            delay, trace, overwrite, max_memory, kernel_files, max_kernel, verbosity):
    """Draw, frame by frame, a kernel sliding over a small grid of numbers: the padding,
    the kernel's footprint with its weights, the products and their sum, and the output
    filling in. One frame per output cell, then the whole output held.

    INPUT is a CSV, .npy or gray image of at most 16x16 numbers, or - for stdin; without
    INPUT, --size HxW draws the shapes only. Padding, stride and dilation as in apply
    (--border too); --transposed and --pool take --padding N as kernelcli transpose and
    kernelcli pool do. The legend gives the output-size formula of kernelcli explain.

    \b
    Examples:
      kernelcli animate -k "0 1; 2 3" --padding valid samples/example-3x3.csv -o conv.gif
      kernelcli animate -k "0 1 0; 1 2 1; 0 1 0" --border zeros --padding 1 --stride 2 samples/example-5x5.csv -o s2.gif
      kernelcli animate -k "0 1; 2 3" --transposed --stride 2 samples/example-2x2.csv -o up.gif
      kernelcli animate --pool max --size 2 samples/example-5x5.csv -o pool.gif
      kernelcli animate --size 5x5 -k box:3 --stride 2 --padding 1 -o shape.png
      kernelcli animate -k "0 1; 2 3" --padding valid samples/example-3x3.csv --trace
    """
    from ..teach.animate import encode, plan, trace as trace_text

    ctx = click.get_current_context()
    given = {name: ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
             for name in ("border", "padding", "stride")}
    op = pool or ("transposed" if transposed else "conv")
    _check_request(source, spec, pool, transposed, size, convolve, output, trace, given["border"])
    weights = anchor = label = None
    if spec is not None:
        from ..kernels.library import is_inline_spec

        kernel = runner.load_library(kernel_files, max_kernel).resolve(spec)
        if kernel.kind != "plain":
            raise UsageError(f"kernel {kernel.name!r} is {kernel.kind}; animate takes a plain matrix")
        kernel = kernel.flipped() if convolve else kernel
        weights, anchor = kernel.weights, kernel.anchor
        label = "x".join(map(str, kernel.shape)) + ("" if is_inline_spec(spec) else f" {kernel.name}")
    window = pool_stride = None
    if pool:
        window = size or (2, 2)
        pool_stride = stride if given["stride"] else window  # as torch: the window, unless --stride
    if op != "conv" and not given["padding"]:
        padding = 0
    geometry = common.geometry_of(border, padding, stride, dilation)
    if source is not None:  # the options, then the input, then the output
        runner.check_input(source)
    out_fmt = None
    if output is not None:
        out_fmt = runner.picture_output(output, fmt or ("gif" if output == "-" else None), overwrite,
                                        [source] if source else [])
        if out_fmt not in ("GIF", "PNG"):
            raise UsageError(f"{output}: animations are written as .gif or .png (APNG)")
    data = _read(source) if source is not None else size
    scene = plan(data, op, weights=weights, window=window, geometry=geometry, anchor=anchor, flipped=convolve,
                 name={None: "--size", "-": "stdin"}.get(source, source), kernel_label=label, pool_stride=pool_stride)
    if trace:
        click.echo(trace_text(scene), nl=False)
    if output is not None:
        data = encode(scene, out_fmt, delay, max_memory=max_memory)
        runner.emit(output, data, overwrite, f" ({len(scene.cells) + 1} frames)", verbosity)


def _check_request(source, spec, pool, transposed, size, convolve, output, trace, border_given) -> None:
    """Combinations of options that cannot be drawn, refused before any work."""
    if spec is None and pool is None:
        raise UsageError("nothing to animate: give -k KERNEL (a convolution) or --pool max|avg")
    if spec is not None and pool is not None:
        raise UsageError("give -k KERNEL or --pool, not both")
    if transposed and pool:
        raise UsageError("--transposed takes a kernel (-k), not --pool")
    if source is None and size is None:
        raise UsageError("no input: give INPUT (CSV, .npy, a gray image, or - for stdin), or --size HxW for a "
                         "diagram without numbers")
    if source is not None and size is not None and not pool:
        raise UsageError("--size is the input size of a diagram without numbers (no INPUT) or, with --pool, the "
                         "window; drop INPUT or --size")
    if border_given and (pool or transposed):
        raise UsageError("--border pads a convolution's input; a transposed convolution and pooling pad as torch "
                         "does (zeros; max pooling ignores its padding)")
    if convolve and (pool or transposed):
        raise UsageError("--convolve flips a convolution's kernel; it does not go with --pool or --transposed")
    if output is None and not trace:
        raise UsageError("nowhere to draw: give -o FILE (.gif or .png), -o - for stdout, or --trace")
    if output == "-" and trace:
        raise UsageError("--trace prints to stdout; write the animation to a file with -o FILE")


def _read(source: str):
    """The numbers of INPUT: one channel, at most INPUT_BYTES."""
    from ..io.images import Limits

    raster = runner.read_input(source, Limits(max_bytes=INPUT_BYTES))
    if raster.pixels.shape[0] != 1 or raster.alpha is not None:
        name = "stdin" if source == "-" else source
        raise UsageError(f"{name}: has {raster.pixels.shape[0]} channel(s){' and alpha' if raster.alpha is not None else ''}"
                         "; animate draws one grid of numbers (give a single-channel array or a gray image)")
    return raster.pixels[0]


COMMANDS = [animate]
