"""The benchmark's own machinery: its inputs, commands, names and output (the timings
themselves are reported by ``kernelcli bench``, never asserted)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kernelcli import bench
from kernelcli.cli import main
from kernelcli.errors import UsageError

PEERS = {"convert": "/usr/bin/convert", "mogrify": "/usr/bin/mogrify", "vips": "/usr/bin/vips"}


def test_inputs_are_generated_the_same_every_time(tmp_path):
    """No file of the repository: an installed kernelcli makes the same inputs in any folder."""
    w1, photo = bench.prepare(tmp_path / "a", count=4, big=(90, 60))
    again, _ = bench.prepare(tmp_path / "b", count=4, big=(90, 60))
    files = sorted(w1.glob("*.jpg"))
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted(again.glob("*.jpg"))]
    for f in files:
        with Image.open(f) as im:
            assert im.size == (512, 512)
    with Image.open(photo) as im:
        assert im.size == (90, 60)
    before = photo.stat().st_mtime_ns
    bench.prepare(tmp_path / "a", count=4, big=(90, 60))  # reused, not made again
    assert photo.stat().st_mtime_ns == before
    bench.prepare(tmp_path / "a", count=4, big=(80, 60))
    with Image.open(photo) as im:
        assert im.size == (80, 60)


def test_generated_photos_look_like_photos():
    """Smooth areas, edges and noise: neither flat nor white noise."""
    a, b = bench.photo(200, 120, seed=3), bench.photo(200, 120, seed=4)
    assert a.shape == (120, 200, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, bench.photo(200, 120, seed=3))
    assert not np.array_equal(a, b)
    steps = np.abs(np.diff(a.astype(int), axis=1))
    assert 2 < np.median(steps) < 20  # neighbours are close (smooth, with noise)...
    assert steps.max() > 60  # ...except across edges
    assert a.std() > 20  # and colours vary across the picture


def test_run_timed_reports_wall_time_memory_and_failure(tmp_path):
    wall, peak = bench.run_timed([sys.executable, "-c", "x = bytearray(80 << 20)"], tmp_path / "err")
    assert wall > 0 and peak >= 80
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        bench.run_timed([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "err")


def test_kernelcli_runs_as_a_user_calls_it(tmp_path):
    """Through the ``kernelcli`` command (the server's client), the peers with the same masks."""
    w1, photo = bench.prepare(tmp_path, count=2, big=(60, 40))
    alone = bench.commands(tmp_path, w1, photo, {}, 90, None)
    assert {tool for tools in alone.values() for tool in tools} == {"kernelcli", "kernelcli --no-server"}
    both = bench.commands(tmp_path, w1, photo, PEERS, 90, "cuda")
    kc = bench.client()
    assert kc[-1].endswith("kernelcli") or kc[-1] == "kernelcli.server.client"
    for name, kernel in (("W2", "sharpen"), ("W3", "gaussian:5"), ("W9", "box:15"), ("W10", "log:2")):
        argv = both[name]["kernelcli"]
        assert argv[:len(kc)] == kc and argv[len(kc):len(kc) + 3] == ["apply", "-k", kernel]
        assert argv[-2:] == ["--device", "cuda"]
    assert both["W3"]["vips"][1] == "gaussblur" and both["W9"]["vips"][1] == "convsep"
    assert (tmp_path / "box15.mat").read_text() == "15 1 15 0\n" + " ".join(["1"] * 15) + "\n"
    mask = (tmp_path / "log2.mat").read_text().splitlines()
    assert mask[0] == "13 13 1 0" and len(mask) == 14 and both["W10"]["vips"][-2:] == ["--precision", "float"]
    memory = bench.memory_commands(both)
    assert set(memory) == {"W2", "W3", "W9", "W10"}
    assert memory["W3"] == kc + ["--no-server"] + both["W3"]["kernelcli"][len(kc):]


def test_only_takes_known_names_and_names_them_otherwise():
    assert bench.check_names(["w10", " W2", "W2"]) == ["W2", "W10"]
    with pytest.raises(UsageError, match="unknown workload W11; choose from W1, W2, W3, W4, W5, W6, W7, W8, W9, W10"):
        bench.check_names(["W2", "W11"])
    result = CliRunner().invoke(main, ["bench", "--only", "W2,X"])
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: --only: unknown workload X; choose from " + ", ".join(bench.WORKLOADS) + "\n"
    assert result.stdout == ""


def test_help_lists_every_workload():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for name, what in bench.WORKLOADS.items():
        assert f"\n  {name} " in result.stdout and what.split()[0] in result.stdout


def test_rows_show_medians_ratios_and_no_targets():
    def result(workload, tool, seconds, peak=None):
        return (workload, tool), bench.Result(workload, tool, list(seconds), peak)

    results = dict([
        result("W2", "kernelcli", [1.5, 0.5, 0.6], 12), result("W2", "vips", [0.4, 0.3, 0.5], 40),
        result("W5 W2", "kernelcli --no-server", [2.0], 450),
        result("W1", "kernelcli", [2.0]), result("W1", "imagemagick", [2.5], 30),
        result("W6", "kernelcli", [6.0]), result("W6", "imagemagick", [4.0]),
    ])
    data = bench.summarise(results, {}, {}, ["W1", "W2", "W5", "W6"])
    rows = {(r["workload"], r["tool"]): r for r in data["rows"]}
    assert rows["W2", "kernelcli"]["seconds"] == 0.6 and rows["W2", "kernelcli"]["runs"] == [1.5, 0.5, 0.6]
    assert rows["W2", "vips"]["kernelcli_x"] == 1.5  # 0.6 / 0.4
    assert rows["W2", "kernelcli"]["peak_mb"] is None  # the client's memory is not the call's
    assert rows["W5 W2", "kernelcli --no-server"]["peak_mb"] == 450 and rows["W2", "vips"]["peak_mb"] == 40
    assert rows["W1", "kernelcli"]["files_per_second"] == 75 and rows["W1", "imagemagick"]["kernelcli_x"] == 0.8
    assert {r["tool"]: r["ms_per_call"] for r in data["rows"] if r["workload"] == "W6"} == {"kernelcli": 60.0,
                                                                                          "imagemagick": 40.0}
    assert set(data) == {"kernelcli", "workloads", "rows", "phases", "peers", "machine"}
    assert "targets" not in json.dumps(data) and "met" not in data["rows"][0]


def test_w6_loops_and_w7_pipes_call_the_client_and_the_peers(tmp_path):
    w1, photo = bench.prepare(tmp_path, count=12, big=(60, 40))
    plan = bench.commands(tmp_path, w1, photo, {"convert": "/usr/bin/convert", "vips": "vips"}, 90, None)
    assert set(plan["W6"]) == {"kernelcli", "kernelcli --no-server", "imagemagick", "vips"}
    assert len(plan["W6"]["kernelcli"]) == 2 + 12 and len(plan["W6"]["kernelcli --no-server"]) == 2 + 10
    client = " ".join(bench.client())
    script = (tmp_path / "w6-kernelcli.sh").read_text()
    assert f"{client} apply -k sharpen" in script and "--no-server" not in script
    assert f"{client} --no-server apply" in (tmp_path / "w6-kernelcli-cold.sh").read_text()
    assert plan["W7"]["kernelcli"][-1].count(f"{client} apply") == 3
    assert plan["W7"]["imagemagick"][-1].count("-morphology Correlate") == 3
    assert set(bench.commands(tmp_path, w1, photo, {}, 90, None)["W7"]) == {"kernelcli"}


def test_w8_compares_one_process_with_a_two_worker_cluster():
    from kernelcli.bench import w8 as bench_w8

    cmds = bench_w8.commands("s3://b/w8/in/", 90, None)
    assert cmds["kernelcli local:2"][-2:] == ["--scheduler", "local:2"]
    assert "--scheduler" not in cmds["kernelcli"]
    assert {c[c.index("-o") + 1] for c in cmds.values()} == {"s3://kernelcli-bench/w8/out-local/",
                                                              "s3://kernelcli-bench/w8/out-dask/"}
    data = bench.summarise({("W8", "kernelcli"): bench.Result("W8", "kernelcli", [4.0])}, {}, {}, ["W8"])
    assert data["rows"][0]["files_per_second"] == 250


def test_a_tiny_workload_runs_and_prints_json(tmp_path, monkeypatch):
    """W2 on a 64x48 photo, once, without a server (KERNELCLI_SERVER=off: no server starts)."""
    monkeypatch.setenv("KERNELCLI_SERVER", "off")
    monkeypatch.setenv("PATH", "/nonexistent")  # no peers: kernelcli alone
    result = CliRunner().invoke(main, ["bench", "--only", "w2", "--size", "48x64", "--repeat", "1", "--json",
                                       "--workdir", str(tmp_path / "work"), "-q"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["workloads"] == {"W2": bench.WORKLOADS["W2"]} and data["size"] == [64, 48]
    assert data["server"] is None and data["peers"] == {}
    (row,) = data["rows"]
    assert (row["workload"], row["tool"], len(row["runs"])) == ("W2", "kernelcli", 1) and row["seconds"] > 0
    assert set(data["machine"]["load_average"]) == {"before", "after"}
    with Image.open(tmp_path / "work" / "w2-kernelcli.jpg") as im:
        assert im.size == (64, 48)


def test_bench_removes_its_temporary_folder_and_keeps_a_workdir(tmp_path, monkeypatch):
    import tempfile

    seen = []

    def fake_bench(work, **kwargs):
        (work / "w1").mkdir()
        (work / "w1" / "a.jpg").write_bytes(b"x")
        seen.append(work)
        return {"rows": []}

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bench, "bench", fake_bench)
    result = CliRunner().invoke(main, ["bench", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    assert seen and seen[0].parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "mine"
    assert CliRunner().invoke(main, ["bench", "--json", "-q", "--workdir", str(kept)]).exit_code == 0
    assert (kept / "w1" / "a.jpg").exists()  # the user's own --workdir stays


def test_bench_workdir_must_be_new_empty_or_its_own(tmp_path):
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"my holiday photo")
    result = CliRunner().invoke(main, ["bench", "--workdir", str(folder), "--only", "W4"])
    assert result.exit_code == 2 and "--workdir" in result.stderr
    assert os.listdir(folder) == ["photo.jpg"] and (folder / "photo.jpg").read_bytes() == b"my holiday photo"


def test_the_readme_performance_command_is_valid():
    """The command the README's Performance section gives to reproduce its table parses: its
    workloads exist and its options are bench's (running it takes minutes: bench does that)."""
    import re
    import shlex
    from pathlib import Path

    from kernelcli.cli.bench import bench as command

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    (line,) = re.findall(r"^.*kernelcli bench .*$", section.split("```sh", 1)[1].split("```", 1)[0], re.M)
    args = shlex.split(line.split("kernelcli bench", 1)[1])
    ctx = command.make_context("bench", args)
    assert ctx.params["only"] and set(ctx.params["only"]) <= set(bench.WORKLOADS)
    for name in ctx.params["only"]:
        assert f"| {name}" in section  # each workload it runs is in the table
