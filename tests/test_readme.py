"""The README's promises: its commands, its CI, its examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2
    assert "kernelcli apply" in commands[0] and "samples/" in commands[0]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines


def test_readme_worked_example_output_is_true():
    proc = subprocess.run(
        [sys.executable, "-m", "kernelcli", "apply", "-k", "0 1; 2 3", "--padding", "valid",
         str(ROOT / "samples" / "example-3x3.csv"), "-o", "-"],
        capture_output=True, text=True, check=True,
    )
    assert "$ kernelcli apply -k \"0 1; 2 3\" --padding valid samples/example-3x3.csv -o -\n" + proc.stdout in README


def test_every_command_of_the_learning_section_runs(tmp_path, monkeypatch):
    import shlex
    import shutil

    from click.testing import CliRunner

    from kernelcli.cli import main

    section = README.split("## Learn convolution with kernelcli", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)\n```", section, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("kernelcli ")]
    assert len(commands) >= 15
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = CliRunner().invoke(main, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}: {result.stderr}"


def test_readme_explain_example_is_what_explain_prints():
    """The README shows explain's terminal table; the same rows drawn for a terminal match it."""
    import json

    from click.testing import CliRunner

    from kernelcli.cli import main
    from kernelcli.explain import render

    args = ["explain", "-k", "sharpen", "--padding", "valid", "--stride", "2", "--size", "6x8"]
    rows = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert f"$ kernelcli {' '.join(args)}\n{render(rows, table=True)}```" in README
