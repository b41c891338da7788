"""One vocabulary across commands (issue 13): click's usage errors in kernelcli's one-line style."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run

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
    (["--bogus", "apply"], "kernelcli: error: no such option '--bogus'. Did you mean '--verbose'?\n"),
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


# -q/-v on every command that writes files, also before the command; one file is silent unless -v

@pytest.fixture
def small_png(tmp_path):
    from tests.conftest import gray_image
    import numpy as np

    path, _ = gray_image(tmp_path, np.random.default_rng(0), (12, 10), "in.png")
    return path


def writers(src, out):
    """Each command that writes a file, with its output at ``out``."""
    return {
        "apply": ["apply", "-k", "blur", src, "-o", out],
        "grid": ["grid", "-k", "blur", src, "-o", out],
        "pool": ["pool", src, "-o", out],
        "upsample": ["upsample", src, "-o", out],
        "transpose": ["transpose", "-k", "1 2; 3 4", src, "-o", out],
        "animate": ["animate", "-k", "1 2; 3 4", src, "-o", out],
        "kernels show --image": ["kernels", "show", "blur", "--image", out],
    }


@pytest.mark.parametrize("command", list(writers("x", "y")))
def test_a_single_written_file_is_silent_unless_verbose(small_png, command):
    out = small_png.with_name("out.png")
    args = writers(small_png, out)[command]
    n = 2 if command.startswith("kernels") else 1  # where the command's own options start
    for flags, said in [((), ""), (("-q",), ""), (("-v",), f"wrote {out}")]:
        for where in ("after", "before"):  # kernelcli apply -v … and kernelcli -v apply …
            line = [*args[:n], *flags, *args[n:]] if where == "after" else [*flags, *args]
            result = run(*line)
            assert result.exit_code == 0, (line, result.output)
            assert result.stderr.startswith(said) and (said or result.stderr == ""), (line, result.stderr)
            assert result.stderr.count("\n") == (1 if said else 0), (line, result.stderr)
            out.unlink()


def test_quiet_and_verbose_before_the_command_on_a_folder_run(tmp_path):
    from tests.conftest import gray_image
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        gray_image(folder, np.random.default_rng(1), (8, 8), name)
    loud = run("-v", "apply", "-k", "blur", folder, "-o", tmp_path / "v")
    assert loud.exit_code == 0, loud.output
    assert "a.png -> " in loud.stderr and "b.png -> " in loud.stderr
    quiet = run("-q", "apply", "-k", "blur", folder, "-o", tmp_path / "q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["a.png", "b.png"]


def test_learn_quiet_and_verbose(tmp_path, small_png):
    target = tmp_path / "t.npy"
    assert run("apply", "-k", "sharpen", small_png, "-o", target).exit_code == 0
    lib = tmp_path / "lib.yaml"
    normal = run("learn", small_png, target, "--save", "mine", "--to", lib)
    assert normal.exit_code == 0, normal.output
    assert normal.stderr.startswith("fit: ") and "saved" not in normal.stderr
    verbose = run("-v", "learn", small_png, target, "--save", "mine2", "--to", lib)
    assert verbose.stderr.endswith(f"saved 'mine2' to {lib}\n")
    quiet = run("learn", "-q", small_png, target)
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout.count("\n") == 3


def test_no_progress_bar_for_one_file(small_png, monkeypatch):
    from kernelcli import console
    from kernelcli.run import runner

    calls = []
    real = console.make_progress
    monkeypatch.setattr(runner, "make_progress", lambda total, quiet=False: calls.append((total, quiet)) or None)
    assert run("apply", "-k", "blur", small_png, "-o", small_png.with_name("o.png")).exit_code == 0
    assert calls == [(1, True)]
    assert real is console.make_progress
