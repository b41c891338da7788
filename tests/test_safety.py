"""Every file kernelcli writes is an output: planned, checked before any work, kept inside
the folder the user named, written atomically, cleaned up on signals (issue 10)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def make_image(path: Path, seed: int = 0, size=(9, 11)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size).astype(np.uint8)).save(path)
    return path


def tree_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- 1. --report is an output


@pytest.fixture
def photos(tmp_path):
    make_image(tmp_path / "in" / "a.png", 1)
    make_image(tmp_path / "in" / "b.png", 2)
    return tmp_path / "in"


def test_report_onto_an_input_is_refused_before_any_work(photos, tmp_path):
    before = (photos / "a.png").read_bytes()
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", photos / "a.png", "--overwrite")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: --report {photos / 'a.png'}: is an input; choose another name\n"
    assert (photos / "a.png").read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_report_onto_an_existing_file_needs_overwrite(photos, tmp_path):
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", precious)
    assert result.exit_code == 2
    assert "precious.png: already exists; pass --overwrite" in result.stderr
    assert precious.read_bytes() == b"keep me" and not (tmp_path / "out").exists()
    ok = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", precious, "--overwrite")
    assert ok.exit_code == 0, ok.stderr
    assert [json.loads(line)["status"] for line in precious.read_text().splitlines()] == ["ok", "ok"]


def test_report_onto_another_output_is_refused(photos, tmp_path):
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", tmp_path / "out" / "a.png")
    assert result.exit_code == 2
    assert "is also an image output" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_dash_is_stdout_never_a_file(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", "-")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == ["a.png", "b.png"]
    assert not (tmp_path / "-").exists()


def test_report_with_image_on_stdout_is_refused(photos):
    result = run("apply", "-k", "blur", photos / "a.png", "-o", "-", "--report", "-")
    assert result.exit_code == 2 and "--report" in result.stderr and result.stdout == ""


def test_report_folder_problems_are_one_line(photos, tmp_path, monkeypatch):
    import kernelcli.io.images as images

    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", afile / "r.jsonl")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: --report {afile / 'r.jsonl'}: cannot write here: {afile} is not a folder\n"
    assert not (tmp_path / "out").exists()
    # a read-only folder (simulated: the tests may run as root, who may write anywhere)
    import kernelcli.run.batch as batch

    monkeypatch.setattr(batch.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", tmp_path / "ro" / "r.jsonl")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: --report {tmp_path / 'ro' / 'r.jsonl'}: cannot write here: "
                             f"no permission to write in {tmp_path / 'ro'}\n")
    monkeypatch.undo()
    # a missing folder is created, as for every output
    ok = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--report", tmp_path / "new" / "r.jsonl")
    assert ok.exit_code == 0 and len((tmp_path / "new" / "r.jsonl").read_text().splitlines()) == 2
    # a full disk when the report is written: one line, exit 1, no temp file
    real = images.write_atomic

    def full(path, data, **kw):
        if str(path).endswith(".jsonl"):
            raise images.WriteError(f"{path}: cannot write: No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(images, "write_atomic", full)
    bad = run("apply", "-k", "blur", photos, "-o", tmp_path / "out2", "--report", tmp_path / "r2.jsonl")
    assert bad.exit_code == 1
    assert "kernelcli: error: --report " in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- 2. --name stays inside


@pytest.mark.parametrize("template", ["../../{stem}{ext}", "{parent}/../../{stem}{ext}", "sub//{stem}{ext}"])
def test_name_template_cannot_leave_the_output_folder(photos, tmp_path, template):
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out" / "deep", "--name", template)
    assert result.exit_code == 2
    assert f"--name {template!r} gives " in result.stderr
    assert tree_of(tmp_path) == ["in", "in/a.png", "in/b.png"]


def test_absolute_template_is_refused(photos, tmp_path):
    template = str(tmp_path / "elsewhere" / "{stem}{ext}")
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--name", template)
    assert result.exit_code == 2 and "outside the folder" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_empty_parent_is_refused(photos, monkeypatch):
    monkeypatch.chdir(photos)
    result = run("apply", "-k", "blur", "a.png", "b.png", "--name", "{parent}/{stem}-x{ext}")
    assert result.exit_code == 2
    assert result.stderr.startswith("kernelcli: error: --name '{parent}/{stem}-x{ext}' gives /a-x.png, outside the "
                                    "folder .; a name may not be absolute")
    assert sorted(os.listdir(photos)) == ["a.png", "b.png"]


def test_parent_dot_dot_is_refused(photos, tmp_path, monkeypatch):
    (photos / "sub").mkdir()
    monkeypatch.chdir(photos / "sub")
    result = run("apply", "-k", "blur", "../a.png", "../b.png", "-o", tmp_path / "out", "--name", "{parent}/{stem}{ext}")
    assert result.exit_code == 2 and "outside the folder" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.png").exists()


def test_symlinked_folder_leading_out_is_refused(photos, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--name", "link/{stem}{ext}")
    assert result.exit_code == 2 and "leads to" in result.stderr and "outside the folder" in result.stderr
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_link_at_an_output_name_is_replaced_not_followed(photos, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere.png").write_bytes(b"not yours")
    (tmp_path / "out" / "a.png").symlink_to(tmp_path / "elsewhere.png")
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "elsewhere.png").read_bytes() == b"not yours"
    assert not (tmp_path / "out" / "a.png").is_symlink()


def test_templates_inside_the_folder_still_work(photos, tmp_path):
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--name", "{parent}/{kernel}/{stem}{ext}")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "in" / "blur").iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------- 10. long names


def test_long_output_names_use_short_temp_names_and_fail_alone(tmp_path):
    src = tmp_path / "in"
    make_image(src / "a.png")
    fits = make_image(src / ("f" * 240 + ".png"))  # output name: 240 + "-blur.png" = 249 bytes
    too_long = make_image(src / ("t" * 250 + ".png"))  # output name: 259 bytes
    out = tmp_path / "out"
    result = run("apply", "-k", "blur", src, "-o", out, "--name", "{stem}-{kernel}{ext}", "-j", "1")
    assert result.exit_code == 3, result.stderr
    assert f"{out / ('t' * 250 + '-blur.png')}: file name too long" in result.stderr
    assert sorted(os.listdir(out)) == sorted(["a-blur.png", fits.stem + "-blur.png"])
    assert "2 processed, 0 skipped, 1 failed" in result.stderr
    assert too_long.exists()


# ---------------------------------------------------------------- 11, 13. signals (real processes)

HARNESS = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import kernelcli.io.images as images, kernelcli.run.batch as batch, kernelcli.cli as cli, kernelcli.run.runner as runner
    marker, where = Path(sys.argv[1]), sys.argv[2]

    def stall():
        marker.touch()
        time.sleep(30)

    if where == "write":
        real_fdopen = os.fdopen

        class Slow:
            def __init__(self, fh):
                self.fh = fh
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.fh.close()
            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                stall()

        images.os.fdopen = lambda fd, mode: Slow(real_fdopen(fd, mode))
    elif where == "start-up":
        real_load = runner.load_library
        runner.load_library = lambda *a, **kw: (stall(), real_load(*a, **kw))[1]
    elif where == "batch":
        real_job = batch.process_job

        def slow_job(*a, **kw):
            marker.touch()
            time.sleep(3)
            return real_job(*a, **kw)

        batch.process_job = slow_job
    sys.argv = ["kernelcli", *sys.argv[3:]]
    cli.entry()
""")


