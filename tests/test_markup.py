"""Text from kernel files, names and paths is shown as text on a terminal: never read as rich
markup, emoji codes or control sequences (issue 18, item 3)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from kernelcli.console import printable
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = ("see [/bold] here [link=file:///etc/passwd]x[/link] [blink]now[/blink] :warning: "
               "\x1b[31mred \u202egnp.exe")


def on_a_terminal(*args, cwd, timeout=25.0) -> tuple[int, bytes]:
    """Run kernelcli with stdout and stderr on a pseudo-terminal; (exit code, what it showed)."""
    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kernelcli", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=side, stderr=side, cwd=cwd, close_fds=True,
                            env={**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT), "COLUMNS": "300",
                                 "TERM": "xterm-256color"})
    os.close(side)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                try:
                    piece = os.read(main, 65536)
                except OSError:  # the other side closed
                    break
                if not piece:
                    break
                shown += piece
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), shown
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def hostile_library(tmp_path) -> Path:
    folder = tmp_path / "kd[/]"  # a path that is markup too
    folder.mkdir(parents=True)
    path = folder / "k.yaml"
    quoted = DESCRIPTION.replace("\x1b", "\\e").replace("\u202e", "\\u202E")
    path.write_text(f'version: 1\nkernels:\n  evil:\n    description: "{quoted}"\n    matrix: [[0, 1, 0]]\n')
    return path


def test_kernels_show_and_list_print_kernel_file_text_as_text(tmp_path):
    library = hostile_library(tmp_path)
    for command in (["kernels", "show", "evil"], ["kernels", "list"]):
        code, shown = on_a_terminal(*command, "--kernels", library, cwd=tmp_path)
        text = shown.decode("utf-8", "replace")
        assert code == 0, text
        assert "Traceback" not in text and "MarkupError" not in text
        assert "see [/bold] here [link=file:///etc/passwd]x[/link] [blink]now[/blink] :warning:" in text
        assert "\\x1b[31mred \\u202egnp.exe" in text  # escapes, shown
        assert b"\x1b]8;" not in shown  # no OSC 8 hyperlink
        assert b"\x1b[5m" not in shown  # no blink
        assert b"\x1b[31m" not in shown and "\u202e" not in text and "\u26a0" not in text  # no colour, override, emoji
    code, shown = on_a_terminal("kernels", "show", "evil", "--kernels", library, cwd=tmp_path)
    assert f"from {library}".encode() in shown  # the path, as written


def test_piped_kernels_list_keeps_one_line_per_kernel(tmp_path):
    library = tmp_path / "k.yaml"
    library.write_text('version: 1\nkernels:\n  two-lines:\n    description: "one\\ntwo\\tthree"\n'
                       '    matrix: [[0, 1, 0]]\n')
    result = run("kernels", "list", "--kernels", library)
    assert result.exit_code == 0
    assert "two-lines\t1x3\tone\\ntwo\\tthree\n" in result.stdout


def test_printable_escapes_what_a_terminal_would_act_on_and_keeps_the_rest():
    assert printable("a\nb\x1b[31m\x9b\u202e\u2028\u200bé ü 漢字 🙂") == \
        "a\\nb\\x1b[31m\\x9b\\u202e\\u2028\\u200bé ü 漢字 🙂"
