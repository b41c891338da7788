"""``kernelcli bench``: kernelcli against ImageMagick and libvips on the same files.

Workloads are generated from ``samples/`` (no downloads):
  W1  150 JPEGs of 512x512, sharpen, one process for the folder (mogrify -path; a vips loop)
  W2  one 6000x4000 JPEG, sharpen
  W3  the same photo, Gaussian blur sigma 5 (vips gaussblur, ImageMagick -blur 0x5)
  W4  kernelcli --help and kernelcli kernels list
  W5  peak memory of W2
  W6  100 calls in a shell loop, one 512x512 JPEG each, sharpen: the `kernelcli` client with a
      warm server, and in-process (--no-server, 10 calls); convert -morphology Correlate; vips conv
  W7  a 3-stage pipe (blur | emboss | sharpen) on one 512x512 JPEG, kernelcli and convert
  W8  1,000 small JPEGs S3 → S3, one process vs a 2-worker local Dask cluster (bench_w8.py)
Tools alternate within each repetition; the table shows medians.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SHARPEN_IM = "3x3: 0,-1,0 -1,5,-1 0,-1,0"
SHARPEN_VIPS = "3 3 1 0\n0 -1 0\n-1 5 -1\n0 -1 0\n"
PIPE_IM = ["3x3: 0.0625,0.125,0.0625 0.125,0.25,0.125 0.0625,0.125,0.0625", "3x3: -2,-1,0 -1,1,1 0,1,2", SHARPEN_IM]
W6_CALLS, W6_COLD_CALLS = 100, 10
TARGETS = {"W1": 0.9, "W2": 1.3, "W3": 1.5, "W4 help": 0.25, "W4 list": 0.3, "W5": 800, "W6": 1.5, "W7": 2.0}


@dataclass
class Result:
    workload: str
    tool: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def prepare(folder: Path, samples: Path, count: int = 150, big: tuple[int, int] = (6000, 4000),
            quality: int = 90) -> tuple[Path, Path]:
    """The W1 folder and the W2/W3 photo, made once from the sample photographs."""
    w1 = folder / "w1"
    photo = folder / "w2.jpg"
    sources = []
    for path in sorted(samples.glob("*.jpg")) + [samples / "camera.png"]:
        with Image.open(path) as im:
            sources.append(im.convert("RGB"))
    if not sources:
        raise FileNotFoundError(f"no sample photographs in {samples}")
    if len(list(w1.glob("*.jpg"))) != count:
        w1.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            im = sources[i % len(sources)]
            zoom = 1 + (i // len(sources)) % 5 * 0.15
            im = im.resize((round(im.width * zoom) + 1, round(im.height * zoom) + 1), Image.Resampling.LANCZOS)
            x = int(rng.integers(0, max(1, im.width - 512) + 1))
            y = int(rng.integers(0, max(1, im.height - 512) + 1))
            tile = ImageOps.fit(im.crop((x, y, x + 512, y + 512)), (512, 512))
            (ImageOps.mirror(tile) if i % 2 else tile).save(w1 / f"{i:03}.jpg", quality=quality)
    if not photo.exists():
        base = sources[0].resize(big, Image.Resampling.LANCZOS)
        noise = np.random.default_rng(1).normal(0, 4, (big[1], big[0], 3))  # real photos are not smooth
        pixels = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(photo, quality=quality)
    return w1, photo


def peers() -> dict[str, str]:
    """ImageMagick's convert/mogrify and libvips' vips, when they are the real programs."""
    found = {}
    for name in ("convert", "mogrify", "vips"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            version = subprocess.run([path, "--version" if name == "vips" else "-version"],
                                     capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ("ImageMagick" in version) or (name == "vips" and version.startswith("vips")):
            found[name] = path
    return found


# Runs the command and reports (wall seconds, peak KB, exit code). The wrapper is a small
# process: a child exec'd from this big one (fork or vfork) would inherit its memory peak.
_WRAPPER = (
    "import os, sys, time\n"
    "t = time.perf_counter()\n"
    "pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ,"
    " file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(time.perf_counter() - t, usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def run_timed(cmd: list[str], errfile: Path) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one process; raises if it fails."""
    with open(errfile, "w") as err:
        proc = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, *cmd], stdout=subprocess.PIPE,
                              stderr=err, text=True, check=True)
    wall, peak_kb, code = proc.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … failed ({code}): {errfile.read_text(errors='replace').strip()[-300:]}")
    return float(wall), int(peak_kb) / 1024