def start(tmp_path, where, *args, stdin=None):
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(marker), where, *map(str, args)],
        stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate(timeout=10)
    return proc


def finish(proc):
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


SINGLE = {
    "apply-stdin": ["apply", "-k", "blur", "-", "-o", "out/x.png"],
    "upsample": ["upsample", SAMPLES / "camera.png", "-o", "out/x.png"],
    "grid": ["grid", "-k", "blur", SAMPLES / "camera.png", "-o", "out/x.png"],
    "pool": ["pool", SAMPLES / "camera.png", "-o", "out/x.png"],
    "transpose": ["transpose", "-k", "1 1; 1 1", SAMPLES / "example-3x3.csv", "-o", "out/x.npy"],
}


@pytest.mark.parametrize("command, signum, code", [(c, signal.SIGTERM, 143) for c in sorted(SINGLE)]
                         + [(c, signal.SIGINT, 130) for c in ("apply-stdin", "grid")])
def test_signal_during_a_single_write_leaves_nothing(tmp_path, command, signum, code):
    (tmp_path / "out").mkdir()
    with open(SAMPLES / "camera.png", "rb") as stdin:
        proc = start(tmp_path, "write", *SINGLE[command], stdin=stdin)
    assert any(n.endswith(".part") for n in os.listdir(tmp_path / "out"))  # caught in the write
    proc.send_signal(signum)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert err == "kernelcli: error: interrupted\n"
    assert os.listdir(tmp_path / "out") == []


