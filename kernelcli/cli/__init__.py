"""The command line: each command parses its options, calls the library (kernelcli.run.runner and
friends) and turns the outcome into an exit code. Library errors become one-line messages here.

Exit codes: 0 ok · 1 runtime failure · 2 usage error · 3 some inputs of a batch failed · 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from ..run import runner
from ..console import error
from ..errors import KernelcliError, WriteError
from ..version import __version__
from . import animate, apply, bench, explain, grid, kernels, learn, server, toolkit
from . import common
from .common import CONTEXT

# The flag that changes a library setting named by an error (KernelcliError.setting), as the
# end of the message; library messages describe the problem and never name a flag.
SETTING_FLAGS = {
    "max_kernel": " (--max-kernel raises it)",
    "overwrite": "; pass --overwrite to replace it",
}


def message(exc: KernelcliError) -> str:
    """What the user reads for a library error: its text and the flag that resolves it."""
    return str(exc) + SETTING_FLAGS.get(exc.setting, "")


def usage_message(exc: click.UsageError) -> str:
    """click's usage error as kernelcli's one line: click's own words (what is wrong, the allowed
    values), without its "Usage: … Try -h" block; the message names the option to fix."""
    text = exc.format_message().strip().rstrip(".")
    return text[:1].lower() + text[1:]


class Group(click.Group):
    """Turns kernelcli's own errors and click's usage errors into one-line messages and exit codes,
    in one place (the group's own options are parsed in parse_args, a command's in invoke)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `kernelcli` alone prints the help
        except click.UsageError as exc:
            error(usage_message(exc))
            raise click.exceptions.Exit(exc.exit_code) from None

    def invoke(self, ctx):
        try:
            os.getcwd()
        except FileNotFoundError:  # torch's oneMKL aborts while loading there; relative paths lead nowhere
            error("the current folder no longer exists (deleted while in use?); cd to an existing folder and run again")
            ctx.exit(2)
        try:
            with runner.signals():  # SIGTERM as Ctrl-C, through the code's clean-up (exit 143)
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `kernelcli kernels` alone prints the group's help
        except click.UsageError as exc:
            error(usage_message(exc))
            ctx.exit(exc.exit_code)
        except KernelcliError as exc:
            error(message(exc))
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            _silence_stdout()
            ctx.exit(1)
        except (MemoryError, RuntimeError) as exc:  # an allocation failed (a batch fails that input alone)
            from ..compute.budget import out_of_memory

            reason = out_of_memory(exc)
            if reason is None:
                raise  # a bug: its traceback shows
            error(f"not enough memory ({reason}); --max-memory sets the budget jobs are checked against")
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside a batch (a batch says more)
            error("interrupted")
            ctx.exit(runner.interrupt_code(exc))


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kernelcli")
@common.no_server
@common.group_verbosity
def main():
    """Filter images with named convolution kernels, on the CPU or a GPU.

    \b
    Examples:
      kernelcli kernels list
      kernelcli kernels show sobel-right
      kernelcli apply -k sharpen photo.jpg              # writes photo-sharpen.jpg
      kernelcli apply -k blur -k outline in.png -o out.png
      kernelcli apply -k blur photos/ -o out/ --recursive
      cat in.png | kernelcli apply -k emboss - -o - > out.png
      kernelcli grid -k sobel-left -k sobel-right -k sharpen in.jpg -o grid.png
      kernelcli explain --size 32x32 -s sharpen -s "pool 2"
      kernelcli animate -k "0 1; 2 3" --padding valid samples/example-3x3.csv -o conv.gif

    Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error,
    3 some inputs of a batch failed, 130 interrupted (143 on SIGTERM).
    """


for _module in (kernels, apply, grid, toolkit, learn, explain, animate, server, bench):
    for _command in _module.COMMANDS:
        main.add_command(common.everywhere(_command))


def entry() -> None:
    """The ``kernelcli`` console script. Runs the click group, then, once torch has been
    imported, leaves without the interpreter's teardown: unloading torch costs about 0.3 s
    and there is nothing left to save (outputs are written and closed, streams flushed)."""
    code = run()
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


def run() -> int:
    """The click group on ``sys.argv``, streams flushed; the exit code (the server's workers call this)."""
    from ..console import guard_streams

    guard_streams()
    try:
        main(prog_name="kernelcli")
        code = 0
    except WriteError as exc:  # stdout failed outside a command (kernelcli --help >&-)
        error(str(exc))
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            _silence_stdout()
        except WriteError as exc:  # the last of stdout did not fit (a full disk)
            error(str(exc))
            code = code or 1
    return code