def commands(work: Path, w1: Path, photo: Path, tools: dict[str, str], quality: int, device: str | None):
    """{workload: {tool: argv}} for every tool that is present."""
    kc = [sys.executable, "-m", "kernelcli"]
    dev = ["--device", device] if device else []
    mask = work / "sharpen.mat"
    mask.write_text(SHARPEN_VIPS)
    files = sorted(str(p) for p in w1.glob("*.jpg"))
    out1 = {t: work / f"out-{t}" for t in ("kernelcli", "imagemagick", "vips")}
    for d in out1.values():
        d.mkdir(exist_ok=True)
    loop = work / "vips-loop.sh"
    loop.write_text(
        f'for f in "$@"; do "{tools.get("vips", "vips")}" conv "$f" "{out1["vips"]}/$(basename "$f")[Q={quality}]" '
        f'"{mask}" --precision integer || exit 1; done\n'
    )
    w = {
        **calls(work, files, tools, quality, dev),
        "start-up": {"kernelcli": [sys.executable, "-c", "import os, torch, kernelcli.cli, kernelcli.filters; os._exit(0)"]},
        "W1": {"kernelcli": kc + ["apply", "-k", "sharpen", str(w1), "-o", str(out1["kernelcli"]), "--quality",
                                  str(quality), "-q", "--overwrite"] + dev},
        "W2": {"kernelcli": kc + ["apply", "-k", "sharpen", str(photo), "-o", str(work / "w2-kernelcli.jpg"),
                                  "--quality", str(quality), "-q", "--overwrite"] + dev},
        "W3": {"kernelcli": kc + ["apply", "-k", "gaussian:5", str(photo), "-o", str(work / "w3-kernelcli.jpg"),
                                  "--quality", str(quality), "-q", "--overwrite"] + dev},
        "W4 help": {"kernelcli": kc + ["--help"]},
        "W4 list": {"kernelcli": kc + ["kernels", "list"]},
    }
    if "mogrify" in tools and "convert" in tools:
        w["W1"]["imagemagick"] = [tools["mogrify"], "-path", str(out1["imagemagick"]), "-morphology", "Correlate",
                                  SHARPEN_IM, "-quality", str(quality), *files]
        w["W2"]["imagemagick"] = [tools["convert"], str(photo), "-morphology", "Correlate", SHARPEN_IM,
                                  "-quality", str(quality), str(work / "w2-im.jpg")]
        w["W3"]["imagemagick"] = [tools["convert"], str(photo), "-blur", "0x5", "-quality", str(quality),
                                  str(work / "w3-im.jpg")]
    if "vips" in tools:
        w["W1"]["vips"] = ["bash", str(loop), *files]
        w["W2"]["vips"] = [tools["vips"], "conv", str(photo), f"{work / 'w2-vips.jpg'}[Q={quality}]", str(mask),
                           "--precision", "integer"]
        w["W3"]["vips"] = [tools["vips"], "gaussblur", str(photo), f"{work / 'w3-vips.jpg'}[Q={quality}]", "5"]
    return w


def calls(work: Path, files: list[str], tools: dict[str, str], quality: int, dev: list[str]) -> dict:
    """W6 (a shell loop of single-file calls) and W7 (a 3-stage pipe): what the resident server is for."""
    import shlex

    client = shlex.join([sys.executable, "-m", "kernelcli.client"])
    q = str(quality)
    out = work / "w6"
    out.mkdir(exist_ok=True)
    loops = {
        "kernelcli": f'{client} apply -k sharpen "$f" -o "{out}/k-$(basename "$f")" --quality {q} -q --overwrite {shlex.join(dev)}',
        "kernelcli --no-server": f'{client} --no-server apply -k sharpen "$f" -o "{out}/n-$(basename "$f")" --quality {q} -q '
                                 f'--overwrite {shlex.join(dev)}',
        "imagemagick": f'{shlex.quote(tools.get("convert", "convert"))} "$f" -morphology Correlate {shlex.quote(SHARPEN_IM)} '
                       f'-quality {q} "{out}/m-$(basename "$f")"',
        "vips": f'{shlex.quote(tools.get("vips", "vips"))} conv "$f" "{out}/v-$(basename "$f")[Q={q}]" "{work / "sharpen.mat"}" '
                f'--precision integer',
    }
    w6, w7 = {}, {}
    for tool, body in loops.items():
        if (tool == "imagemagick" and "convert" not in tools) or (tool == "vips" and "vips" not in tools):
            continue
        script = work / f"w6-{tool.split()[0]}{'-cold' if 'no-server' in tool else ''}.sh"
        script.write_text(f'for f in "$@"; do {body} || exit 1; done\n')
        count = W6_COLD_CALLS if "no-server" in tool else W6_CALLS
        w6[tool] = ["bash", str(script), *files[:count]]
    image = shlex.quote(files[0])
    stages = [f"{client} apply -k {k} - -o - --quality {q} {shlex.join(dev)}" for k in ("blur", "emboss", "sharpen")]
    w7["kernelcli"] = ["bash", "-o", "pipefail", "-c", f"{stages[0]} < {image} | {stages[1]} | {stages[2]} > {out}/pipe-k.jpg"]
    if "convert" in tools:
        im = shlex.quote(tools["convert"])
        w7["imagemagick"] = ["bash", "-o", "pipefail", "-c",
                             f"{im} {image} -morphology Correlate {shlex.quote(PIPE_IM[0])} -quality {q} jpg:- "
                             f"| {im} - -morphology Correlate {shlex.quote(PIPE_IM[1])} -quality {q} jpg:- "
                             f"| {im} - -morphology Correlate {shlex.quote(PIPE_IM[2])} -quality {q} {out}/pipe-m.jpg"]
    return {"W6": w6, "W7": w7}


