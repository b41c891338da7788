"""One vocabulary across commands (issue 13): click's usage errors in kernelcli's one-line style."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run

SAMPLE = str(Path(__file__).resolve().parents[1] / "samples" / "camera.png")


@pytest.mark.parametrize("args, expected", [
    (["apply", "-k", "blur", "--map", "clamp", SAMPLE],
     "kernelcli: error: invalid value for '--map': 'clamp' is not one of 'clip', 'abs', 'offset', 'normalize'\n"),
    (["apply", "-k", "blur", "--stride", "0", SAMPLE],
     "kernelcli: error: invalid value for '--stride': 0 is not in the range x>=1\n"),
    (["apply", "-k", "blur", "--quality", "0", SAMPLE],
     "kernelcli: error: invalid value for '--quality': 0 is not in the range 1<=x<=100\n"),
    (["apply", "-k", "blur", "--jobs", "0", SAMPLE],
     "kernelcli: error: invalid value for '-j' / '--jobs': 0 is not in the range x>=1\n"),
    (["learn"], "kernelcli: error: missing argument 'INPUT'\n"),
    (["--bogus", "apply"], "kernelcli: error: no such option '--bogus'\n"),
    (["nosuchcommand"], "kernelcli: error: no such command 'nosuchcommand'\n"),
])
def test_click_usage_errors_are_one_kernelcli_line(args, expected):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr == expected
    assert result.stdout == ""


def test_unknown_option_keeps_clicks_suggestion_on_one_line():
    result = run("apply", "-k", "blur", "--verbos", SAMPLE)
    assert result.exit_code == 2
    assert result.stderr.startswith("kernelcli: error: no such option '--verbos'")
    assert "--verbose" in result.stderr and result.stderr.count("\n") == 1
    assert "Usage:" not in result.stderr


def test_group_without_command_still_prints_its_help():
    result = run("kernels")
    assert "Usage:" in result.output and "list" in result.output
