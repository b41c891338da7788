"""The benchmark's own machinery (the timings themselves are reported, not asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from kernelcli import bench

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_prepare_makes_the_workloads(tmp_path):
    w1, photo = bench.prepare(tmp_path, SAMPLES, count=5, big=(60, 40))
    files = sorted(w1.glob("*.jpg"))
    assert len(files) == 5
    for f in [*files, photo]:
        with Image.open(f) as im:
            assert im.size == ((60, 40) if f == photo else (512, 512))


def test_run_timed_reports_wall_time_memory_and_failure(tmp_path):
    wall, peak = bench.run_timed([sys.executable, "-c", "x = bytearray(80 << 20)"], tmp_path / "err")
    assert wall > 0 and peak >= 80
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        bench.run_timed([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "err")


def test_commands_include_peers_only_when_present(tmp_path):
    w1, photo = bench.prepare(tmp_path, SAMPLES, count=2, big=(60, 40))
    alone = bench.commands(tmp_path, w1, photo, {}, 90, None)
    assert set(alone["W1"]) == {"kernelcli"}
    both = bench.commands(tmp_path, w1, photo, {"convert": "convert", "mogrify": "mogrify", "vips": "vips"}, 90, "cuda")
    assert set(both["W2"]) == {"kernelcli", "imagemagick", "vips"}
    assert both["W2"]["kernelcli"][-2:] == ["--device", "cuda"]
    assert "gaussblur" in both["W3"]["vips"]


def test_ratios_and_targets():
    def result(workload, tool, seconds, peak=None):
        r = bench.Result(workload, tool, list(seconds), peak)
        return (workload, tool), r

    results = dict([
        result("start-up", "kernelcli", [1.0, 1.2, 1.1]),
        result("W1", "kernelcli", [2.0]), result("W1", "imagemagick", [2.5]),
        result("W2", "kernelcli", [1.5], 500), result("W2", "vips", [0.4]),
        result("W4 help", "kernelcli", [0.3]),
    ])
    data = bench.summarise(results, {}, {})
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["W1"]["value"] == pytest.approx(0.8) and targets["W1"]["met"]
    assert targets["W2"]["value"] == pytest.approx((1.5 - 1.1) / 0.4) and targets["W2"]["met"]
    assert not targets["W4 help"]["met"]
    assert targets["W5"]["value"] == 500 and targets["W5"]["met"]


def test_w6_loops_and_w7_pipes_call_the_client_and_the_peers(tmp_path):
    w1, photo = bench.prepare(tmp_path, SAMPLES, count=12, big=(60, 40))
    plan = bench.commands(tmp_path, w1, photo, {"convert": "/usr/bin/convert", "vips": "vips"}, 90, None)
    assert set(plan["W6"]) == {"kernelcli", "kernelcli --no-server", "imagemagick", "vips"}
    assert len(plan["W6"]["kernelcli"]) == 2 + 12 and len(plan["W6"]["kernelcli --no-server"]) == 2 + 10
    script = (tmp_path / "w6-kernelcli.sh").read_text()
    assert "-m kernelcli.client apply -k sharpen" in script and "--no-server" not in script
    assert "--no-server apply" in (tmp_path / "w6-kernelcli-cold.sh").read_text()
    assert plan["W7"]["kernelcli"][-1].count("kernelcli.client apply") == 3
    assert plan["W7"]["imagemagick"][-1].count("-morphology Correlate") == 3
    assert set(bench.commands(tmp_path, w1, photo, {}, 90, None)["W7"]) == {"kernelcli"}


def test_w6_w7_ratios_and_time_per_call():
    results = {
        ("W6", "kernelcli"): bench.Result("W6", "kernelcli", [6.0]),
        ("W6", "imagemagick"): bench.Result("W6", "imagemagick", [4.0]),
        ("W7", "kernelcli"): bench.Result("W7", "kernelcli", [0.5]),
        ("W7", "imagemagick"): bench.Result("W7", "imagemagick", [0.2]),
    }
    data = bench.summarise(results, {}, {})
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["W6"]["value"] == pytest.approx(1.5) and targets["W6"]["met"]
    assert targets["W7"]["value"] == pytest.approx(2.5) and not targets["W7"]["met"]
    assert {r["tool"]: r["ms_per_call"] for r in data["rows"] if r["workload"] == "W6"} == {"kernelcli": 60.0,
                                                                                          "imagemagick": 40.0}


def test_w8_compares_one_process_with_a_two_worker_cluster():
    from kernelcli import bench_w8

    cmds = bench_w8.commands("s3://b/w8/in/", 90, None)
    assert cmds["kernelcli local:2"][-2:] == ["--scheduler", "local:2"]
    assert "--scheduler" not in cmds["kernelcli"]
    assert {c[c.index("-o") + 1] for c in cmds.values()} == {"s3://kernelcli-bench/w8/out-local/",
                                                              "s3://kernelcli-bench/w8/out-dask/"}
    data = bench.summarise({("W8", "kernelcli"): bench.Result("W8", "kernelcli", [4.0])}, {}, {})
    assert data["rows"][0]["files_per_second"] == 250
