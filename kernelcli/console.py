"""Human output: everything here goes to stderr, except tables a user asked for on stdout."""

from __future__ import annotations

import io
import os
import sys

from .errors import WriteError

_CLOSED: set[str] = set()  # names of the standard streams that were closed when kernelcli started


class _Stream(io.RawIOBase):
    """fd 1 or 2 for writing. stdout: a failed write (full disk, closed at start) raises
    WriteError naming stdout, once; later writes are dropped so the exit stays quiet.
    stderr: failures are dropped (human text is best-effort; the work goes on)."""

    def __init__(self, fd: int, name: str):
        super().__init__()
        self.fd, self.name, self.failed = fd, name, False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return self.name not in _CLOSED and os.isatty(self.fd)

    def write(self, data) -> int:
        if self.failed:
            return len(data)
        if self.name in _CLOSED:
            reason = "closed (nothing can be printed; was it redirected with >&-?)"
        else:
            try:
                return os.write(self.fd, data)
            except BrokenPipeError:
                if self.name == "stdout":
                    raise  # the reader went away (`| head`): the CLI stops quietly
                reason = "broken pipe"
            except OSError as exc:
                reason = f"cannot write: {exc.strerror or exc}"
        self.failed = True
        if self.name == "stdout":
            raise WriteError(f"stdout: {reason}")
        return len(data)


def guard_streams() -> None:
    """Call first thing in the console script. A standard stream that is closed gets
    /dev/null on its descriptor, so no file kernelcli opens later can land on fd 0-2 (and
    receive text meant for a terminal); stdout and stderr become :class:`_Stream` writers:
    closed or full stdout is a one-line error, closed or full stderr never stops the work."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            _CLOSED.add(name)
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if "stdin" in _CLOSED:
        sys.stdin = open(0, "r", closefd=False)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        buffered = io.BufferedWriter(_Stream(fd, name))
        setattr(sys, name, io.TextIOWrapper(
            buffered, encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or ("backslashreplace" if name == "stderr" else "strict"),
            line_buffering=name == "stderr" or bool(old is not None and old.line_buffering), write_through=name == "stderr"))


def closed(name: str) -> bool:
    """Whether the standard stream ``name`` ('stdin', 'stdout', 'stderr') was closed at start."""
    return name in _CLOSED


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN = ("Cf", "Zl", "Zp")  # Unicode format characters (bidi overrides, zero widths) and line breaks


def printable(text: str) -> str:
    """``text`` with control characters escaped (newlines, ESC sequences, C1 codes) and the
    invisible ones that reorder or break what a terminal shows (U+202E, U+2028, zero widths): a
    file name can never break a line, drive the terminal or pose as another name. Every stderr
    message passes here, and every text from a file, a name or a path that rich prints (:func:`plain`)."""
    import unicodedata

    def one(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        if ord(c) < 32 or 127 <= ord(c) < 160:
            return f"\\x{ord(c):02x}"
        if ord(c) > 159 and unicodedata.category(c) in _HIDDEN:
            return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
        return c

    text = str(text)
    return text if text.isprintable() else "".join(map(one, text))


def plain(text) -> "object":
    """Text from a file, a name or a path as a rich ``Text``: shown as written, never read as
    markup (``[/bold]``, ``[link=…]``), emoji codes or control sequences."""
    from rich.text import Text

    return Text(printable(text))


def say(message: str, *, quiet: bool = False) -> None:
    """A status line on stderr (silenced by -q)."""
    if not quiet:
        print(printable(message), file=sys.stderr)


def warn(message: str) -> None:
    print(f"kernelcli: warning: {printable(message)}", file=sys.stderr)


def error(message: str) -> None:
    print(f"kernelcli: error: {printable(message)}", file=sys.stderr)


def stdout_console():
    """A rich console on stdout, for tables printed to a terminal."""
    from rich.console import Console

    # Piped or redirected: a wide page, so tables are not folded at 80 columns.
    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 240)


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
    from rich.text import Text

    from .kernels.analysis import FREQUENCY_WORDS

    out = stdout_console()
    out.print(Text.assemble((printable(info["name"]), "bold"), f"  {info['size'][0]}x{info['size'][1]}  ",
                            printable(info["description"])))
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
            out.print(Text("  ") + plain(part["name"]))
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
        source += f" (overrides {info['overrides']})"
    if info["aliases"]:
        source += f" · aliases: {', '.join(info['aliases'])}"
    out.print(plain(source))


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


def print_library(library) -> None:
    """``kernels list`` at a terminal: a table of the kernels, then the generators."""
    from rich.table import Table

    from .kernels.generate import GENERATORS, ROTATION_HELP

    table = Table("name", "size", "sum", "description", box=None, header_style="bold")
    for k in library:
        total = f"{sum(sum(r) for r in k.matrix) * k.scale / k.divisor:g}" if k.kind == "plain" else k.kind
        table.add_row(plain(k.name), "x".join(map(str, k.shape)), total, plain(k.description))
    console = stdout_console()
    console.print(table)
    console.print("\n[bold]generated[/] (usable wherever a name is):")
    for line in [*GENERATORS.values(), ROTATION_HELP]:
        console.print(f"  {line}")
