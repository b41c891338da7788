"""Options shared by several commands, their click types built from the library's own lists."""

from __future__ import annotations

import click

from ..run import runner
from ..errors import UsageError
from ..kernels.kernel import MAP_MODES, MAX_KERNEL_SIZE
from ..compute.options import BORDERS, COLOR_MODES, DEVICES, parse_bias, parse_border, parse_device, parse_padding
from ..compute.shapes import parse_shape

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def stack(*options):
    """One decorator from several (applied in the order written)."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def complete_kernels(ctx, param, incomplete):
    """Shell completion: kernel names and aliases (with --kernels given before), then the
    generators' prefixes (``gaussian:``, ``box:`` …); a broken file completes the generators only."""
    from click.shell_completion import CompletionItem

    from ..errors import KernelcliError
    from ..kernels.generate import GENERATORS

    try:
        library = runner.load_library(ctx.params.get("kernel_files") or ())
    except KernelcliError:
        library = ()
    names = [CompletionItem(name, help=k.description) for k in library for name in (k.name, *k.aliases)
             if name.startswith(incomplete)]
    return names + [CompletionItem(f"{name}:", help=text, type="nospace") for name, text in GENERATORS.items()
                    if f"{name}:".startswith(incomplete)]


def complete_borders(ctx, param, incomplete):
    return [b + (":" if b == "constant" else "") for b in BORDERS if b.startswith(incomplete)]


def complete_devices(ctx, param, incomplete):
    """auto, cpu, cuda, cuda: (an index follows), mps — without importing torch."""
    words = [d.replace(":N", ":") for d in DEVICES]
    return [w for w in words if w.startswith(incomplete.lower())]


class Parsed(click.ParamType):
    """An option's value read by the library's own parser while click parses the command line,
    so a bad value is a usage error naming the option before any file is looked at (and the
    command gets the parsed value). One parser per vocabulary word: every command's --size,
    --padding, --border, --device, --max-memory and --bias read the same words the same way."""

    def __init__(self, parse, name: str):
        self.parse, self.name = parse, name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):  # parsed already (a default or a caller's value)
            return value
        try:
            return self.parse(value)
        except UsageError as exc:
            text, flag = str(exc), f"{param.opts[-1]} " if param is not None else ""
            self.fail(text[len(flag):] if flag and text.startswith(flag) else text, param, ctx)


def _memory(text):
    from ..compute.budget import parse_size

    return parse_size(text)


def whole_padding(what):
    """--padding of pooling and transposed convolution: a number of pixels (valid is 0)."""
    def parse(text):
        value = parse_padding(text)
        if value == "same":
            raise UsageError(f"'same': {what} has no same padding; give a number of pixels a side (valid is 0)")
        return 0 if value == "valid" else value
    return parse


SHAPE = Parsed(parse_shape, "shape")  # N or HxW
SHAPE_C = Parsed(lambda text: parse_shape(text, channels=True), "shape")  # N, HxW or HxWxC
FACTOR = Parsed(lambda text: parse_shape(text, what="upsampling factors"), "factor")  # N or HxW
PADDING = Parsed(parse_padding, "padding")
BORDER = Parsed(parse_border, "border")
DEVICE = Parsed(parse_device, "device")
MEMORY = Parsed(_memory, "size")
BIAS = Parsed(parse_bias, "bias")


class FormatChoice(click.Choice):
    """The --format words of the one format table (images.FORMATS), looked up when first needed
    (importing the CLI stays light); ``images_only`` leaves out the arrays."""

    def __init__(self, images_only: bool = False):
        self.images_only = images_only
        super().__init__((), case_sensitive=False)

    @property
    def choices(self):
        from ..io.images import ARRAY_FORMATS, FORMATS

        return tuple(e for e, f in FORMATS.items() if not (self.images_only and f in ARRAY_FORMATS))

    @choices.setter
    def choices(self, value):
        pass


kernel_option = click.option("-k", "--kernel", "kernel_specs", multiple=True, metavar="KERNEL",
                             shell_complete=complete_kernels,
                             help='Kernel name or inline matrix ("0,-1,0; -1,5,-1; 0,-1,0"); repeatable.')
kernel_files = stack(
    click.option("--kernels", "kernel_files", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                 help="Extra kernel library (YAML); repeatable. Read last, after the files listed below."),
    click.option("--max-kernel", "max_kernel", default=MAX_KERNEL_SIZE, show_default=True,
                 type=click.IntRange(1, 1023), metavar="N",
                 help="Largest kernel side accepted from files, the command line and generators."))
max_memory = click.option("--max-memory", metavar="SIZE", type=MEMORY, help="Refuse jobs estimated to need more "
                          "memory (4G, 512M)  [default: half of the available memory].")
device = click.option("--device", metavar="DEV", envvar="KERNELCLI_DEVICE", type=DEVICE, shell_complete=complete_devices,
                      help="auto | cpu | cuda | cuda:N | mps  [default: auto; env KERNELCLI_DEVICE].")