def split(w1: Path, photo: Path, quality: int) -> dict[str, dict[str, float]]:
    """In-process seconds of decode, convolve and encode (one thread), for W1 and W2."""
    import torch

    from . import load_library
    from .filters import Options, apply_kernels
    from .images import encode, read

    sharpen = load_library().get("sharpen")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, files in (("W1", sorted(w1.glob("*.jpg"))), ("W2", [photo])):
            t = {"decode": 0.0, "convolve": 0.0, "encode": 0.0}
            for f in files:
                a = time.perf_counter()
                raster = read(f)
                b = time.perf_counter()
                result, _ = apply_kernels(raster, [sharpen], Options(stats=False))
                c = time.perf_counter()
                encode(result, "JPEG", quality=quality)
                t["decode"] += b - a
                t["convolve"] += c - b
                t["encode"] += time.perf_counter() - c
            out[name] = t
    finally:
        torch.set_num_threads(threads)
    return out


def bench(work: Path, samples: Path, *, repeat: int = 3, quality: int = 90, device: str | None = None,
          only=None, log=print) -> dict:
    """Run every workload ``repeat`` times, tools alternating; return medians, ratios, targets."""
    import contextlib

    from . import bench_w8

    w1, photo = prepare(work, samples, quality=quality)
    tools = peers()
    plan = commands(work, w1, photo, tools, quality, device)
    if only:
        plan = {k: v for k, v in plan.items() if k == "start-up" or k.split()[0] in only}
    server = None
    if "W6" in plan or "W7" in plan:
        server = warm_server(log)
    results: dict[tuple[str, str], Result] = {}
    phases: dict = {}
    with contextlib.ExitStack() as servers:  # [W8] a private S3 server while the workloads run
        if not only or "W8" in only:
            why = bench_w8.missing()
            if why:
                log(f"W8 skipped: {why}")
            else:
                log("W8: starting SeaweedFS and uploading 1,000 JPEGs")
                store = servers.enter_context(bench_w8.LocalS3(work))
                source = bench_w8.prepare(store, samples, quality=quality)
                plan["W8"] = bench_w8.commands(source, quality, device)
                plan["start-up"]["dask local:2"] = [sys.executable, "-c", bench_w8.CLUSTER_START_UP]
                saved = dict(os.environ)
                servers.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
                os.environ.update(store.env)  # the commands find the store in the standard places
                phases["W8 (100 files, S3)"] = bench_w8.split(store, source, quality)
        _repeat(plan, results, repeat, work, log)
        if "W8" in plan:
            log(f"W8: the cluster's 1,000 outputs are byte-identical to the local run's: {bench_w8.identical(store)}")
    if not only or "W1" in only:
        phases.update(split(w1, photo, quality))
    data = summarise(results, tools, phases)
    if server:
        data["server"] = server
    return data


def _repeat(plan, results, repeat, work, log) -> None:
    for rep in range(repeat):
        for workload, by_tool in plan.items():
            for tool, cmd in by_tool.items():
                if tool == "imagemagick" and workload == "W3" and rep > 0:
                    continue  # ImageMagick's -blur takes several seconds: once is enough
                log(f"[{rep + 1}/{repeat}] {workload} {tool}")
                wall, peak = run_timed(cmd, work / "stderr.txt")
                r = results.setdefault((workload, tool), Result(workload, tool))
                r.seconds.append(wall)
                r.peak_mb = max(r.peak_mb or 0, peak)
def warm_server(log) -> dict:
    """Start the resident server (unless one runs) for W6/W7; its status, with its idle memory."""
    from . import service as server

    info = server.start()
    log(f"server pid {info['pid']}, idle resident memory {int(info['rss_kb']) / 1024:.0f} MB")
    return {"pid": int(info["pid"]), "idle_rss_mb": round(int(info["rss_kb"]) / 1024, 1)}


