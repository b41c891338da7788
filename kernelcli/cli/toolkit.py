"""kernelcli pool | upsample | transpose: one file through a toolkit operation (kernelcli.toolkit)."""

from __future__ import annotations

import functools

import click

from .. import runner
from ..errors import UsageError
from ..kernel import DEFAULT_MAP, MAP_MODES
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--op", type=click.Choice(["max", "avg"]), default="max", show_default=True)
@click.option("--size", "size", type=click.IntRange(min=1), default=2, show_default=True, help="Window side K.")
@click.option("--stride", type=click.IntRange(min=1), help="Step between windows  [default: K].")
@click.option("--padding", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pixels added on each side (max: ignored; avg: counted as zeros).")
@common.single_io
@common.verbosity
def pool(op, size, stride, padding, source, output, fmt, overwrite, device, max_memory, verbosity):
    """Max or average pooling, as torch.nn.MaxPool2d / AvgPool2d.

    \b
    Examples:
      kernelcli pool --op max --size 2 samples/example-5x5.csv -o -
      kernelcli pool --op avg --size 4 photo.jpg -o small.png
    """
    from ..toolkit import pool as op_

    fn = functools.partial(op_, op=op, size=size, stride=stride, padding=padding, device=device,
                           max_memory=common.size(max_memory))
    runner.transform_file(source, output, fn, suffix=f"{op}pool{size}", fmt=fmt, overwrite=overwrite, device=device,
                          verbosity=verbosity)


@click.command(context_settings=CONTEXT)
@click.option("--factor", type=click.IntRange(min=1), default=2, show_default=True)
@common.single_io
@common.verbosity
def upsample(factor, source, output, fmt, overwrite, device, max_memory, verbosity):
    """Enlarge by a whole factor with a transposed convolution initialised as a bilinear
    kernel (the FCN technique); equals bilinear interpolation with half-pixel centres.

    \b
    Example:
      kernelcli upsample --factor 2 samples/chelsea.jpg -o big.png
    """
    from ..toolkit import upsample as op_

    fn = functools.partial(op_, factor=factor, device=device, max_memory=common.size(max_memory))
    runner.transform_file(source, output, fn, suffix=f"x{factor}", fmt=fmt, overwrite=overwrite, device=device,
                          verbosity=verbosity)


@click.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "spec", required=True, metavar="KERNEL", shell_complete=common.complete_kernels,
              help="Kernel name or inline matrix.")
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--padding", type=click.IntRange(min=0), default=0, show_default=True,
              help="Rows/columns cropped from each side of the full result.")
@click.option("--dilation", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--map", "map_mode", type=click.Choice(MAP_MODES), default=DEFAULT_MAP, show_default=True,
              help="For image outputs.")
@common.kernel_files
@common.single_io
@common.verbosity
def transpose(spec, stride, padding, dilation, map_mode, kernel_files, max_kernel, source, output, fmt, overwrite,
              device, max_memory, verbosity):
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
    from ..toolkit import transpose as op_

    fn = functools.partial(op_, weights=kernel.weights, stride=stride, padding=padding, dilation=dilation,
                           device=device, mode=map_mode, max_memory=common.size(max_memory))
    runner.transform_file(source, output, fn, suffix=f"t-{kernel.name}", fmt=fmt, overwrite=overwrite, device=device,
                          verbosity=verbosity)


COMMANDS = [pool, upsample, transpose]
