"""kernelcli bench (kernelcli.bench)."""

from __future__ import annotations

import textwrap

import click

from ..bench import WORKLOADS
from ..console import say
from . import common
from .common import CONTEXT


def _help() -> str:
    listing = "\n".join(textwrap.fill(f"{name:<4} {what}", 96, subsequent_indent="     ") for name, what in WORKLOADS.items())
    return f"""Time kernelcli against ImageMagick and libvips on the same generated files.

    Every command is a whole process as a user runs it: kernelcli through the `kernelcli`
    command and its resident server (started for the run unless one runs; stopped after if
    bench started it; KERNELCLI_SERVER=off runs every call in its own process). The inputs are
    generated photo-like images, the same in every version. Peers run when convert/mogrify
    (ImageMagick) and vips (libvips-tools) are on PATH. --json prints the results for scripts:
    "rows" of workload, tool, median seconds, every run, peak MB, and "kernelcli_x" (kernelcli's
    time as a multiple of the peer's).

    \b
{textwrap.indent(listing, "    ")}

    \b
    Examples:
      kernelcli bench --only W2,W3,W9,W10 --repeat 5
      kernelcli bench --only W4 --json > bench.json
    """


def _names(ctx, param, value):
    from ..bench import check_names

    return check_names(value.split(",")) if value else None


@click.command(context_settings=CONTEXT, help=_help(), short_help="Time kernelcli against ImageMagick and libvips.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Runs of each command.")
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Where inputs and outputs go; an earlier bench's folder is reused  [default: a temporary folder].")
@click.option("--only", metavar="W1,W2,…", callback=_names, help="Run only these workloads.")
@click.option("--size", type=common.SHAPE, default="4000x6000", show_default=True, metavar="HxW",
              help="The big photo's height and width in pixels, N or HxW (W2, W3, W5, W9, W10).")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality for all tools.")
@click.option("--device", metavar="DEV", help="Passed to kernelcli's commands (e.g. cuda).")
@common.json_flag
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(repeat, workdir, only, size, quality, device, as_json, quiet):
    from ..bench import bench_in

    if min(size[:2]) < 16:
        raise click.BadParameter("the big photo is at least 16x16 pixels", param_hint="--size")
    data = bench_in(workdir, repeat=repeat, quality=quality, device=device, only=only, size=(size[1], size[0]),
                    log=(lambda m: None) if quiet else say)
    if as_json:
        common.echo_json(data)
    else:
        _print(data)


def _print(data: dict) -> None:
    """The results as a table on stdout."""
    from rich.table import Table

    from ..console import stdout_console

    out = stdout_console()
    m = data["machine"]
    load = m["load_average"]
    out.print(f"kernelcli {data['kernelcli']} · {m['cpus']} CPUs · {m['platform']} · Python {m['python']} · "
              f"torch {m['torch']} · medians of {data['repeat']} · load average "
              f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    table = Table("workload", "tool", "seconds", "runs", "kernelcli ×", "throughput", "peak MB", box=None,
                  header_style="bold")
    for r in data["rows"]:
        rate = (f"{r['files_per_second']} files/s" if "files_per_second" in r
                else f"{r['ms_per_call']} ms/call" if "ms_per_call" in r else "")
        table.add_row(r["workload"], r["tool"], f"{r['seconds']:.3f}", " ".join(f"{s:.2f}" for s in r["runs"]),
                      f"{r['kernelcli_x']:.2f}" if "kernelcli_x" in r else "", rate,
                      f"{r['peak_mb']:.0f}" if r["peak_mb"] else "")
    out.print(table)
    for name, phases in data["phases"].items():
        out.print(f"{name} in-process split, one thread: " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
    if data.get("server"):
        out.print(f"resident server: pid {data['server']['pid']}, idle memory {data['server']['idle_rss_mb']:.0f} MB")


COMMANDS = [bench]
