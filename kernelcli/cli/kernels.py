"""kernelcli kernels list | show."""

from __future__ import annotations

import sys

import click

from ..run import runner
from . import common
from .common import CONTEXT

GENERATED = """List the available kernels.

    A table on a terminal; one tab-separated line per kernel (name, size, description)
    when piped. Besides these names, kernels can be generated wherever a name is taken:

    \b
      gaussian:SIGMA[,SIZE]  box:N  motion:LENGTH,ANGLE  log:SIGMA[,SIZE]
      dog:SIGMA1,SIGMA2[,SIZE]  unsharp:SIGMA,AMOUNT[,SIZE]  NAME@ANGLE (turned)
    """


@click.group(context_settings=CONTEXT)
def kernels():
    """List and inspect the kernel library."""


@kernels.command("list", context_settings=CONTEXT, help=GENERATED)
@common.kernel_files
@click.option("--json", "as_json", is_flag=True, help="Print JSON (name, description, matrix, …).")
def kernels_list(kernel_files, max_kernel, as_json):
    from ..kernels.analysis import describe
    from ..console import print_library, printable

    lib = runner.load_library(kernel_files, max_kernel)
    if as_json:
        common.echo_json([describe(k) for k in lib])
    elif sys.stdout.isatty():
        print_library(lib)
    else:  # one line per kernel: a tab or a newline in a description is escaped
        for k in lib:
            click.echo(f"{printable(k.name)}\t{'x'.join(map(str, k.shape))}\t{printable(k.description)}")


@kernels.command("show", context_settings=CONTEXT)
@click.argument("name", shell_complete=common.complete_kernels)
@common.kernel_files
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the effective float weights.")
@click.option("--image", "image_path", metavar="FILE", help="Also draw the kernel as a heatmap picture (- for stdout).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --image file.")
@common.verbosity
def kernels_show(name, kernel_files, max_kernel, as_json, image_path, overwrite, verbosity):
    """Show one kernel: its weights coloured by sign, sum, separability, origin.

    NAME is a kernel name or an inline matrix such as "1 2 1; 2 4 2; 1 2 1".
    With --image, draw it: a square per weight, red above zero, blue below, value inside.
    """
    from ..kernels.analysis import describe
    from ..console import print_kernel

    kernel = runner.load_library(kernel_files, max_kernel).resolve(name)
    if image_path:
        runner.kernel_picture(kernel, image_path, overwrite=overwrite, verbosity=verbosity)
        if image_path == "-":
            return
    if as_json:
        common.echo_json(describe(kernel))
    else:
        print_kernel(describe(kernel))


COMMANDS = [kernels]
