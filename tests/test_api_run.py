"""The runner's Python API (kernelcli.apply_file, kernelcli.apply_paths): the same files as the
command, byte for byte, a Report with the counts, and the library's error for a refused output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import kernelcli
from kernelcli.errors import UsageError

from tests.conftest import run


def _image(path, seed=0, size=(24, 17)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_apply_file_writes_the_bytes_the_command_writes(tmp_path):
    src = _image(tmp_path / "a.png")
    assert run("apply", "-k", "sharpen", "-k", "blur", src, "-o", tmp_path / "cli.png").exit_code == 0
    report = kernelcli.apply_file(src, ["sharpen", "blur"], tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    assert (report.total, report.processed, report.skipped, report.failed, report.exit_code) == (1, 1, 0, [], 0)


def test_apply_file_names_the_output_beside_the_input(tmp_path):
    src = _image(tmp_path / "a.png")
    kernelcli.apply_file(str(src), ["emboss"])
    with Image.open(tmp_path / "a-emboss.png") as out:
        assert out.size == (24, 17)


def test_apply_paths_on_a_folder_matches_the_command(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        _image(tmp_path / "in" / name, seed=i)
    assert run("apply", "-k", "outline", tmp_path / "in", "-o", str(tmp_path / "cli") + "/", "-r", "-q").exit_code == 0
    report = kernelcli.apply_paths([tmp_path / "in"], ["outline"],
                                   batch=kernelcli.Batch(output=str(tmp_path / "api") + "/", recursive=True))
    assert (report.total, report.processed, report.skipped, len(report.failed), report.exit_code) == (3, 3, 0, 0, 0)
    for name in ["a.png", "b.png", "sub/c.png"]:
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    again = kernelcli.apply_paths([tmp_path / "in"], ["outline"], batch=kernelcli.Batch(
        output=str(tmp_path / "api") + "/", recursive=True, skip_existing=True))
    assert (again.processed, again.skipped) == (0, 3)


def test_apply_paths_records_a_bad_input_and_goes_on(tmp_path):
    (tmp_path / "in").mkdir()
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"not a png")
    report = kernelcli.apply_paths([tmp_path / "in"], ["blur"], batch=kernelcli.Batch(output=str(tmp_path / "out")))
    assert (report.total, report.processed, len(report.failed), report.exit_code) == (2, 1, 1, 3)
    assert report.failed[0][0].endswith("b.png")
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / "b.png").exists()


def test_an_existing_output_is_refused_with_the_library_error(tmp_path):
    src = _image(tmp_path / "a.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"mine")
    with pytest.raises(UsageError) as info:
        kernelcli.apply_file(src, ["sharpen"], out)
    assert "already exists" in str(info.value) and info.value.exit_code == 2
    assert out.read_bytes() == b"mine"
    report = kernelcli.apply_file(src, ["sharpen"], out, overwrite=True)
    assert report.processed == 1 and out.read_bytes() != b"mine"
