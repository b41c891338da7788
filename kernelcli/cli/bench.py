"""kernelcli bench (kernelcli.bench)."""

from __future__ import annotations

import click

from ..console import say
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Runs of each command.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where workloads and outputs go  [default: a temporary folder].")
@click.option("--samples", type=click.Path(exists=True, file_okay=False),
              help="Folder of sample photos  [default: the repository's samples/].")
@click.option("--only", metavar="W1,W2,…", help="Run only these workloads.")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality for all tools.")
@click.option("--device", metavar="DEV", help="Passed to kernelcli's commands (e.g. cuda).")
@common.json_flag
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
    from ..bench import bench_in
    from ..console import print_bench

    wanted = [w.strip().upper() for w in only.split(",")] if only else None
    data = bench_in(workdir, samples, repeat=repeat, quality=quality, device=device, only=wanted,
                    log=(lambda m: None) if quiet else say)
    if as_json:
        common.echo_json(data)
    else:
        print_bench(data, repeat)


COMMANDS = [bench]
