"""kernelcli explain: output sizes, receptive field and cost of a chain (kernelcli.explain)."""

from __future__ import annotations

import click

from .. import runner
from ..errors import UsageError
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("-s", "--step", "steps", multiple=True, required=True, metavar="STEP",
              help='"KERNEL [stride=S] [padding=P] [dilation=D]", "conv HxW …", "pool K [stride=S]", '
              '"transpose K|HxW [stride=S] [padding=P]" or "upsample F"; repeat in order.')
@click.option("--size", "size_text", required=True, metavar="HxW[xC]", help="Input size (C channels, default 1).")
@common.json_flag
@common.kernel_files
def explain(steps, size_text, as_json, kernel_files, max_kernel):
    """Output size (formula filled in), receptive field and cost of each step of a chain.

    \b
    Examples:
      kernelcli explain --size 5x5 -s "conv 3x3 padding=valid"
      kernelcli explain --size 32x32x3 -s sharpen -s "pool 2" -s "conv 3x3 stride=2" -s "upsample 2"
    """
    import re

    from ..explain import explain as explain_, parse_step

    m = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", size_text)
    if not m:
        raise UsageError(f"--size {size_text!r}: write HxW or HxWxC, e.g. 32x32x3")
    library = runner.load_library(kernel_files, max_kernel)
    rows = explain_([parse_step(s, library) for s in steps], int(m.group(1)), int(m.group(2)), int(m.group(3) or 1))
    if as_json:
        common.echo_json(rows, ensure_ascii=False)
    else:
        from ..console import print_explain

        print_explain(rows)


COMMANDS = [explain]
