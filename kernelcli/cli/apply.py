"""kernelcli apply: parse, then kernelcli.run.runner.apply_paths runs the whole job."""

from __future__ import annotations

import click

from ..run import runner
from . import common
from .common import CONTEXT

EXIT_CODES = ("Exit codes: 0 all done; 1 runtime failure (a single input failed, or the destination failed); 2 usage "
              "or configuration error, before any work; 3 the batch finished but some inputs failed; 130 "
              "interrupted (143 on SIGTERM).")


@click.command(context_settings=CONTEXT, epilog=EXIT_CODES)
@click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL",
              shell_complete=common.complete_kernels,
              help='Kernel name or inline matrix ("0,-1,0; -1,5,-1; 0,-1,0"); repeat to chain  [required].')
@click.argument("inputs", nargs=-1, metavar="INPUT...", type=click.Path(allow_dash=True))
@click.option("-o", "--output", metavar="PATH", help="Output file, folder (several inputs, a folder input, "
              "or a name ending in /), or - for stdout  [default: beside each input; stdout when INPUT is -].")
@click.option("--name", "template", metavar="TEMPLATE", help="Output file name from {stem} {ext} {kernel} "
              "{parent}  [default: {stem}-{kernel}{ext} beside inputs, {stem}{ext} under -o DIR].")
@click.option("--each", is_flag=True, help="One output per -k (each kernel alone) instead of a chain.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of folder inputs.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (name or relative path).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (name or relative path).")
@click.option("--files-from", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read input paths from FILE (- for stdin), one per line.")
@click.option("-0", "--null", is_flag=True, help="--files-from list is NUL-separated (find -print0).")
@click.option("--format", "fmt", type=common.FormatChoice(), metavar="EXT",
              help="Output format (converts on the way): any extension -o takes (png, jpg, gif, tif, npy, csv, …).")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG/WebP quality.")
@common.depth
@common.overwrite
@click.option("--skip-existing", is_flag=True, help="Keep existing outputs and skip their inputs (resume a run).")
@click.option("--report", "report_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write one JSON line per input (input, outputs, status, error) to FILE, or - for stdout. "
              "An output like the images: refused if it exists (without --overwrite) or is an input.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Files worked on at once  [default: CPU cores].")
@click.option("--stats", is_flag=True, help="Print each step's value range and share clipped to stderr.")
@common.verbosity
@click.option("--background", "flatten_on", metavar="COLOR",
              help="Flatten transparency onto this colour for formats without alpha (JPEG, BMP, PPM).")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",  # [storage]
              help="Option for s3://, gs:// or http(s):// (e.g. endpoint_url=http://host:8333, anon=true, "
              "read_timeout=60); KEY=@FILE or 'KEY=$NAME' read a secret from a file or a variable; repeatable "
              "[env KERNELCLI_STORAGE_OPTIONS].")
@click.option("--scheduler", envvar="KERNELCLI_SCHEDULER", metavar="ADDRESS|local|local:N",  # [cluster]
              help="Run on Dask: a scheduler address, or local[:N] for a local cluster  [env KERNELCLI_SCHEDULER].")
@common.input_limits
@common.geometry
@common.kernel_files
@click.pass_context
def apply(ctx, kernel_specs, inputs, quality, depth, stats, verbosity, flatten_on, max_pixels, allow_truncated,
          kernel_files, max_kernel, border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device,
          max_memory, **batch):
    """Filter images (files, folders, .npy/.csv arrays, or - for stdin) with kernels.

    \b
    Examples:
      kernelcli apply -k sharpen photo.jpg                 # → photo-sharpen.jpg
      kernelcli apply -k blur -k outline photo.jpg -o edges.png
      kernelcli apply -k blur photos/ -o out/ --recursive --jobs 2
      find . -name '*.png' -print0 | kernelcli apply -k emboss --files-from - -0 -o out/
      kernelcli apply -k sobel-left -k sobel-right --each photo.jpg -o edges/
      kernelcli apply -k blur s3://bucket/photos/ -o s3://bucket/out/ -r --scheduler local:2
      cat in.png | kernelcli apply -k emboss - -o - | kernelcli apply -k sharpen - -o - > out.png

    Kernels apply as correlation (weights as written, like torch and OpenCV); --convolve
    flips them. Images keep their bit depth (8 or 16); .npy/.csv outputs hold the raw float
    result. With several -k, each step is mapped to the output depth before the next.
    """
    from ..teach.grid import parse_color

    runner.warm_torch()  # ~1 s, overlapped with loading the library
    library = runner.load_library(kernel_files, max_kernel)
    if not kernel_specs:
        raise click.UsageError("missing option '-k' / '--kernel'" + common.kernel_hint(inputs, library))
    options = common.build_options(border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device,
                                   max_memory, stats=stats)
    report = runner.apply_paths(
        inputs, kernel_specs, library=library, options=options, quality=quality, stats=stats, depth=depth,
        limits=common.limits(max_pixels, allow_truncated), background=parse_color(flatten_on) if flatten_on else None,
        batch=runner.Batch(verbosity=verbosity, **{**batch, "include": tuple(batch["include"]),
                                                   "exclude": tuple(batch["exclude"])}))
    ctx.exit(report.exit_code)


COMMANDS = [apply]
