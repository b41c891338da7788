"""Options shared by several commands, their click types built from the library's own lists."""

from __future__ import annotations

import click

from .. import runner
from ..kernel import MAP_MODES, MAX_KERNEL_SIZE
from ..options import BORDERS, COLOR_MODES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def stack(*options):
    """One decorator from several (applied in the order written)."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def complete_kernels(ctx, param, incomplete):
    """Shell completion: kernel names and aliases (with --kernels given before); a broken file completes nothing."""
    from click.shell_completion import CompletionItem

    from ..errors import KernelcliError

    try:
        library = runner.load_library(ctx.params.get("kernel_files") or ())
    except KernelcliError:
        return []
    return [CompletionItem(name, help=k.description) for k in library for name in (k.name, *k.aliases)
            if name.startswith(incomplete)]


def complete_borders(ctx, param, incomplete):
    return [b + (":" if b == "constant" else "") for b in BORDERS if b.startswith(incomplete)]


class FormatChoice(click.Choice):
    """The --format words of the one format table (images.FORMATS), looked up when first needed
    (importing the CLI stays light); ``images_only`` leaves out the arrays."""

    def __init__(self, images_only: bool = False):
        self.images_only = images_only
        super().__init__((), case_sensitive=False)

    @property
    def choices(self):
        from ..images import ARRAY_FORMATS, FORMATS

        return tuple(e for e, f in FORMATS.items() if not (self.images_only and f in ARRAY_FORMATS))

    @choices.setter
    def choices(self, value):
        pass


kernel_option = click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL",
                             shell_complete=complete_kernels,
                             help='Kernel name or inline matrix ("0,-1,0; -1,5,-1; 0,-1,0"); repeatable.')
kernel_files = stack(
    click.option("--kernels", "kernel_files", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                 help="Extra kernel library (YAML); repeatable. Also read: $KERNELCLI_KERNELS and "
                 f"{runner.app_dir()}/kernels.yaml."),
    click.option("--max-kernel", "max_kernel", default=MAX_KERNEL_SIZE, show_default=True,
                 type=click.IntRange(1, 1023), metavar="N",
                 help="Largest kernel side accepted from files, the command line and generators."))
max_memory = click.option("--max-memory", metavar="SIZE", help="Refuse jobs estimated to need more memory "
                          "(4G, 512M)  [default: half of the available memory].")
device = click.option("--device", metavar="DEV", envvar="KERNELCLI_DEVICE",
                      help="auto | cpu | cuda | cuda:N | mps  [default: auto; env KERNELCLI_DEVICE].")
overwrite = click.option("--overwrite", is_flag=True, help="Replace existing outputs (never an input).")
border = click.option("--border", default="replicate", show_default=True, metavar="MODE",
                      shell_complete=complete_borders, help=" | ".join(BORDERS) + ":V.")
padding = click.option("--padding", default="same", show_default=True, metavar="same|valid|N",
                       help="same keeps the size; valid adds none; N pads N pixels a side.")
stride = click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1))
dilation = click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1))
json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
geometry = stack(
    border, padding, stride, dilation,
    click.option("--convolve", is_flag=True, help="Flip kernels (true convolution); default is correlation."),
    click.option("--color", default="channels", show_default=True, type=click.Choice(COLOR_MODES),
                 help="Filter each channel; convert to gray; luminance only; or sum channels."),
    click.option("--map", "map_mode", type=click.Choice(MAP_MODES),
                 help="Fit results into the output range  [default: the kernel's, else clip]."),
    click.option("--scale", default=1.0, show_default=True, type=float, help="Multiply results before mapping."),
    click.option("--bias", metavar="B", help="Add B of full scale before mapping: 0.5 or 50%."),
    device, max_memory)
input_limits = stack(
    click.option("--max-pixels", default=100_000_000, show_default=True, type=click.IntRange(min=1),
                 help="Refuse images with more pixels (checked from the header, before decoding)."),
    click.option("--allow-truncated", is_flag=True, help="Accept cut-off image files, with a warning."))
single_io = stack(
    click.argument("source", metavar="INPUT", type=click.Path(allow_dash=True)),
    click.option("-o", "--output", metavar="PATH", help="Output file or - for stdout  [default: beside INPUT]."),
    click.option("--format", "fmt", type=FormatChoice(), metavar="EXT",
                 help="Output format for stdout: any extension -o takes (png, gif, npy, csv, …)."),
    overwrite, device, max_memory)


def geometry_of(border, padding, stride, dilation):
    from ..options import Geometry, parse_border, parse_padding

    mode, value = parse_border(border)
    return Geometry(mode, value, parse_padding(padding), stride, dilation)


def build_options(border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device, max_memory,
                  stats=False):
    """The library's Options from the geometry options' values."""
    from ..options import Options, parse_bias

    return Options(geometry=geometry_of(border, padding, stride, dilation), convolve=convolve, color=color,
                   map=map_mode, scale=scale, bias=None if bias is None else parse_bias(bias), raw=False,
                   device=device, stats=stats, max_memory=size(max_memory))


def size(text):
    from ..budget import parse_size

    return None if text is None else parse_size(text)


def limits(max_pixels, allow_truncated):
    from ..images import Limits

    return Limits(max_pixels=max_pixels, allow_truncated=allow_truncated)


VERBOSITY_KEY = "kernelcli.verbosity"


def remember_verbosity(ctx, param, value):
    """The group's -q/-v (``kernelcli -q apply …``), kept for the command in the shared ctx.meta."""
    if value:
        ctx.meta[VERBOSITY_KEY] = runner.QUIET if param.name == "quiet" else runner.VERBOSE


QUIET_HELP = "Print nothing but errors."
VERBOSE_HELP = "Say what was written (a line per file)."
group_verbosity = stack(
    click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=remember_verbosity, help=QUIET_HELP),
    click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=remember_verbosity,
                 help=VERBOSE_HELP))


def verbosity(f):
    """-q/--quiet and -v/--verbose: the command gets ``verbosity`` (runner.QUIET, NORMAL, VERBOSE);
    given after the command they win over the same flags given before it."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, quiet, verbose, **kwargs):
        level = (runner.QUIET if quiet else runner.VERBOSE if verbose else
                 click.get_current_context().meta.get(VERBOSITY_KEY, runner.NORMAL))
        return f(*args, verbosity=level, **kwargs)

    return stack(click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP),
                 click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP))(wrapper)


def echo_json(data, ensure_ascii: bool = True) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=ensure_ascii))
