"""Batches on real folders: planning, refusals, failures, resume, report, jobs, faults."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from tests.conftest import run, scipy_correlate, to_8bit
from tests.test_kernels import EXPECTED


def make_image(path: Path, seed: int, size=(9, 11)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, size).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


@pytest.fixture
def tree(tmp_path):
    """photos/a.png, photos/b c.png, photos/sub/ü.png, photos/sub/deeper/d.png"""
    root = tmp_path / "photos"
    arrays = {}
    for i, rel in enumerate(["a.png", "b c.png", "sub/ü.png", "sub/deeper/d.png"]):
        arrays[rel] = make_image(root / rel, i)
    return root, arrays


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def sharpened(arr):
    return to_8bit(scipy_correlate(arr.astype(float), EXPECTED["sharpen"], "replicate"))


def test_folder_recursive_mirrors_structure(tree, tmp_path):
    root, arrays = tree
    out = tmp_path / "out"
    result = run("apply", "-k", "sharpen", root, "-o", out, "--recursive", "--jobs", "2")
    assert result.exit_code == 0, result.stderr
    assert outputs(out) == sorted(arrays)
    for rel, arr in arrays.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / rel)), sharpened(arr))
    assert result.stdout == ""
    assert result.stderr == "4 processed, 0 skipped, 0 failed\n"


def test_without_recursive_only_the_top_folder(tree, tmp_path):
    root, _ = tree
    assert run("apply", "-k", "blur", root, "-o", tmp_path / "out").exit_code == 0
    assert outputs(tmp_path / "out") == ["a.png", "b c.png"]


def test_include_exclude(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out"
    assert run("apply", "-k", "blur", root, "-o", out, "-r", "--include", "*.png", "--exclude", "sub/deeper/*").exit_code == 0
    assert outputs(out) == ["a.png", "b c.png", "sub/ü.png"]


def test_beside_inputs_with_name_template(tree):
    root, _ = tree
    result = run("apply", "-k", "blur", root, "--name", "{parent}_{stem}.{kernel}{ext}")
    assert result.exit_code == 0, result.stderr
    assert (root / "photos_a.blur.png").exists() and (root / "photos_b c.blur.png").exists()


def test_unknown_template_field_is_refused(tree):
    result = run("apply", "-k", "blur", tree[0], "--name", "{stem}{size}")
    assert result.exit_code == 2
    assert "unknown field {size}" in result.stderr


def test_input_names_are_not_templates(tmp_path):
    make_image(tmp_path / "in" / "{kernel}.png", 1)
    assert run("apply", "-k", "blur", tmp_path / "in", "-o", tmp_path / "out").exit_code == 0
    assert outputs(tmp_path / "out") == ["{kernel}.png"]


def test_files_from_lines_and_nul(tree, tmp_path, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(root.parent)
    listing = "photos/a.png\nphotos/sub/ü.png\n"
    result = run("apply", "-k", "blur", "--files-from", "-", "-o", tmp_path / "o1", input=listing)
    assert result.exit_code == 0, result.stderr
    assert outputs(tmp_path / "o1") == ["photos/a.png", "photos/sub/ü.png"]
    nul = "photos/b c.png\0photos/sub/deeper/d.png\0"
    result = run("apply", "-k", "blur", "--files-from", "-", "-0", "-o", tmp_path / "o2", input=nul)
    assert result.exit_code == 0, result.stderr
    assert outputs(tmp_path / "o2") == ["photos/b c.png", "photos/sub/deeper/d.png"]


def test_corrupt_file_in_the_middle(tree, tmp_path):
    root, arrays = tree
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    report = tmp_path / "report.jsonl"
    result = run("apply", "-k", "sharpen", root, "-o", out, "-r", "--report", report)
    assert result.exit_code == 3
    assert f"kernelcli: error: {root / 'broken.png'}: cannot decode image" in result.stderr
    assert "4 processed, 0 skipped, 1 failed" in result.stderr
    assert f"  failed: {root / 'broken.png'}" in result.stderr
    assert outputs(out) == sorted(arrays)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == 5
    bad = [r for r in lines if r["status"] == "failed"]
    assert [Path(r["input"]).name for r in bad] == ["broken.png"] and "cannot decode" in bad[0]["error"]
    assert all(r["status"] == "ok" and r["error"] is None for r in lines if r is not bad[0])


def test_missing_named_path_stops_a_batch_before_any_work(tree, tmp_path):
    """Issue 22: a path named on the command line is checked before any work (exit 2, nothing
    written); a missing path in a --files-from list is a recorded failure (the batch goes on)."""
    root, _ = tree
    result = run("apply", "-k", "blur", root / "a.png", root / "nope.png", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: {root / 'nope.png'}: no such file\n"
    assert not (tmp_path / "out").exists()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{root / 'a.png'}\n{root / 'nope.png'}\n")
    result = run("apply", "-k", "blur", "--files-from", listing, "-o", f"{tmp_path / 'out'}/")
    assert result.exit_code == 3
    assert "nope.png: no such file" in result.stderr
    assert [p.name for p in (tmp_path / "out").rglob("*.png")] == ["a.png"]


def test_clobber_refused_before_any_work(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out"
    out.mkdir()
    (out / "b c.png").write_bytes(b"keep me")
    result = run("apply", "-k", "blur", root, "-o", out)
    assert result.exit_code == 2
    assert "b c.png: already exists" in result.stderr
    assert outputs(out) == ["b c.png"]  # a.png was not written either: nothing happened
    assert (out / "b c.png").read_bytes() == b"keep me"


def test_skip_existing_resumes(tree, tmp_path):
    root, arrays = tree
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"done before")
    result = run("apply", "-k", "sharpen", root, "-o", out, "--skip-existing")
    assert result.exit_code == 0
    assert "1 processed, 1 skipped, 0 failed" in result.stderr
    assert (out / "a.png").read_bytes() == b"done before"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b c.png")), sharpened(arrays["b c.png"]))


def test_output_equal_to_input_is_refused(tree):
    root, _ = tree
    result = run("apply", "-k", "blur", root, "--name", "{stem}{ext}", "--overwrite")
    assert result.exit_code == 2
    assert "is an input; refusing to overwrite it" in result.stderr


def test_two_inputs_onto_one_output_refused(tmp_path):
    make_image(tmp_path / "x" / "same.png", 1)
    make_image(tmp_path / "y" / "same.png", 2)
    result = run("apply", "-k", "blur", tmp_path / "x" / "same.png", tmp_path / "y" / "same.png", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "would both be written to" in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_input_folder_is_not_read_back(tree):
    root, arrays = tree
    out = root / "filtered"
    assert run("apply", "-k", "blur", root, "-o", out, "-r").exit_code == 0
    assert run("apply", "-k", "blur", root, "-o", out, "-r", "--skip-existing").stderr.startswith("0 processed, 4 skipped")


def test_each_writes_one_output_per_kernel(tmp_path):
    arr = make_image(tmp_path / "in.png", 3)
    result = run("apply", "-k", "sobel-left", "-k", "sobel-right", "--each", tmp_path / "in.png", "-o", tmp_path / "edges/")
    assert result.exit_code == 0, result.stderr
    assert outputs(tmp_path / "edges") == ["in-sobel-left.png", "in-sobel-right.png"]
    ref = to_8bit(scipy_correlate(arr.astype(float), EXPECTED["sobel-left"], "replicate"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "edges" / "in-sobel-left.png")), ref)


def test_format_conversion(tree, tmp_path):
    root, _ = tree
    assert run("apply", "-k", "blur", root, "-o", tmp_path / "out", "--format", "jpg", "--quality", "80").exit_code == 0
    assert outputs(tmp_path / "out") == ["a.jpg", "b c.jpg"]
    with Image.open(tmp_path / "out" / "a.jpg") as im:
        assert im.format == "JPEG"


def test_no_inputs_found(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("apply", "-k", "blur", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: no input images found in {tmp_path / 'empty'} (use --recursive for sub-folders)\n"
    assert not (tmp_path / "out").exists()


def test_jobs_do_not_change_the_output(tmp_path):
    for i in range(6):
        make_image(tmp_path / "in" / f"{i}.png", i, size=(40, 30))
    for jobs in (1, 2):
        assert run("apply", "-k", "unsharp-5x5", "-k", "emboss", tmp_path / "in", "-o", tmp_path / f"j{jobs}", "-j", jobs).exit_code == 0
    for i in range(6):
        assert (tmp_path / "j1" / f"{i}.png").read_bytes() == (tmp_path / "j2" / f"{i}.png").read_bytes()


def test_encoder_failure_mid_write_leaves_no_partial_and_keeps_the_old_file(tmp_path, monkeypatch):
    import kernelcli.io.images as images

    make_image(tmp_path / "in.png", 1)
    target = tmp_path / "in-blur.png"
    target.write_bytes(b"the old file")
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    result = run("apply", "-k", "blur", tmp_path / "in.png", "--overwrite")
    assert result.exit_code == 1
    assert f"{target}: cannot write: No space left on device" in result.stderr
    assert target.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-blur.png", "in.png"]


def test_destination_failure_stops_the_batch(tree, tmp_path, monkeypatch):
    import kernelcli.io.images as images

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.tempfile, "mkstemp", full)
    result = run("apply", "-k", "blur", tree[0], "-o", tmp_path / "out", "-r", "-j", "1")
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert result.stderr.count("cannot write") == 1  # stopped at the first
    assert "stopped: 0 processed" in result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_batch_keeps_finished_outputs_and_leaves_no_temp_files(tmp_path, signum, code):
    src = tmp_path / "in"
    count = 150  # about 2 s of work: the signal always arrives with files left to do
    for i in range(count):
        make_image(src / f"{i:03}.png", i, size=(200, 200))
    out = tmp_path / "out"
    big = ";".join([",".join(["1"] * 41)] * 41)  # a slow 41x41 box, so the batch takes a while
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelcli", "apply", "-k", big, "--map", "normalize", str(src), "-o", str(out), "-j", "1"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and any(out.glob("*.png"))):
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "(interrupted)" in err and "Traceback" not in err
    done = sorted(out.iterdir())
    assert 0 < len(done) < count
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p in done)
    for p in done:
        with Image.open(p) as im:
            im.load()  # every kept output is whole
    # resume finishes the rest
    rerun = subprocess.run(
        [sys.executable, "-m", "kernelcli", "apply", "-k", "blur", str(src), "-o", str(out), "--skip-existing", "-q"],
        capture_output=True, text=True,
    )
    assert rerun.returncode == 0 and len(list(out.iterdir())) == count


# --------------------------------------------------------------------------- runs beside the inputs (issue 13, defects 3 and 9)


def test_folder_run_beside_inputs_reruns_and_resumes(tmp_path):
    """Issue 13 defect 3: the outputs of `apply -k blur batch/` are not inputs of the next run."""
    batch = tmp_path / "batch"
    img = make_image(batch / "img.png", 1)
    assert run("apply", "-k", "blur", batch, "-q").exit_code == 0
    assert outputs(batch) == ["img-blur.png", "img.png"]
    again = run("apply", "-k", "blur", batch)
    assert again.exit_code == 2  # the output exists: refused as before, not "is an input"
    assert again.stderr == (f"kernelcli: error: {batch / 'img-blur.png'}: already exists; "
                            "pass --overwrite to replace it or --skip-existing to keep it\n")
    resumed = run("apply", "-k", "blur", batch, "--skip-existing")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.stderr == "0 processed, 1 skipped, 0 failed\n"
    sharpened_run = run("apply", "-k", "sharpen", batch)
    assert sharpened_run.exit_code == 0, sharpened_run.stderr
    assert outputs(batch) == ["img-blur.png", "img-sharpen.png", "img.png"]  # no img-blur-sharpen.png
    np.testing.assert_array_equal(np.asarray(Image.open(batch / "img-sharpen.png")), sharpened(img))
    chain = run("apply", "-k", "blur", "-k", "outline", "-k", "sharpen@90", "-k", "gaussian:1", batch)
    assert chain.exit_code == 0, chain.stderr
    assert run("apply", "-k", "blur", "-k", "outline", "-k", "sharpen@90", "-k", "gaussian:1", batch,
               "--skip-existing").stderr == "0 processed, 1 skipped, 0 failed\n"


def test_earlier_outputs_refiltered_when_named(tmp_path):
    """Issue 13 defect 3: a file named on the command line is always an input."""
    batch = tmp_path / "batch"
    make_image(batch / "img.png", 1)
    assert run("apply", "-k", "blur", batch, "-q").exit_code == 0
    result = run("apply", "-k", "sharpen", batch / "img.png", batch / "img-blur.png")
    assert result.exit_code == 0, result.stderr
    assert "img-blur-sharpen.png" in outputs(batch)


def test_look_alike_without_its_original_is_an_input(tmp_path):
    """Only a file beside its original counts as an output: photo-blur.png alone is an input,
    and so is photo-2.png beside photo.png (2 names no kernel)."""
    make_image(tmp_path / "in" / "photo-blur.png", 1)
    make_image(tmp_path / "in2" / "photo.png", 2)
    make_image(tmp_path / "in2" / "photo-2.png", 3)
    assert run("apply", "-k", "sharpen", tmp_path / "in", tmp_path / "in2", "-o", tmp_path / "out").exit_code == 0
    assert outputs(tmp_path / "out") == ["photo-2.png", "photo-blur.png", "photo.png"]


def test_rerun_with_a_name_template_skips_this_runs_outputs(tmp_path):
    """Issue 13 defect 3 with --name: a found file this run writes is not one of its inputs."""
    batch = tmp_path / "batch"
    make_image(batch / "img.png", 1)
    assert run("apply", "-k", "blur", batch, "--name", "{stem}_soft{ext}", "-q").exit_code == 0
    result = run("apply", "-k", "blur", batch, "--name", "{stem}_soft{ext}", "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "0 processed, 1 skipped, 0 failed\n"
    assert outputs(batch) == ["img.png", "img_soft.png"]


def test_files_from_never_reads_the_output_folder(tmp_path, monkeypatch):
    """Issue 13 defect 9: README's `find . -print0 | … --files-from - -0 -o out/` after a run into out/."""
    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "photos" / "a.png", 1)
    make_image(tmp_path / "photo.png", 2)
    assert run("apply", "-k", "blur", "photos/", "-o", "out/", "-r", "-q").exit_code == 0
    assert run("apply", "-k", "sharpen", "photo.png", "-q").exit_code == 0  # photo-sharpen.png beside it
    found = sorted(str(p) for p in Path(".").rglob("*.png"))
    assert "out/a.png" in found and "photo-sharpen.png" in found
    result = run("apply", "-k", "sharpen", "--files-from", "-", "-0", "-o", "out/",
                 input="\0".join(found).encode())
    assert result.exit_code == 0, result.stderr
    assert outputs(tmp_path / "out") == ["a.png", "photo.png", "photos/a.png"]  # no out/out/, no photo-sharpen
