"""kernelcli grid: a contact sheet (kernelcli.run.runner.make_grid)."""

from __future__ import annotations

import click

from ..run import runner
from ..console import say
from ..errors import UsageError
from . import common
from .common import CONTEXT


@click.command(context_settings=CONTEXT, epilog="Exit codes: 0 ok; 1 an input could not be read or the "
               "output written; 2 usage or configuration error.")
@common.kernel_option
@click.option("--all", "all_kernels", is_flag=True, help="Every kernel of the library (with yours), "
              "but the multi-channel ones (it names them; add one with -k).")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path(allow_dash=True))
@click.option("-o", "--output", required=True, metavar="PATH", help="The sheet (.png, .jpg, …), or - for stdout.")
@click.option("--transpose", is_flag=True, help="One row per kernel, one column per input.")
@click.option("--cols", type=click.IntRange(min=1), help="Wrap a single input's cells into N columns.")
@click.option("--no-labels", is_flag=True, help="Leave out the kernel names.")
@click.option("--show-kernels", is_flag=True, help="Draw each kernel as a small heatmap under its name.")
@click.option("--cell", default="256", show_default=True, metavar="PX|full",
              help="Long side of each cell; inputs are downscaled before filtering. full keeps them.")
@click.option("--gap", default=8, show_default=True, type=click.IntRange(min=0), help="Pixels between cells.")
@click.option("--background", default="white", show_default=True, metavar="COLOR", help="Sheet colour.")
@click.option("--format", "fmt", type=common.FormatChoice(images_only=True), metavar="EXT",
              help="Format for stdout: an image extension -o takes (png, jpg, gif, …)  [default: png].")
@common.overwrite
@common.verbosity
@common.input_limits
@common.geometry
@common.kernel_files
def grid(kernel_specs, all_kernels, inputs, output, transpose, cols, no_labels, show_kernels, cell, gap,
         background, fmt, overwrite, verbosity, max_pixels, allow_truncated, kernel_files, max_kernel, **geo):
    """A labelled contact sheet: each INPUT, then the same image through each kernel.

    \b
    Examples:
      kernelcli grid -k sobel-left -k sobel-right -k sharpen photo.jpg -o grid.png
      kernelcli grid --all --cols 6 photo.jpg -o all.png
      kernelcli grid -k blur -k outline a.jpg b.jpg --transpose --show-kernels -o sheet.png

    Each cell uses the kernel's own default value mapping unless --map is given, so edge
    kernels and blurs look right side by side.
    """
    library = runner.load_library(kernel_files, max_kernel)
    # --all: every kernel that works on any image; channel mixers need a given channel count
    kernels = [k for k in library if k.kind != "multi-channel"] if all_kernels else []
    kernels += [k for k in (library.resolve(s) for s in kernel_specs) if k not in kernels]
    if not kernels:
        raise UsageError("no kernels: give -k KERNEL (repeatable) or --all" + common.kernel_hint(inputs, library))
    if cell != "full" and not (cell.isdigit() and int(cell) > 0):
        raise UsageError(f"--cell {cell!r}: give a number of pixels or full")
    left_out = [k.name for k in library if k.kind == "multi-channel" and k not in kernels] if all_kernels else []
    if left_out and verbosity >= runner.NORMAL:
        say(f"--all leaves out the multi-channel kernels {', '.join(left_out)}: each needs images of a given "
            "number of channels; add one with -k NAME")
    sheet = runner.Sheet(transpose, cols, not no_labels, show_kernels, None if cell == "full" else int(cell), gap,
                         background)
    runner.make_grid(inputs, kernels, output, sheet=sheet, fmt=fmt, overwrite=overwrite,
                     options=common.build_options(**geo), limits=common.limits(max_pixels, allow_truncated),
                     verbosity=verbosity)


COMMANDS = [grid]
