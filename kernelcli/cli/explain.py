"""kernelcli explain: output sizes, receptive field and cost of a chain (kernelcli.teach.explain)."""

from __future__ import annotations

import sys

import click

from ..run import runner
from ..errors import UsageError
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL", shell_complete=common.complete_kernels,
              help="A kernel, as in apply, under --padding/--stride/--dilation; repeat to chain.")
@common.padding
@common.stride
@common.dilation
@click.option("-s", "--step", "steps", multiple=True, metavar="STEP",
              help='After the -k kernels: "KERNEL [stride=S] [padding=P] [dilation=D]", "conv HxW …", '
              '"pool K [stride=S]", "transpose K|HxW [stride=S] [padding=P]" or "upsample F"; repeat in order.')
@click.option("--size", "size", type=common.SHAPE_C, required=True, metavar="N|HxW|HxWxC",
              help="The input: N (N×N), HxW or HxWxC pixels (C channels, default 1).")
@common.json_flag
@common.kernel_files
def explain(kernel_specs, padding, stride, dilation, steps, size, as_json, kernel_files, max_kernel):
    """Output size (formula filled in), receptive field and cost of each step of a chain.

    A table on a terminal; one tab-separated line per step when piped (step, in, out,
    receptive field, jump, cost, height formula, width formula).

    \b
    Examples:
      kernelcli explain -k sharpen --padding valid --stride 2 --size 6x8
      kernelcli explain --size 32x32x3 -k sharpen -s "pool 2" -s "conv 3x3 stride=2" -s "upsample 2"
    """
    from ..teach.explain import explain as explain_, kernel_step, parse_step, render

    if not kernel_specs and not steps:
        raise UsageError("nothing to explain; give -k KERNEL (as in apply) or -s STEP")
    library = runner.load_library(kernel_files, max_kernel)
    chain = [kernel_step(k, library, padding, stride, dilation) for k in kernel_specs]
    rows = explain_(chain + [parse_step(s, library) for s in steps], *size)
    if as_json:
        common.echo_json(rows, ensure_ascii=False)
    else:
        click.echo(render(rows, table=sys.stdout.isatty()), nl=False)


COMMANDS = [explain]
