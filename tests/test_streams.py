"""The standard streams and things that are not regular files, through real processes.

Every command: closed stdout (``>&-``) and full stdout (``> /dev/full``) give one line
``kernelcli: error: stdout: …`` and no traceback; closed stdin (``<&-``) is refused by
everything that reads it; closed stderr (``2>&-``) still does the work. FIFOs are never
opened blocking. Every process is bounded by a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelcli.errors import UsageError
from kernelcli.io.images import Raster, encode, read
from kernelcli.kernels.library import KernelLibrary

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
KCLI = [sys.executable, "-m", "kernelcli"]
TIMEOUT = 120


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams")
    Image.open(SAMPLES / "camera.png").convert("L").resize((32, 24)).save(folder / "in.png")
    for name in ("example-5x5.csv", "example-2x2.csv", "band-6x8.csv", "band-edges.csv"):
        shutil.copy(SAMPLES / name, folder / name)
    return folder


# Every command that prints on stdout: (label, arguments). Inputs are in the ``work`` folder.
PRINTING = {
    "help": ["--help"],
    "kernels list": ["kernels", "list"],
    "kernels show": ["kernels", "show", "sobel"],
    "kernels show --image -": ["kernels", "show", "sharpen", "--image", "-"],
    "explain": ["explain", "--size", "5x5", "-s", "sharpen"],
    "apply -o -": ["apply", "-k", "blur", "in.png", "-o", "-"],
    "grid -o -": ["grid", "-k", "blur", "in.png", "-o", "-"],
    "pool -o -": ["pool", "--size", "2", "example-5x5.csv", "-o", "-"],
    "upsample -o -": ["upsample", "example-2x2.csv", "-o", "-"],
    "transpose -o -": ["transpose", "-k", "0 1; 2 3", "example-2x2.csv", "-o", "-"],
    "learn": ["learn", "band-6x8.csv", "band-edges.csv", "--size", "1x2", "--padding", "valid"],
    "bench --help": ["bench", "--help"],
}
# Commands that read stdin when given -.
READING = {
    "apply -": ["apply", "-k", "blur", "-", "-o", "out-apply.png"],
    "apply --files-from -": ["apply", "-k", "blur", "--files-from", "-", "-o", "out-list/"],
    "grid -": ["grid", "-k", "blur", "-", "-o", "out-grid.png"],
    "pool -": ["pool", "-", "-o", "out-pool.png"],
    "upsample -": ["upsample", "-", "-o", "out-up.png"],
    "transpose -": ["transpose", "-k", "1", "-", "-o", "out-t.png"],
}
# Closed stderr: every command still does its work.
WORKING = {
    **PRINTING,
    "apply -o FILE": ["apply", "-k", "blur", "in.png", "-o", "stderr-closed.png"],
    "apply folder": ["apply", "-k", "blur", ".", "--include", "in.png", "-o", "stderr-closed-dir/"],
}
PLAIN = ("help", "kernels list", "kernels show", "explain", "bench --help")  # stdout compared: closed stderr vs not
CASES = ([("closed stdout", label, args, ">&-") for label, args in PRINTING.items()]
         + [("full stdout", label, args, "> /dev/full") for label, args in PRINTING.items()]
         + [("closed stdin", label, args, "<&-") for label, args in READING.items()]
         + [("closed stderr", label, args, "2>&-") for label, args in WORKING.items()]
         + [("plain", label, args, "") for label, args in PRINTING.items() if label in PLAIN])


def run(args, cwd, redirect="", stdin=None):
    """``kernelcli ARGS`` in ``cwd`` with a shell redirection such as ``>&-`` applied to it."""
    cmd = ["sh", "-c", f'exec "$0" "$@" {redirect}', *KCLI, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=TIMEOUT, stdin=stdin)


@pytest.fixture(scope="module")
def results(work):
    """Every (condition, command) run once, four processes at a time; each in its own copy of
    the inputs, so written files can be checked."""
    def one(case):
        condition, label, args, redirect = case
        folder = work.parent / f"run-{CASES.index(case)}"
        shutil.copytree(work, folder)
        return (condition, label), (run(args, folder, redirect, stdin=subprocess.DEVNULL if condition != "closed stdin"
                                        else None), folder)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, CASES))


def one_error_line(proc) -> str:
    text = proc.stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelcli: error: "), text
    return lines[0]


@pytest.mark.parametrize("label", PRINTING)
def test_closed_stdout_is_a_one_line_error(results, label):
    proc, _ = results["closed stdout", label]
    line = one_error_line(proc)
    assert "stdout" in line and "closed" in line, line
    # -o - is refused before any work (2); text found closed when printed is a runtime failure (1)
    assert proc.returncode == (2 if label.endswith(" -") else 1), line


@pytest.mark.parametrize("label", PRINTING)
def test_full_stdout_is_a_one_line_error(results, label):
    proc, _ = results["full stdout", label]
    line = one_error_line(proc)
    assert proc.returncode == 1 and line == "kernelcli: error: stdout: cannot write: No space left on device"


def test_closed_stdout_after_writing_a_file_is_fine(work, tmp_path):
    proc = run(["apply", "-k", "blur", str(work / "in.png"), "-o", str(tmp_path / "o.png")], work, ">&-")
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr and (tmp_path / "o.png").exists()


@pytest.mark.parametrize("label", READING)
def test_closed_stdin_is_refused(results, label):
    proc, folder = results["closed stdin", label]
    line = one_error_line(proc)
    assert proc.returncode == 2 and "stdin is closed" in line, line
    assert not list(folder.glob("out-*"))


def test_closed_stdin_does_not_matter_to_commands_that_do_not_read_it(work):
    proc = run(["kernels", "list"], work, "<&-")
    assert proc.returncode == 0 and b"sharpen\t3x3" in proc.stdout, proc.stderr


@pytest.mark.parametrize("label", WORKING)
def test_closed_stderr_still_does_the_work(results, label):
    proc, folder = results["closed stderr", label]
    assert proc.returncode == 0, label
    assert proc.stderr == b""
    if label in PLAIN:  # the same data on stdout as with stderr open
        assert proc.stdout == results["plain", label][0].stdout and proc.stdout
    if label == "apply -o FILE":
        assert (folder / "stderr-closed.png").exists()
    if label == "apply folder":
        assert (folder / "stderr-closed-dir" / "in.png").exists()
    if label in ("apply -o -", "grid -o -", "upsample -o -"):
        assert proc.stdout.startswith(b"\x89PNG") or proc.stdout[:1].isdigit()


def test_closed_stderr_text_never_lands_in_an_output(work, tmp_path):
    """With fd 2 closed, the next file opened would get fd 2 and receive the warnings."""
    folder = tmp_path / "w"
    shutil.copytree(work, folder)
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])  # warns: 2 frames
    proc = run(["apply", "-k", "identity", "anim.gif", "-o", "anim.png"], folder, "2>&-")
    assert proc.returncode == 0
    with Image.open(folder / "anim.png") as im:
        assert np.asarray(im.convert("L")).max() == 10


# --------------------------------------------------------------------------- not regular files


@pytest.fixture
def with_fifo(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "checkerboard-8x8.png", folder / "a.png")
    os.mkfifo(folder / "b.png")
    return folder


def test_fifo_in_a_folder_is_skipped_and_said(with_fifo, tmp_path):
    proc = run(["apply", "-k", "blur", str(with_fifo), "-o", str(tmp_path / "out") + "/"], tmp_path)
    text = proc.stderr.decode()
    assert proc.returncode == 0, text
    assert f"kernelcli: warning: {with_fifo / 'b.png'}: not a regular file" in text
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / "b.png").exists()


def test_fifo_in_files_from_is_skipped_and_said(with_fifo, tmp_path):
    listing = f"{with_fifo / 'a.png'}\n{with_fifo / 'b.png'}\n".encode()
    proc = subprocess.run(KCLI + ["apply", "-k", "blur", "--files-from", "-", "-o", str(tmp_path / "out") + "/"],
                          input=listing, capture_output=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"b.png: not a regular file (a FIFO, device or socket); skipped" in proc.stderr


def test_fifo_named_alone_is_a_usage_error(with_fifo, tmp_path):
    proc = run(["apply", "-k", "blur", str(with_fifo / "b.png"), "-o", str(tmp_path / "o.png")], tmp_path)
    assert proc.returncode == 2
    assert one_error_line(proc) == f"kernelcli: error: {with_fifo / 'b.png'}: not a regular file (a FIFO, device or socket)"


@pytest.mark.parametrize("command", [["pool"], ["upsample"], ["grid", "-k", "blur"]])
def test_fifo_named_to_single_file_commands_is_a_usage_error(with_fifo, tmp_path, command):
    proc = run([*command, str(with_fifo / "b.png"), "-o", str(tmp_path / "o.png")], tmp_path)
    assert proc.returncode == 2 and "not a regular file" in one_error_line(proc)


def test_fifo_named_in_a_batch_is_refused_before_any_work(with_fifo, tmp_path):
    proc = run(["apply", "-k", "blur", str(with_fifo / "a.png"), str(with_fifo / "b.png"),
                "-o", str(tmp_path / "out") + "/"], tmp_path)
    assert proc.returncode == 2
    assert one_error_line(proc) == f"kernelcli: error: {with_fifo / 'b.png'}: not a regular file (a FIFO, device or socket)"
    assert not (tmp_path / "out").exists()


def test_device_named_is_refused(tmp_path):
    proc = run(["apply", "-k", "blur", "/dev/zero", "-o", str(tmp_path / "o.png")], tmp_path)
    assert proc.returncode == 2 and "not a regular file" in one_error_line(proc)


def test_reader_never_blocks_on_a_fifo(tmp_path):
    """The library's reader, called directly on a FIFO that no one writes (the case a
    folder scan could still race into): refused at once, not a wait for a writer."""
    from kernelcli.errors import ImageError

    for name in ("f.png", "f.npy"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        outcome = []

        def attempt():
            try:
                read(fifo)
                outcome.append("read")
            except ImageError as exc:
                outcome.append(str(exc))

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(timeout=20)
        if thread.is_alive():  # blocked in open(): give it a writer and EOF so it ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout=20)
            pytest.fail(f"{name}: the reader waited for a writer")
        assert outcome == [f"{fifo}: not a regular file (a FIFO, device or socket); refused"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_a_run_blocked_on_a_list(tmp_path, signum):
    """--files-from a FIFO with no writer waits (a list may come from a slow producer), but a
    signal always ends the run."""
    os.mkfifo(tmp_path / "list")
    with subprocess.Popen(KCLI + ["apply", "-k", "blur", "--files-from", str(tmp_path / "list"), "-o", "out/"],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            time.sleep(3)  # let it reach the read (a signal before that ends it as well)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode != 0
    assert b"Traceback" not in err


# --------------------------------------------------------------------------- names and list contents


def test_path_over_255_bytes_is_a_one_line_error(work, tmp_path):
    long = "a" * 300 + ".png"
    proc = run(["apply", "-k", "blur", long, "-o", str(tmp_path / "o.png")], tmp_path)
    assert proc.returncode == 2 and one_error_line(proc) == f"kernelcli: error: {long}: File name too long"
    proc = run(["apply", "-k", "blur", long, str(work / "in.png"), "-o", str(tmp_path / "out") + "/"], tmp_path)
    assert proc.returncode == 2 and one_error_line(proc) == f"kernelcli: error: {long}: File name too long"
    assert not (tmp_path / "out").exists()  # named inputs are checked before any work


def test_long_and_binary_files_from_lists_are_recorded_failures(work, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(("a" * 300 + ".png\n").encode() + str(work / "in.png").encode() + b"\n\x00\xff\xfe.png\n")
    proc = run(["apply", "-k", "blur", "--files-from", str(listing), "-o", str(tmp_path / "out") + "/"], tmp_path)
    text = proc.stderr.decode(errors="replace")
    assert proc.returncode == 3 and "Traceback" not in text
    assert "File name too long" in text and "embedded null byte" in text
    assert (tmp_path / "out").exists()


# --------------------------------------------------------------------------- encodings a format cannot hold


def la_raster():
    gray = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    alpha = np.full((4, 4), 128, np.uint8)
    return Raster(gray, alpha=alpha)


@pytest.mark.parametrize("fmt", ["PPM", "BMP", "JPEG"])
def test_alpha_into_a_format_without_it_names_the_flag(fmt):
    with pytest.raises(UsageError, match=f"{fmt} cannot store transparency; pass --background COLOR"):
        encode(la_raster(), fmt)
    flat = encode(la_raster(), fmt, background=(255, 255, 255))
    assert flat  # flattened onto white: 128/255 of the gray, the rest white


def test_la_png_to_bmp_and_ppm_through_the_cli(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA").save(tmp_path / "la.png")
    for out in ("la.bmp", "la.ppm"):
        refused = run(["apply", "-k", "identity", "la.png", "-o", out], tmp_path)
        assert refused.returncode == 1 and "--background COLOR" in one_error_line(refused)
        ok = run(["apply", "-k", "identity", "la.png", "-o", out, "--background", "white"], tmp_path)
        assert ok.returncode == 0, ok.stderr
        with Image.open(tmp_path / out) as im:
            assert np.array_equal(np.asarray(im.convert("L")), gray)  # opaque: flattening changes nothing


def test_exif_over_64k_into_jpeg_is_a_one_line_error(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "x" * 70000  # ImageDescription
    Image.new("RGB", (8, 8), "red").save(tmp_path / "big-exif.png", exif=exif.tobytes())
    proc = run(["apply", "-k", "identity", "big-exif.png", "-o", "out.jpg"], tmp_path)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "EXIF data" in line and "does not fit in a JPEG" in line
    assert not (tmp_path / "out.jpg").exists()
    assert run(["apply", "-k", "identity", "big-exif.png", "-o", "out.png"], tmp_path).returncode == 0


# --------------------------------------------------------------------------- float images


def test_float_tiff_into_png_is_refused_not_clipped(tmp_path):
    values = (np.random.default_rng(0).random((20, 30)) * 1000).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    proc = run(["apply", "-k", "identity", "f.tif", "-o", "f.png"], tmp_path)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "--map normalize" in line and ".npy" in line
    assert not (tmp_path / "f.png").exists()
    ok = run(["apply", "-k", "identity", "f.tif", "-o", "f.png", "--map", "normalize"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    with Image.open(tmp_path / "f.png") as im:
        out = np.asarray(im).astype(float)
    expected = np.round((values - values.min()) * 255 / (values.max() - values.min()))
    assert np.abs(out - expected).max() <= 1
    assert run(["apply", "-k", "identity", "f.tif", "-o", "f2.tif"], tmp_path).returncode == 0


# --------------------------------------------------------------------------- aliases


def write_yaml(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_alias_equal_to_a_shipped_name_overrides_it_and_says_so(tmp_path):
    mine = write_yaml(tmp_path, "kernels:\n  my-edge:\n    description: mine\n    aliases: [sobel-left]\n"
                                "    matrix: [[1, -1]]\n")
    lib = KernelLibrary.load([mine])
    k = lib.get("sobel-left")
    assert k.name == "my-edge" and k.weights.tolist() == [[1.0, -1.0]]
    assert k.overrides.startswith("'sobel-left' from ") and k.overrides.endswith("kernels.yaml")
    proc = run(["kernels", "show", "sobel-left", "--kernels", str(mine)], tmp_path)
    assert proc.returncode == 0 and b"(overrides 'sobel-left' from " in proc.stdout


def test_alias_equal_to_a_shipped_alias_takes_only_the_alias(tmp_path):
    mine = write_yaml(tmp_path, "kernels:\n  my-edge:\n    description: mine\n    aliases: [sobel-x]\n"
                                "    matrix: [[1, -1]]\n")
    lib = KernelLibrary.load([mine])
    assert lib.get("sobel-x").name == "my-edge"
    assert "alias 'sobel-x' of 'sobel-right' from " in lib.get("sobel-x").overrides
    right = lib.get("sobel-right")  # the shipped kernel stays, without the alias it gave away
    assert right.weights.tolist() == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and "sobel-x" not in right.aliases
    assert [p.name for p in lib.get("sobel").parts] == ["sobel-right", "sobel-bottom"]
