"""kernelcli pool | upsample | transpose: one file through a toolkit operation (kernelcli.teach.toolkit)."""

from __future__ import annotations

import functools

import click

from ..run import runner
from ..errors import UsageError
from ..kernels.kernel import DEFAULT_MAP, MAP_MODES
from ..compute.shapes import shape_text
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--op", type=click.Choice(["max", "avg"]), default="max", show_default=True)
@click.option("--size", "size", type=common.SHAPE, default="2", show_default=True, metavar="N|HxW",
              help="The pooling window, in pixels: N (N×N) or HxW.")
@click.option("--stride", type=click.IntRange(min=1), help="Step between windows  [default: the window].")
@click.option("--padding", type=common.Parsed(common.whole_padding("pooling"), "padding"), default="0",
              show_default=True, metavar="valid|N",
              help="Pixels added on each side, at most half the window (max: ignored; avg: counted as zeros).")
@common.single_io
@common.verbosity
def pool(op, size, stride, padding, source, output, fmt, depth, overwrite, device, max_memory, verbosity):
    """Max or average pooling, as torch.nn.MaxPool2d / AvgPool2d.

    \b
    Examples:
      kernelcli pool --op max --size 2 samples/example-5x5.csv -o -
      kernelcli pool --op avg --size 4 photo.jpg -o small.png
      kernelcli pool --op max --size 2x3 photo.jpg -o wide.png
    """
    from ..teach.toolkit import pool as op_

    fn = functools.partial(op_, op=op, size=size, stride=stride, padding=padding, device=device, max_memory=max_memory)
    runner.transform_file(source, output, fn, suffix=f"{op}pool{_text(size)}", fmt=fmt, overwrite=overwrite,
                          device=device, verbosity=verbosity, depth=depth)


@click.command(context_settings=CONTEXT)
@click.option("--factor", type=common.FACTOR, default="2", show_default=True, metavar="N|HxW",
              help="Enlargement, whole numbers: N (both axes) or HxW (height and width apart).")
@common.single_io
@common.verbosity
def upsample(factor, source, output, fmt, depth, overwrite, device, max_memory, verbosity):
    """Enlarge by a whole factor with a transposed convolution initialised as a bilinear
    kernel (the FCN technique); equals bilinear interpolation with half-pixel centres.

    \b
    Examples:
      kernelcli upsample --factor 2 samples/chelsea.jpg -o big.png
      kernelcli upsample --factor 2x3 samples/chelsea.jpg -o wide.png
    """
    from ..teach.toolkit import upsample as op_

    fn = functools.partial(op_, factor=factor, device=device, max_memory=max_memory)
    runner.transform_file(source, output, fn, suffix=f"x{_text(factor)}", fmt=fmt, overwrite=overwrite, device=device,
                          verbosity=verbosity, depth=depth)


@click.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "spec", required=True, metavar="KERNEL", shell_complete=common.complete_kernels,
              help="Kernel name or inline matrix.")
@common.stride
@click.option("--padding", type=common.Parsed(common.whole_padding("a transposed convolution"), "padding"),
              default="0", show_default=True, metavar="valid|N",
              help="Rows/columns cropped from each side of the full result (torch's padding).")
@common.dilation
@click.option("--map", "map_mode", type=click.Choice(MAP_MODES), default=DEFAULT_MAP, show_default=True,
              help="Fit results into the output range (image outputs).")
@common.kernel_files
@common.single_io
@common.verbosity
def transpose(spec, stride, padding, dilation, map_mode, kernel_files, max_kernel, source, output, fmt, depth,
              overwrite, device, max_memory, verbosity):
    """Transposed convolution: each input pixel adds value × kernel into the output, as
    torch.nn.ConvTranspose2d. Output size (n−1)·stride − 2·padding + dilation·(k−1) + 1.

    \b
    Examples:
      kernelcli transpose -k "0 1; 2 3" samples/example-2x2.csv -o -            # 0 0 1 / 0 4 6 / 4 12 9
      kernelcli transpose -k "0 1; 2 3" --stride 2 samples/example-2x2.csv -o -
    """
    kernel = runner.load_library(kernel_files, max_kernel).resolve(spec)
    if kernel.kind != "plain":
        raise UsageError(f"kernel {kernel.name!r} is {kernel.kind}; transpose takes a plain matrix")
    from ..teach.toolkit import transpose as op_

    fn = functools.partial(op_, weights=kernel.weights, stride=stride, padding=padding, dilation=dilation,
                           device=device, mode=map_mode, max_memory=max_memory)
    runner.transform_file(source, output, fn, suffix=f"t-{kernel.name}", fmt=fmt, overwrite=overwrite, device=device,
                          verbosity=verbosity, depth=depth)


def _text(shape) -> str:
    """(2, 2) → '2' and (2, 3) → '2x3' in output names (maxpool2, x2x3)."""
    return shape_text(shape[0] if shape[0] == shape[1] else shape)


COMMANDS = [pool, upsample, transpose]
