"""URLs for inputs and outputs, against a real S3 server (SeaweedFS, see tests/servers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelcli.errors import ImageError
from kernelcli.run.batch import find_inputs
from kernelcli.io.storage import ObjectPath, StorageOptions, write
from tests.conftest import run
from tests.servers import BUCKET

ROOT = Path(__file__).resolve().parents[1]


def photos(folder: Path, rng, count=4) -> list[Path]:
    """Small RGB PNGs and one JPEG, one of them in a sub-folder."""
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i in range(count):
        arr = rng.integers(0, 256, (18 + i, 23, 3)).astype(np.uint8)
        path = folder / ("sub" if i == 0 else "") / f"p{i}.{'jpg' if i == 1 else 'png'}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def local_outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def s3_outputs(fs, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) + 1:]: fs.cat(k) for k in sorted(fs.find(prefix))}


def test_object_paths_name_like_paths():
    p = ObjectPath("s3://b/in/sub/photo.jpg")
    assert (p.bucket, p.key, p.name, p.stem, p.suffix) == ("b", "in/sub/photo.jpg", "photo.jpg", "photo", ".jpg")
    assert str(p.parent) == "s3://b/in/sub" and p.parent.name == "sub"
    assert str(p.with_name("x.png")) == "s3://b/in/sub/x.png"
    assert str(ObjectPath("s3://b/out/") / "a/./b.png") == "s3://b/out/a/b.png"
    assert not isinstance(p, os.PathLike)  # nothing local is ever opened under its name
    assert StorageOptions.parse(["anon=true", "client_kwargs.region_name=eu", "endpoint_url=http://h:1"]).kwargs() == {
        "anon": True, "client_kwargs": {"region_name": "eu"}, "endpoint_url": "http://h:1"}


def test_prefixes_are_folders(s3, prefix):
    fs = s3.fs()
    for key in ("p/a.png", "p/b.jpg", "p/notes.txt", "p/.hidden.png", "p/sub/c.png", "p2/sibling.png"):
        fs.pipe(f"{prefix}/{key}", b"x")

    def names(**kw):
        sources, bad = find_inputs([ObjectPath(f"s3://{prefix}/p")], **kw)
        assert bad == []
        return [s.rel.as_posix() for s in sources]

    assert names() == ["a.png", "b.jpg"]  # not p2/, not notes.txt, not hidden, not sub/ without -r
    assert names(recursive=True) == ["a.png", "b.jpg", "sub/c.png"]
    assert names(recursive=True, include=["*.png"], exclude=["sub/*"]) == ["a.png"]
    assert names(recursive=True, avoid=ObjectPath(f"s3://{prefix}/p/sub/")) == ["a.png", "b.jpg"]


def test_local_folder_to_s3_and_s3_to_local_folder_as_a_local_run(s3, prefix, tmp_path, rng):
    photos(tmp_path / "in", rng)
    local = run("apply", "-k", "sharpen", tmp_path / "in", "-o", tmp_path / "local", "-r", "-q")
    assert local.exit_code == 0, local.stderr
    result = run("apply", "-k", "sharpen", tmp_path / "in", "-o", f"s3://{prefix}/out/", "-r", "-q")
    assert result.exit_code == 0, result.stderr
    expected = local_outputs(tmp_path / "local")
    assert len(expected) == 4 and s3_outputs(s3.fs(), f"{prefix}/out") == expected

    back = run("apply", "-k", "blur", f"s3://{prefix}/out", "-o", tmp_path / "back", "-r", "--report",
               f"s3://{prefix}/run.jsonl", "-q")
    assert back.exit_code == 0, back.stderr
    reference = run("apply", "-k", "blur", tmp_path / "local", "-o", tmp_path / "back-local", "-r", "-q")
    assert reference.exit_code == 0
    assert local_outputs(tmp_path / "back") == local_outputs(tmp_path / "back-local")
    lines = [json.loads(line) for line in s3.fs().cat(f"{prefix}/run.jsonl").decode().splitlines()]
    assert sorted(r["input"] for r in lines) == sorted(f"s3://{prefix}/out/{k}" for k in expected)
    assert {r["status"] for r in lines} == {"ok"}


def test_skip_existing_resumes_on_s3(s3, prefix, tmp_path, rng):
    photos(tmp_path / "in", rng)
    out = f"s3://{prefix}/out/"
    assert run("apply", "-k", "emboss", tmp_path / "in", "-o", out, "-r", "-q").exit_code == 0
    fs = s3.fs()
    complete = s3_outputs(fs, f"{prefix}/out")
    fs.rm([f"{prefix}/out/p2.png", f"{prefix}/out/sub/p0.png"])  # an interrupted run
    result = run("apply", "-k", "emboss", tmp_path / "in", "-o", out, "-r", "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert "2 processed, 2 skipped, 0 failed" in result.stderr
    assert s3_outputs(fs, f"{prefix}/out") == complete


def test_an_existing_object_is_not_clobbered(s3, prefix, tmp_path, rng):
    photos(tmp_path / "in", rng)
    fs = s3.fs()
    fs.pipe(f"{prefix}/out/p3.png", b"mine")
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", f"s3://{prefix}/out/", "-r")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: s3://{prefix}/out/p3.png: already exists; pass --overwrite "
                             "to replace it or --skip-existing to keep it\n")
    assert s3_outputs(fs, f"{prefix}/out") == {"p3.png": b"mine"}  # nothing else written either


def test_writes_to_a_store_are_conditional_and_idempotent(s3, prefix):
    path = ObjectPath(f"s3://{prefix}/x.png")
    write(path, b"first")
    with pytest.raises(ImageError, match="already exists"):
        write(path, b"second")  # If-None-Match: the store itself refuses
    write(path, b"first", idempotent=True)  # a retried task finding its own output
    with pytest.raises(ImageError, match="already exists"):
        write(path, b"other", idempotent=True)
    assert s3.fs().cat(f"{prefix}/x.png") == b"first"
    write(path, b"second", overwrite=True)
    assert s3.fs().cat(f"{prefix}/x.png") == b"second"


def test_wrong_secret_is_a_usage_error_naming_the_bucket(s3, prefix, tmp_path, rng, monkeypatch):
    photos(tmp_path / "in", rng)
    s3.fs().pipe(f"{prefix}/in/a.png", (tmp_path / "in" / "p2.png").read_bytes())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # the server checks it
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", f"s3://{prefix}/out/", "-r")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: s3://{prefix}/out/: bucket '{BUCKET}': access denied (Forbidden); "
                             "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or --storage-option)\n")
    result = run("apply", "-k", "blur", f"s3://{prefix}/in/", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "access denied" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not s3.fs().exists(f"{prefix}/out")  # (the fixture's own file system has the right secret)


def test_a_missing_bucket_is_a_usage_error(s3, tmp_path, rng):
    photos(tmp_path / "in", rng)
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", "s3://no-such-bucket-kc/out/", "-r")
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: s3://no-such-bucket-kc/out/: bucket 'no-such-bucket-kc' does not exist\n"
    result = run("apply", "-k", "blur", "s3://no-such-bucket-kc/in/", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not s3.fs().exists("no-such-bucket-kc")
    assert not (tmp_path / "out").exists()


def test_local_runs_and_help_do_not_import_fsspec(tmp_path):
    code = (
        "import sys; from kernelcli.cli import main\n"
        "for argv in (['--help'], ['kernels', 'list'], ['apply', '--help'],\n"
        f"             ['apply', '-k', 'sharpen', {str(ROOT / 'samples' / 'camera.png')!r}, '-o', {str(tmp_path / 'x.png')!r}]):\n"
        "    try: main(argv)\n    except SystemExit: pass\n"
        "print(sorted(m for m in ('fsspec', 's3fs', 'distributed', 'dask') if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (tmp_path / "x.png").exists()
    assert proc.stderr.strip().endswith("[]"), proc.stderr


@pytest.fixture
def web(tmp_path):
    """A real read-only web server on loopback serving ``tmp_path/www``."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    (tmp_path / "www").mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_inputs_and_kernel_files_over_http_are_read_only(web, tmp_path):
    folder, url = web
    (folder / "camera.png").write_bytes((ROOT / "samples" / "camera.png").read_bytes())
    (folder / "k.yaml").write_text("version: 1\nkernels:\n  half-edge:\n    description: x\n    divisor: 2\n"
                                   "    matrix: [[1, 0, -1], [2, 0, -2], [1, 0, -1]]\n")
    (tmp_path / "k.yaml").write_text((folder / "k.yaml").read_text())
    result = run("apply", "--kernels", f"{url}/k.yaml", "-k", "half-edge", f"{url}/camera.png", "-o", tmp_path / "web.png")
    assert result.exit_code == 0, result.stderr
    local = run("apply", "--kernels", tmp_path / "k.yaml", "-k", "half-edge", folder / "camera.png", "-o",
                tmp_path / "local.png")
    assert local.exit_code == 0
    assert (tmp_path / "web.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    result = run("apply", "-k", "blur", folder / "camera.png", "-o", f"{url}/out.png")
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: {url}/out.png: http:// is read-only; write to a folder, s3:// or gs://\n"
    assert not (folder / "out.png").exists()
    result = run("apply", "-k", "blur", f"file://{folder}/camera.png", "-o", f"file://{tmp_path}/file.png")
    assert result.exit_code == 0 and (tmp_path / "file.png").exists()


def test_files_from_a_list_of_urls_in_the_store(s3, prefix, tmp_path, rng):
    paths = photos(tmp_path / "in", rng)
    fs = s3.fs()
    for p in paths:
        fs.pipe(f"{prefix}/in/{p.name}", p.read_bytes())
    fs.pipe(f"{prefix}/list.txt", f"s3://{prefix}/in/p2.png\ns3://{prefix}/in/p1.jpg\n".encode())
    result = run("apply", "-k", "sharpen", "--files-from", f"s3://{prefix}/list.txt", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1.jpg", "p2.png"]
    result = run("apply", "-k", "sharpen", f"s3://{prefix}/in/p2.png", "-o", "-")
    assert result.exit_code == 2 and "works with local files only" in result.stderr


def test_an_unreachable_endpoint_is_a_usage_error_naming_the_bucket(s3, tmp_path, rng):
    from tests.servers import free_port

    photos(tmp_path / "in", rng)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", f"s3://{BUCKET}/out/", "-r",
                 "--storage-option", f"endpoint_url={endpoint}", "--storage-option", "config_kwargs.retries.max_attempts=1")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: s3://{BUCKET}/out/: bucket '{BUCKET}': "
                             f"Could not connect to the endpoint URL: \"{endpoint}/{BUCKET}\"\n")
