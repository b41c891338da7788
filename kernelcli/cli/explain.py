"""kernelcli explain: output sizes, receptive field and cost of a chain (kernelcli.explain)."""

from __future__ import annotations

import sys

import click

from .. import runner
from ..errors import UsageError
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL", shell_complete=common.complete_kernels,
              help="A kernel, as in apply, under --padding/--stride/--dilation; repeat to chain.")
@click.option("--padding", default="same", show_default=True, metavar="same|valid|N", help="As in apply.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1), help="As in apply.")
@click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1), help="As in apply.")
@click.option("-s", "--step", "steps", multiple=True, metavar="STEP",
              help='After the -k kernels: "KERNEL [stride=S] [padding=P] [dilation=D]", "conv HxW …", '
              '"pool K [stride=S]", "transpose K|HxW [stride=S] [padding=P]" or "upsample F"; repeat in order.')
@click.option("--size", "size_text", required=True, metavar="HxW[xC]", help="Input size (C channels, default 1).")
@common.json_flag
@common.kernel_files
def explain(kernel_specs, padding, stride, dilation, steps, size_text, as_json, kernel_files, max_kernel):
    """Output size (formula filled in), receptive field and cost of each step of a chain.

    A table on a terminal; one tab-separated line per step when piped (step, in, out,
    receptive field, jump, cost, height formula, width formula).

    \b
    Examples:
      kernelcli explain -k sharpen --padding valid --stride 2 --size 6x8
      kernelcli explain --size 32x32x3 -k sharpen -s "pool 2" -s "conv 3x3 stride=2" -s "upsample 2"
    """
    import re

    from ..explain import explain as explain_, kernel_step, parse_step, render
    from ..options import parse_padding

    m = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", size_text)
    if not m:
        raise UsageError(f"--size {size_text!r}: write HxW or HxWxC, e.g. 32x32x3")
    if not kernel_specs and not steps:
        raise UsageError("nothing to explain; give -k KERNEL (as in apply) or -s STEP")
    library = runner.load_library(kernel_files, max_kernel)
    chain = [kernel_step(k, library, parse_padding(padding), stride, dilation) for k in kernel_specs]
    rows = explain_(chain + [parse_step(s, library) for s in steps], int(m.group(1)), int(m.group(2)),
                    int(m.group(3) or 1))
    if as_json:
        common.echo_json(rows, ensure_ascii=False)
    else:
        click.echo(render(rows, table=sys.stdout.isatty()), nl=False)


COMMANDS = [explain]
