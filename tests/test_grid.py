"""Grids and kernel pictures: layout arithmetic, cell contents, labels, heatmaps."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelcli.teach.grid import LABEL_FONT_PX, NEGATIVE, POSITIVE

from tests.conftest import gray_image, run, scipy_correlate, to_8bit
from tests.test_kernels import EXPECTED

ROOT = Path(__file__).resolve().parents[1]
BAND = LABEL_FONT_PX + 8  # label band height


@pytest.fixture
def small(tmp_path, rng):
    """A 40 (high) x 30 (wide) gray image: smaller than the default cell, so not resized."""
    return gray_image(tmp_path, rng, (40, 30), "small.png")


def sheet(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    return np.asarray(Image.open(io.BytesIO(result.stdout_bytes)).convert("RGB"))


def expected_size(rows, cols, w=30, h=40, gap=8, band=BAND):
    return (rows * (band + h) + (rows + 1) * gap, cols * w + (cols + 1) * gap)


@pytest.mark.parametrize("extra, rows, cols, band", [
    ([], 1, 4, BAND),
    (["--no-labels"], 1, 4, 0),
    (["--transpose"], 4, 1, BAND),
    (["--cols", "2"], 2, 2, BAND),
    (["--gap", "0"], 1, 4, BAND),
])
def test_layout_one_input(small, extra, rows, cols, band):
    got = sheet(run("grid", "-k", "blur", "-k", "sharpen", "-k", "outline", small[0], "-o", "-", *extra))
    gap = 0 if "--gap" in extra else 8
    assert got.shape[:2] == expected_size(rows, cols, gap=gap, band=band)


def test_layout_several_inputs_and_transpose(small):
    path = small[0]
    got = sheet(run("grid", "-k", "blur", "-k", "emboss", path, path, path, "-o", "-"))
    assert got.shape[:2] == expected_size(3, 3)
    got = sheet(run("grid", "-k", "blur", "-k", "emboss", path, path, "-o", "-", "--transpose"))
    assert got.shape[:2] == expected_size(3, 2)


def cell(img, row, col, w=30, h=40, gap=8, band=BAND):
    x = gap + col * (w + gap)
    y = gap + row * (band + h + gap) + band
    return img[y:y + h, x:x + w]


def test_cells_equal_apply_of_the_same_kernel(small):
    path, arr = small
    got = sheet(run("grid", "-k", "sobel-right", "-k", "blur", "-k", "scharr-x", path, "-o", "-"))
    np.testing.assert_array_equal(cell(got, 0, 0)[..., 0], arr)
    for col, name in enumerate(["sobel-right", "blur"], start=1):
        ref = to_8bit(scipy_correlate(arr.astype(float), EXPECTED[name], "replicate"))
        np.testing.assert_array_equal(cell(got, 0, col)[..., 0], ref)
    # per-kernel default mapping: scharr-x maps with abs
    ref = to_8bit(np.abs(scipy_correlate(arr.astype(float), EXPECTED["scharr-x"], "replicate")))
    np.testing.assert_array_equal(cell(got, 0, 3)[..., 1], ref)


def test_inputs_are_downscaled_before_filtering(tmp_path, rng):
    arr = rng.integers(0, 256, (120, 90)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.png")
    got = sheet(run("grid", "-k", "sharpen", tmp_path / "big.png", "--cell", "60", "-o", "-", "--no-labels"))
    assert got.shape[:2] == expected_size(1, 2, w=45, h=60, band=0)
    small = np.asarray(Image.fromarray(arr).resize((45, 60), Image.Resampling.LANCZOS)).astype(float)
    ref = to_8bit(scipy_correlate(small, EXPECTED["sharpen"], "replicate"))
    np.testing.assert_array_equal(cell(got, 0, 1, w=45, h=60, band=0)[..., 0], ref)


def test_labels_drawn_or_not(small):
    path = small[0]
    with_labels = sheet(run("grid", "-k", "blur", path, "-o", "-"))
    band = with_labels[8:8 + BAND, 8:8 + 30]
    assert (band < 128).any()  # dark text on the white band
    without = sheet(run("grid", "-k", "blur", path, "-o", "-", "--no-labels"))
    assert without.shape[0] == with_labels.shape[0] - BAND


def test_all_includes_user_kernels(small, tmp_path, library):
    mine = tmp_path / "mine.yaml"
    mine.write_text("kernels:\n  my-one:\n    description: x\n    matrix: [[1]]\n")
    got = sheet(run("grid", "--all", "--kernels", mine, small[0], "-o", "-", "--gap", "0", "--no-labels"))
    usable = [k for k in library if k.kind != "multi-channel"]  # --all leaves channel mixers out
    assert got.shape[1] == (len(usable) + 2) * 30  # original + shipped + mine


def heat_cells(img: np.ndarray, rows: int, cols: int, px: int):
    return [[img[r * px + 4, c * px + 4] for c in range(cols)] for r in range(rows)]


def test_heatmap_cells_and_sign_colours(tmp_path):
    out = tmp_path / "k.png"
    result = run("kernels", "show", "sobel-right", "--image", out)
    assert result.exit_code == 0, result.stderr
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[:2] == (3 * 64 + 1, 3 * 64 + 1)
    for row, weights in zip(heat_cells(img, 3, 3, 64), EXPECTED["sobel-right"]):
        for colour, w in zip(row, weights):
            if w > 0:
                assert colour[0] > colour[2] + 40  # red side
            elif w < 0:
                assert colour[2] > colour[0] + 40  # blue side
            else:
                assert abs(colour[0] - colour[2]) < 5 and colour.min() > 230  # white
    # the strongest weights take the full palette ends
    assert tuple(heat_cells(img, 3, 3, 64)[1][2]) == POSITIVE
    assert tuple(heat_cells(img, 3, 3, 64)[1][0]) == NEGATIVE


def test_show_kernels_adds_a_band(small):
    plain = sheet(run("grid", "-k", "sharpen", small[0], "-o", "-"))
    shown = sheet(run("grid", "-k", "sharpen", small[0], "-o", "-", "--show-kernels"))
    assert shown.shape[0] > plain.shape[0]


def test_grid_refuses_to_clobber(small, tmp_path):
    out = tmp_path / "g.png"
    out.write_bytes(b"mine")
    result = run("grid", "-k", "blur", small[0], "-o", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_bytes() == b"mine"


def test_readme_picture_matches_the_current_code(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^kernelcli grid .*-o samples/grid\.png.*$", readme, re.M).group(0)
    args = shlex.split(command)[1:]
    args[args.index("samples/grid.png")] = str(tmp_path / "grid.png")
    args = [str(ROOT / a) if a.startswith("samples/") else a for a in args]
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    new = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(int)
    stored = np.asarray(Image.open(ROOT / "samples" / "grid.png").convert("RGB")).astype(int)
    assert new.shape == stored.shape
    assert np.abs(new - stored).mean() < 0.5
