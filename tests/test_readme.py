"""The README's promises: its commands, its CI, its examples."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- the README's tour, typed in order

# Sections whose blocks are not run by the tour, and why (every other block of the README is run, in order).
NOT_RUN = {
    "Set up": "installs kernelcli (CI runs the test command; test_exactly_two_setup_commands_and_ci_runs_the_test_one)",
    "Shell completion": "lines for a shell's start-up file (tests/test_ux.py runs each shell's script)",
    "Performance": "times ImageMagick and libvips for minutes (tests/test_bench.py checks this command line)",
    "Running at scale": "needs an S3 store, a Dask cluster and Ray (tests/test_storage.py, tests/test_cluster.py)",
}


def blocks(text: str):
    """(section, language, body) of every fenced block, in order; section is the last '## ' heading."""
    section, out, fence = "", [], None
    for line in text.splitlines(keepends=True):
        if fence is not None:
            if line.rstrip() == "```":
                out.append((section, fence[0], "".join(fence[1:])))
                fence = None
            else:
                fence.append(line)
        elif line.startswith("```"):
            fence = [line[3:].strip()]
        elif line.startswith("## "):
            section = line[3:].strip()
    return out


def scratch(folder: Path) -> None:
    """The files the README's examples name, in an empty folder: small photos, a folder of them
    (with a sub-folder), in.png, a.jpg b.jpg c.jpg, and a copy of samples/."""
    from PIL import Image

    shutil.copytree(ROOT / "samples", folder / "samples")
    with Image.open(ROOT / "samples" / "chelsea.jpg") as img:
        small = img.convert("RGB").resize((96, 64))
    for name in ("photo.jpg", "a.jpg", "b.jpg", "c.jpg", "photos/p1.jpg", "photos/sub/p2.jpg", "in.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        small.save(folder / name)


def shell(line: str) -> tuple[int, bytes, str]:
    """One command line as a shell runs it, kernelcli in this process: stages joined by |, a final
    > FILE, cat and other programs as processes. Returns (exit code of the last stage, stdout, stderr)."""
    from click.testing import CliRunner

    from kernelcli.cli import main

    lexer = shlex.shlex(line, posix=True, punctuation_chars="|>")
    lexer.whitespace_split = True
    words = list(lexer)
    target = None
    if ">" in words:
        words, target = words[: words.index(">")], words[words.index(">") + 1]
    data, code, err = None, 0, ""
    while words:
        stage = words[: words.index("|")] if "|" in words else words
        words = words[len(stage) + 1:]
        if stage[0] == "kernelcli":
            result = CliRunner().invoke(main, stage[1:], input=data)
            data, code, err = result.stdout_bytes, result.exit_code, result.stderr
        else:
            proc = subprocess.run(stage, input=data, capture_output=True, timeout=60)
            data, code, err = proc.stdout, proc.returncode, proc.stderr.decode()
        assert code == 0, f"{line}: {' '.join(stage)}: exit {code}: {err}"
    if target:
        Path(target).write_bytes(data)
    return code, data, err


def run_blocks(text: str, name: str) -> int:
    """Every block of ``text`` (a README or a docs page) in order, in the current folder: sh lines
    and console `$` lines through :func:`shell` (a console block's output must match up to its
    `…`), a yaml block saved as my-kernels.yaml, python blocks executed. Returns the commands run."""
    ran = 0
    for section, language, body in blocks(text):
        if section in NOT_RUN:
            continue
        if language == "sh" and body.startswith("$ "):  # commands with their output shown
            language = "console"
        if language == "sh":
            for line in body.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                assert line.split()[0] in ("kernelcli", "cat", "find"), f"{name} ({section}): not run: {line}"
                _check_comment(line, shell(line))
                ran += 1
        elif language == "console":
            for command, shown in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n?)*)", body, re.M):
                _, out, _ = shell(command)
                if command.split()[1] != "explain":  # explain's terminal table: test_readme_explain_example_…
                    expected = shown.split("…")[0]
                    assert out.decode().startswith(expected), f"{name}: {command}"
                ran += 1
        elif language == "yaml":
            Path("my-kernels.yaml").write_text(body)
        elif language == "python":
            exec(compile(body, f"{name} ({section})", "exec"), {"__name__": "__readme__"})
            ran += 1
    return ran


def _check_comment(line: str, outcome) -> None:
    """A `kernelcli explain` line whose comment shows sizes (5x5 → 3x3 → …) gives those sizes."""
    command, _, comment = line.partition("  #")
    sizes = re.findall(r"\d+x\d+", comment)
    if not command.startswith("kernelcli explain") or "→" not in comment:
        return
    _, out, _ = shell(command + " --json")
    rows = json.loads(out)
    chain = ["x".join(map(str, rows[0]["input"][:2]))] + ["x".join(map(str, r["output"][:2])) for r in rows]
    assert sizes == chain, f"{line}: explain gives {' → '.join(chain)}"


def test_the_readme_typed_in_order_in_a_scratch_folder_works(tmp_path, monkeypatch):
    """Issue 22: every example of the README, in order, in one fresh folder (outputs of one example
    must not collide with the next); a Library snippet defines what it uses."""
    assert set(NOT_RUN) <= {section for section, _, _ in blocks(README)}
    scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_blocks(README, "README.md") >= 50


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_typed_in_order_works(tmp_path, monkeypatch, page):
    scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_blocks(page.read_text(), f"docs/{page.name}") >= 1


def test_the_options_page_lists_every_option_of_every_command():
    """docs/options.md: one table, a row per option, naming every command that takes it."""
    import click

    from kernelcli.cli import main

    rows = {}
    for line in (ROOT / "docs" / "options.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            for option in re.findall(r"`(-[^`]+)`", cells[0]):
                for name in option.split("/"):
                    rows[name] = cells[3]

    def walk(group, path=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name))
            else:
                yield " ".join((*path, name)), command

    missing = []
    for name, command in walk(main):
        for param in command.params:
            for option in getattr(param, "opts", ()) if isinstance(param, click.Option) else ():
                where = rows.get(option, "")
                if name not in re.findall(r"[a-z]+(?: (?:list|show|start|stop|status))?", where) \
                        and where != "every command":
                    missing.append(f"{name} {option}")
    assert not missing, f"docs/options.md does not list: {missing}"
    assert "docs/options.md" in README.split("## Set up")[0]  # linked from the Contents


def test_readme_explain_example_is_what_explain_prints():
    """The README shows explain's terminal table; the same rows drawn for a terminal match it."""
    import json

    from click.testing import CliRunner

    from kernelcli.cli import main
    from kernelcli.teach.explain import render

    args = ["explain", "-k", "sharpen", "--padding", "valid", "--stride", "2", "--size", "6x8"]
    rows = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert f"$ kernelcli {' '.join(args)}\n{render(rows, table=True)}```" in README