def summarise(results, tools, phases) -> dict:
    def med(workload, tool):
        r = results.get((workload, tool))
        return r.median if r else None

    startup = med("start-up", "kernelcli") or 0.0
    rows = []
    for (workload, tool), r in results.items():
        row = {"workload": workload, "tool": tool, "seconds": round(r.median, 3), "runs": len(r.seconds),
               "peak_mb": round(r.peak_mb, 1) if r.peak_mb else None}
        if workload in ("W1", "W8"):
            row["files_per_second"] = round((150 if workload == "W1" else 1000) / r.median, 1)
        if workload == "W6":
            row["ms_per_call"] = round(1000 * r.median / (W6_COLD_CALLS if "no-server" in tool else W6_CALLS), 1)
        if workload == "W8":  # the work itself: less the start-up of the process, or of the cluster
            start = med("start-up", "dask local:2") if tool.endswith("local:2") else startup
            if start:
                row["after_start_up"] = round(r.median - start, 3)
                row["files_per_second_after_start_up"] = round(1000 / max(r.median - start, 1e-9), 1)
        if workload in ("W2", "W3"):
            row["megapixels_per_second"] = round(24 / r.median, 1)
            if tool == "kernelcli":
                row["after_start_up"] = round(r.median - startup, 3)
        rows.append(row)
    checks = []

    def check(name, value, limit, unit, what):
        if value is not None:
            checks.append({"target": name, "value": round(value, 3), "limit": limit, "unit": unit,
                           "met": value <= limit, "what": what})

    if med("W1", "imagemagick"):
        check("W1", med("W1", "kernelcli") / med("W1", "imagemagick"), TARGETS["W1"], "x mogrify",
              "whole process, 150 JPEGs")
    if med("W2", "vips"):
        check("W2", (med("W2", "kernelcli") - startup) / med("W2", "vips"), TARGETS["W2"], "x vips conv",
              "kernelcli after start-up vs vips whole process")
    if med("W3", "vips"):
        check("W3", (med("W3", "kernelcli") - startup) / med("W3", "vips"), TARGETS["W3"], "x vips gaussblur",
              "kernelcli after start-up vs vips whole process")
    if med("W6", "imagemagick") and med("W6", "kernelcli"):
        check("W6", med("W6", "kernelcli") / med("W6", "imagemagick"), TARGETS["W6"], "x convert",
              f"{W6_CALLS} calls in a shell loop, warm server")
    if med("W7", "imagemagick") and med("W7", "kernelcli"):
        check("W7", med("W7", "kernelcli") / med("W7", "imagemagick"), TARGETS["W7"], "x convert",
              "3-stage pipe, warm server")
    check("W4 help", med("W4 help", "kernelcli"), TARGETS["W4 help"], "s", "kernelcli --help")
    check("W4 list", med("W4 list", "kernelcli"), TARGETS["W4 list"], "s", "kernelcli kernels list")
    if ("W2", "kernelcli") in results:
        check("W5", results[("W2", "kernelcli")].peak_mb, TARGETS["W5"], "MB", "peak memory of W2")
    return {"start_up_seconds": round(startup, 3), "rows": rows, "targets": checks, "phases": phases,
            "peers": tools, "machine": machine()}


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def bench_in(workdir: str | None, samples: str | None, *, log=print, **kwargs) -> dict:
    """:func:`bench` in ``workdir`` (a new or empty folder, or one made by an earlier bench;
    default: a temporary folder, removed after), on the photos of ``samples`` (default: the
    repository's samples/)."""
    import tempfile

    from .errors import UsageError

    samples_dir = Path(samples) if samples else Path(__file__).resolve().parents[1] / "samples"
    if not (samples_dir / "camera.png").exists():
        raise UsageError(f"{samples_dir}: no sample photos here; pass --samples DIR (the repository's samples/)")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kernelcli-bench-"))
    mark = work / ".kernelcli-bench"  # bench replaces its own files here on every run: only in its own folder
    if workdir == "-" or (work.is_dir() and any(work.iterdir()) and not mark.exists()):
        raise UsageError(f"--workdir {workdir}: not a new or empty folder, nor one made by kernelcli bench; "
                         "bench replaces files in it, so give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    mark.touch()
    log(f"workloads in {work}")
    try:
        return bench(work, samples_dir, log=log, **kwargs)
    finally:
        if not workdir:  # our own temporary folder; a --workdir is the user's and stays
            shutil.rmtree(work, ignore_errors=True)
