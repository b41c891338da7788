"""Human output: everything here goes to stderr, except tables a user asked for on stdout."""

from __future__ import annotations

import sys


def say(message: str, *, quiet: bool = False) -> None:
    """A status line on stderr (silenced by -q)."""
    if not quiet:
        print(message, file=sys.stderr)


def warn(message: str) -> None:
    print(f"kernelcli: warning: {message}", file=sys.stderr)


def error(message: str) -> None:
    print(f"kernelcli: error: {message}", file=sys.stderr)


def stdout_console():
    """A rich console on stdout, for tables printed to a terminal."""
    from rich.console import Console

    # Piped or redirected: a wide page, so tables are not folded at 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def format_weight(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if decimals else f"{value:.0f}"


def decimals_needed(values, limit: int = 4) -> int:
    """Fewest decimals (up to ``limit``) that print every value exactly, or ``limit``."""
    for d in range(limit + 1):
        if all(abs(round(v, d) - v) < 1e-12 for v in values):
            return d
    return limit


def render_matrix(weights) -> "object":
    """A rich Table of the weights, aligned on the decimal point, coloured by sign."""
    from rich.table import Table

    flat = [float(v) for row in weights for v in row]
    d = decimals_needed(flat)
    table = Table(show_header=False, box=None, padding=(0, 1))
    for _ in range(len(weights[0])):
        table.add_column(justify="right")
    for row in weights:
        cells = []
        for v in row:
            style = "bold red" if v > 0 else "bold blue" if v < 0 else "dim"  # as the heatmaps
            cells.append(f"[{style}]{format_weight(float(v), d)}[/]")
        table.add_row(*cells)
    return table


def print_kernel(info: dict) -> None:
    """``kernels show`` on stdout: the weights coloured by sign and what can be said of them."""
    from .kernels import FREQUENCY_WORDS

    out = stdout_console()
    out.print(f"[bold]{info['name']}[/]  {info['size'][0]}x{info['size'][1]}  {info['description']}")
    if info["kind"] == "plain":
        if info["divisor"] != 1 or info["scale"] != 1:
            out.print(f"written (× {info['scale']:g} / {info['divisor']:g}):")
            out.print(render_matrix(info["written"]))
            out.print("applied weights:")
        out.print(render_matrix(info["matrix"]))
        sep = "no"
        if info["separable"]:
            f = info["factors"]
            sep = f"yes: column {_vector(f['column'])} × row {_vector(f['row'])}"
        out.print(f"sum {info['sum']:g} · separable {sep} · anchor {tuple(info['anchor'])} · default map {info['map']}")
        out.print(f"symmetry: {', '.join(info['symmetry']) or 'none'}")
        freq = info["frequency"]
        out.print(f"frequency response: {freq['class']}, {FREQUENCY_WORDS[freq['class']]} "
                  f"(gain {freq['dc_gain']:.3g} at DC, peak {freq['peak_gain']:.3g} at "
                  f"{freq['peak_cycles_per_pixel']:g} cycles/pixel)")
    elif info["kind"] == "combined":
        out.print(f"{info['combine']} of the responses to:")
        for part in info["parts"]:
            out.print(f"  {part['name']}")
            out.print(render_matrix(part["matrix"]))
    else:
        out.print(f"{info['channels_out']} output x {info['channels_in']} input channels, "
                  f"{info['parameters']} parameters")
        for o, row in enumerate(info["weight"], 1):
            for i, matrix in enumerate(row, 1):
                out.print(f"  output {o} from input {i}:")
                out.print(render_matrix(matrix))
    source = f"from {info['source']}"
    if info["overrides"]:
        source += f" (overrides the kernel of the same name in {info['overrides']})"
    if info["aliases"]:
        source += f" · aliases: {', '.join(info['aliases'])}"
    out.print(source)


def _vector(values) -> str:
    return "[" + " ".join(f"{v:g}" for v in values) + "]"


def make_progress(total: int, quiet: bool = False):
    """A started rich progress bar on stderr (count, rate, ETA), or None when stderr is not
    a terminal or output is quiet. Call ``advance(n)`` and ``close()``."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} files/s" if task.speed else "")

    bar = Progress(BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("filtering", total=total)
    bar.start()

    class Handle:
        def advance(self, n=1):
            bar.advance(task, n)

        def close(self):
            bar.stop()

    return Handle()


def print_bench(data: dict, repeat: int) -> None:
    """The ``kernelcli bench`` tables on stdout."""
    from rich.table import Table

    out = stdout_console()
    m = data["machine"]
    out.print(f"{m['cpus']} CPUs · {m['platform']} · Python {m['python']} · torch {m['torch']} · {m['date']} · "
              f"medians of {repeat} · kernelcli start-up (interpreter + imports) {data['start_up_seconds']:.2f} s")
    table = Table("workload", "tool", "seconds", "after start-up", "throughput", "peak MB", box=None, header_style="bold")
    for r in data["rows"]:
        rate = (f"{r['files_per_second']} files/s" + (f" ({r['files_per_second_after_start_up']} after start-up)"
                                                       if "files_per_second_after_start_up" in r else "")
                if "files_per_second" in r
                else f"{r['megapixels_per_second']} MP/s" if "megapixels_per_second" in r else "")
        table.add_row(r["workload"], r["tool"], f"{r['seconds']:.3f}",
                      f"{r['after_start_up']:.3f}" if "after_start_up" in r else "", rate,
                      f"{r['peak_mb']:.0f}" if r["peak_mb"] else "")
    out.print(table)
    targets = Table("target", "measured", "limit", "met", "what", box=None, header_style="bold")
    for t in data["targets"]:
        targets.add_row(t["target"], f"{t['value']:.2f} {t['unit']}", f"{t['limit']} {t['unit']}",
                        "yes" if t["met"] else "NO", t["what"])
    out.print(targets)
    for name, phases in data["phases"].items():
        out.print(f"{name} in-process split, one thread: " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