def test_stale_temp_file_of_a_killed_run_is_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = start(tmp_path, "write", "pool", SAMPLES / "camera.png", "-o", "out/x.png")
    proc.kill()
    finish(proc)
    stale = [n for n in os.listdir(out) if n.endswith(".part")]
    assert len(stale) == 1
    (out / "other.part").write_text("not ours")
    from kernelcli.io.images import host_id

    ours_alive = out / f".kc-{host_id()}-{os.getpid()}-abcdefgh.part"  # a kernelcli still writing: left alone
    ours_alive.write_text("busy")
    with open(ours_alive, "rb+") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)  # what a live writer holds while its temp file exists
        result = run("apply", "-k", "blur", SAMPLES / "camera.png", "-o", out / "y.png")
    assert result.exit_code == 0, result.stderr
    assert f"{out / stale[0]}: removed a temporary file left by an interrupted kernelcli run" in result.stderr
    assert sorted(os.listdir(out)) == sorted([ours_alive.name, "other.part", "y.png"])


def test_ctrl_c_during_start_up_exits_130(tmp_path):
    make_image(tmp_path / "a.png")
    proc = start(tmp_path, "start-up", "apply", "-k", "blur", "a.png", "-o", "b.png")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 130 and "Aborted" not in err and "Traceback" not in err, err
    assert err == "kernelcli: error: interrupted\n"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_second_signal_mid_batch_still_ends_with_the_summary(tmp_path, signum, code):
    for i in range(6):
        make_image(tmp_path / "in" / f"{i}.png", i)
    proc = start(tmp_path, "batch", "apply", "-k", "blur", "in", "-o", "out", "-j", "1")
    proc.send_signal(signum)
    time.sleep(0.5)
    proc.send_signal(signum)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert "Aborted" not in err and "Traceback" not in err
    assert "(interrupted)" in err
    assert not list(tmp_path.rglob("*.part"))


# ---------------------------------------------------------------- 14. names printed escaped


def test_control_characters_in_file_names_are_escaped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "evil\n\x1b[31mred.png").write_bytes(b"not an image")
    make_image(folder / "fine.png")
    result = run("apply", "-k", "blur", folder, "-o", tmp_path / "out")
    assert result.exit_code == 3
    assert "evil\\n\\x1b[31mred.png: not a recognised image" in result.stderr
    assert "\x1b" not in result.stderr
    assert all(line.startswith(("kernelcli: error:", "1 processed", "  failed:")) for line in result.stderr.splitlines())


# ---------------------------------------------------------------- 15. a folder in the way


def test_directory_at_an_output_name_fails_that_input_only(photos, tmp_path):
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    result = run("apply", "-k", "blur", photos, "-o", tmp_path / "out", "--overwrite", "-j", "1")
    assert result.exit_code == 3, result.stderr
    assert f"{tmp_path / 'out' / 'a.png'}: is a directory; refusing to replace it" in result.stderr
    assert (tmp_path / "out" / "a.png").is_dir() and (tmp_path / "out" / "b.png").is_file()
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]


# ---------------------------------------------------------------- 16. learn --save through a link


def test_learn_save_writes_through_a_symlinked_library(tmp_path):
    target = tmp_path / "t.npy"
    assert run("apply", "-k", "laplacian", SAMPLES / "camera.png", "-o", target).exit_code == 0
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "lib.yaml"
    real.write_text("version: 1\nkernels:\n  other:\n    description: o\n    matrix: [[1]]\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    result = run("learn", SAMPLES / "camera.png", target, "--save", "my-lap", "--to", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "my-lap:" in real.read_text()
    assert sorted(os.listdir(tmp_path / "real")) == ["lib.yaml"]


def test_learn_save_to_dash_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("learn", SAMPLES / "camera.png", SAMPLES / "camera.png", "--save", "x", "--to", "-")
    assert result.exit_code == 2 and not (tmp_path / "-").exists()


# ---------------------------------------------------------------- 17. one rule for missing folders


@pytest.mark.parametrize("args", [
    ["apply", "-k", "blur", "-", "-o", "{d}/sub/x.png"],
    ["grid", "-k", "blur", SAMPLES / "camera.png", "-o", "{d}/sub/x.png"],
    ["pool", SAMPLES / "camera.png", "-o", "{d}/sub/x.png"],
    ["kernels", "show", "sharpen", "--image", "{d}/sub/x.png"],
])
def test_missing_output_folders_are_created_by_every_command(tmp_path, args):
    args = [str(a).format(d=tmp_path) for a in args]
    result = run(*args, input=(SAMPLES / "camera.png").read_bytes())
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "sub" / "x.png") as im:
        im.load()
    assert os.listdir(tmp_path / "sub") == ["x.png"]


# ---------------------------------------------------------------- 18. the umask is read once


def test_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    import kernelcli.io.images as images

    mask = os.umask(0o027)
    os.umask(mask)

    def no_umask(value):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(images.os, "umask", no_umask)
    images.write_atomic(tmp_path / "x.bin", b"data")
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o666 & ~mask