overwrite = click.option("--overwrite", is_flag=True, help="Replace existing outputs (never an input).")
border = click.option("--border", default="replicate", show_default=True, metavar="MODE", type=BORDER,
                      shell_complete=complete_borders, help=" | ".join(BORDERS) + ":V.")
padding = click.option("--padding", default="same", show_default=True, metavar="same|valid|N", type=PADDING,
                       help="same keeps the size; valid adds none; N pads N pixels a side.")
stride = click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1),
                      help="Step between neighbouring windows, in pixels.")
dilation = click.option("--dilation", default=1, show_default=True, type=click.IntRange(min=1),
                        help="Spacing between kernel taps (1: adjacent).")
json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
depth = click.option("--depth", type=click.Choice(["8", "16"]), metavar="8|16",
                     callback=lambda ctx, param, value: None if value is None else int(value),
                     help="Bits per channel of image outputs: 8 lets 16-bit images into JPEG, WebP, BMP, GIF and TGA; "
                     "16 needs .png, .tif or .ppm  [default: the input's].")
geometry = stack(
    border, padding, stride, dilation,
    click.option("--convolve", is_flag=True, help="Flip kernels (true convolution); default is correlation."),
    click.option("--color", default="channels", show_default=True, type=click.Choice(COLOR_MODES),
                 help="Filter each channel; convert to gray; luminance only; or sum channels."),
    click.option("--map", "map_mode", type=click.Choice(MAP_MODES),
                 help="Fit results into the output range  [default: the kernel's, else clip]."),
    click.option("--scale", default=1.0, show_default=True, type=float, help="Multiply results before mapping."),
    click.option("--bias", metavar="B", type=BIAS, help="Add B of full scale before mapping: 0.5 or 50%."),
    device, max_memory)
input_limits = stack(
    click.option("--max-pixels", default=100_000_000, show_default=True, type=click.IntRange(min=1),
                 help="Refuse images with more pixels (checked from the header, before decoding)."),
    click.option("--allow-truncated", is_flag=True, help="Accept cut-off image files, with a warning."))
single_io = stack(
    click.argument("source", metavar="INPUT", type=click.Path(allow_dash=True)),
    click.option("-o", "--output", metavar="PATH", help="Output file or - for stdout  [default: beside INPUT]."),
    click.option("--format", "fmt", type=FormatChoice(), metavar="EXT",
                 help="Output format: any extension -o takes (png, gif, npy, csv, …); for stdout, or for an -o name "
                 "without a known extension."),
    depth, overwrite, device, max_memory)


def kernel_hint(inputs, library) -> str:
    """``; did you mean -k NAME?`` when -k is missing and the first INPUT is no file but a kernel
    (``kernelcli apply sharpen photo.jpg``); else nothing."""
    import os
    import shlex

    from ..errors import KernelcliError

    if not inputs or inputs[0] == "-" or os.path.lexists(inputs[0]):
        return ""
    try:
        library.resolve(inputs[0])
    except KernelcliError:
        return ""
    return f"; did you mean -k {shlex.quote(inputs[0])}?"


def geometry_of(border, padding, stride, dilation):
    """The library's Geometry from --border, --padding, --stride and --dilation (parsed, or as written)."""
    from ..compute.options import Geometry

    mode, value = parse_border(border) if isinstance(border, str) else border
    return Geometry(mode, value, parse_padding(padding) if isinstance(padding, str) else padding, stride, dilation)


def build_options(border, padding, stride, dilation, convolve, color, map_mode, scale, bias, device, max_memory,
                  stats=False):
    """The library's Options from the geometry options' values."""
    from ..compute.options import Options

    return Options(geometry=geometry_of(border, padding, stride, dilation), convolve=convolve, color=color,
                   map=map_mode, scale=scale, bias=parse_bias(bias) if isinstance(bias, str) else bias, raw=False,
                   device=device, stats=stats, max_memory=max_memory)


def limits(max_pixels, allow_truncated):
    from ..io.images import Limits

    return Limits(max_pixels=max_pixels, allow_truncated=allow_truncated)


NO_SERVER_HELP = "Run in this process, not through the resident server (also: KERNELCLI_SERVER=off)."
no_server = click.option("--no-server", is_flag=True, expose_value=False, help=NO_SERVER_HELP)


def everywhere(command: click.Command) -> click.Command:
    """What every command takes, added in one place, also to the commands of a group: --no-server
    (accepted before the command name, by the group, and after it, by each command) and, for
    commands that read kernel files, the per-user file's path in an unwrapped epilog paragraph
    (a wrapped help text would break a path at its hyphens)."""
    for sub in getattr(command, "commands", {}).values():
        everywhere(sub)
    if not any(p.name == "no_server" for p in command.params):
        command.params.append(click.Option(["--no-server"], is_flag=True, expose_value=False, help=NO_SERVER_HELP))
    if any(p.name == "kernel_files" for p in command.params):
        files = f"\b\nKernel files, read in this order:\n  the shipped library\n  {runner.app_dir() / 'kernels.yaml'}" \
                "\n  $KERNELCLI_KERNELS (paths separated by :)\n  --kernels FILE (repeatable)"
        command.epilog = files + (f"\n\n{command.epilog}" if command.epilog else "")
    return command


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
