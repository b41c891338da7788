"""kernelcli learn: the kernel that turns one image into another (kernelcli.teach.toolkit.learn)."""

from __future__ import annotations

from pathlib import Path

import click

from ..run import runner
from ..console import say, warn
from ..errors import UsageError
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("source", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.argument("target", metavar="TARGET", type=click.Path(exists=True, dir_okay=False))
@click.option("--size", "shape", type=common.SHAPE, default="3", show_default=True, metavar="N|HxW",
              help="The kernel to learn: N (N×N) or HxW weights.")
@click.option("--per-channel", is_flag=True, help="One kernel per colour channel instead of one for all.")
@common.border
@common.padding
@common.stride
@common.dilation
@click.option("--json", "as_json", is_flag=True, help="Print the kernel and the fit as JSON.")
@click.option("--save", "save_name", metavar="NAME", help="Add the learned kernel to a kernel library.")
@click.option("--to", "save_to", metavar="FILE", type=click.Path(dir_okay=False),
              help="Library file for --save  [default: your kernel file, the second one listed below].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output: with --save, a kernel of the same name.")
@common.max_memory
@common.kernel_files
@common.verbosity
def learn(source, target, shape, per_channel, border, padding, stride, dilation, as_json, save_name, save_to,
          overwrite, max_memory, kernel_files, max_kernel, verbosity):
    """Find the kernel that turns INPUT into TARGET (linear least squares).

    Prints the kernel on stdout (rows of numbers) and the fit on stderr. Target pixels at 0
    or full scale of an image are left out, as they may have been clipped. A relative error
    above 2% means no kernel of this size explains the pair; kernelcli says so.

    \b
    Examples:
      kernelcli apply -k sharpen samples/camera.png -o sharp.npy
      kernelcli learn samples/camera.png sharp.npy --size 3
      kernelcli learn samples/camera.png sharp.npy --save my-sharpen
    """
    from ..io.images import read
    from ..teach.toolkit import learn as learn_

    save_path = Path(save_to) if save_to else runner.app_dir() / "kernels.yaml"
    if save_name:
        runner.check_save(runner.load_library(kernel_files, max_kernel), save_name, overwrite, save_path)
    fit = learn_(read(source), read(target), shape, common.geometry_of(border, padding, stride, dilation),
                 per_channel=per_channel, max_memory=max_memory)
    _print_fit(fit, as_json, verbosity)
    if not fit.explained:
        warn(f"{target} is not explained by a {shape[0]}x{shape[1]} kernel of {source} "
             f"(relative error {fit.relative_error:.1%} > 2%); try another --size, --padding or --border")
    if save_name:
        if len(fit.kernels) > 1:
            raise UsageError("--save takes one kernel; learn without --per-channel")
        from ..kernels.library import save_kernel

        save_kernel(save_path, save_name, _rounded(fit)[0], f"Learned from {Path(source).name} -> {Path(target).name} "
                    f"(relative error {fit.relative_error:.2g}).", overwrite=overwrite, max_kernel=max_kernel)
        if verbosity >= runner.VERBOSE:
            say(f"saved {save_name!r} to {save_path}")


def _rounded(fit):
    import numpy as np

    return [np.round(k, 6) + 0.0 for k in fit.kernels]


def _print_fit(fit, as_json, verbosity):
    clean = _rounded(fit)
    if as_json:
        common.echo_json({"kernels": [k.tolist() for k in clean], "rms": fit.rms, "relative_error": fit.relative_error,
                          "explained": fit.explained, "pixels_used": fit.pixels_used, "pixels_total": fit.pixels_total})
    else:
        for i, k in enumerate(clean):
            if len(clean) > 1:
                click.echo(f"# channel {i + 1}")
            for row in k:
                click.echo(" ".join(f"{v:.6g}" for v in row))
    if verbosity >= runner.NORMAL:
        say(f"fit: rms error {fit.rms:.4g}, relative error {fit.relative_error:.3g} "
            f"({fit.pixels_used} of {fit.pixels_total} target values used)")


COMMANDS = [learn]
