"""Network peers: every request has a connect, a read and a total deadline and bounded retries,
a declared size is checked before reading, errors name the host; --storage-option values never
show in a message (issue 18, items 1, 2, 5, 7, 8).

The peers are real sockets on loopback that misbehave on purpose (never answer, trickle, declare
5 GiB); the store is the suite's real S3 server (tests/servers.py). Every wait is bounded.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kernelcli.errors import ImageError
from kernelcli.io.storage import ObjectPath, StorageOptions, filesystem, read_bytes
from tests.conftest import run
from tests.servers import BUCKET

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "samples" / "camera.png"


class Peer:
    """A TCP server on 127.0.0.1 that answers each connection with ``behave(conn)`` in a thread of
    its own; counts the connections. Stopped (listener and connections closed) by the fixture."""

    def __init__(self, behave):
        self.behave, self.connections, self.stopped = behave, 0, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(10)
            conn.recv(65536)  # the request
            self.behave(conn, self.stopped)
        except OSError:
            pass  # the client went away

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()
        for conn in self.open:
            conn.close()


def never_answers(conn, stopped):
    stopped.wait(60)


def declares_5_gib(conn, stopped):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5368709120\r\n\r\n")
    zeros = b"\0" * 65536
    while not stopped.is_set():
        conn.sendall(zeros)


def trickles(conn, stopped):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
    while not stopped.wait(0.5):
        conn.sendall(b"\0")


def streams_without_length(conn, stopped):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    while not stopped.is_set():
        conn.sendall(chunk)


@pytest.fixture
def peer():
    started = []

    def start(behave):
        started.append(Peer(behave))
        return started[-1]

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def no_store_credentials(monkeypatch):
    """Credentials that need no look-up (no instance metadata), for a store that is not there."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "KERNELCLI_STORAGE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


# ---------------------------------------------------------------- 1. deadlines and retries


def test_the_defaults_are_documented_and_reach_the_clients(no_store_credentials):
    from kernelcli.io.storage import Network

    net = StorageOptions.parse([]).network()
    assert net == Network(connect=10.0, read=20.0, total=120.0, retries=2)
    readme = (ROOT / "README.md").read_text()
    for setting in ("connect_timeout", "read_timeout", "total_timeout", "retries"):
        assert f"`{setting}`" in readme
    assert "10 s" in readme and "20 s" in readme and "120 s" in readme
    s3 = filesystem("s3", StorageOptions.parse(["read_timeout=7", "connect_timeout=3", "retries=4"]))
    assert (s3.connect_timeout, s3.read_timeout, s3.retries) == (3.0, 7.0, 1)  # botocore retries, s3fs does not
    assert s3.config_kwargs["retries"] == {"max_attempts": 4, "mode": "standard"}
    web = filesystem("http", StorageOptions.parse(["read_timeout=7", "connect_timeout=3"]))
    timeout = web.client_kwargs["timeout"]
    assert (timeout.total, timeout.sock_connect, timeout.sock_read) == (None, 3.0, 7.0)


def test_an_http_input_that_never_answers_fails_at_its_read_deadline_after_bounded_retries(peer, tmp_path):
    silent = peer(never_answers)
    start = time.monotonic()
    result = run("apply", "-k", "blur", f"{silent.url}/x.png", "-o", tmp_path / "o.png",
                 "--storage-option", "read_timeout=1", "--storage-option", "retries=1")
    assert time.monotonic() - start < 15
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"kernelcli: error: {silent.url}/x.png: cannot read: the web server sent no answer "
                             "for 1 s (2 attempts); --storage-option read_timeout=SECONDS waits longer\n")
    assert silent.connections == 2  # the first attempt and one retry
    assert not (tmp_path / "o.png").exists()


def test_a_trickling_web_server_meets_the_total_deadline_set_in_the_environment(peer, tmp_path, monkeypatch):
    slow = peer(trickles)  # a byte every half second: the read deadline never passes
    monkeypatch.setenv("KERNELCLI_STORAGE_OPTIONS", "total_timeout=2 read_timeout=5")
    start = time.monotonic()
    result = run("apply", "-k", "blur", f"{slow.url}/x.png", "-o", tmp_path / "o.png")
    assert time.monotonic() - start < 15
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"kernelcli: error: {slow.url}/x.png: cannot read: the web server did not finish "
                             "within 2 s; --storage-option total_timeout=SECONDS allows longer\n")


def test_an_s3_endpoint_that_never_answers_is_a_usage_error_naming_the_host(peer, tmp_path, no_store_credentials):
    silent = peer(never_answers)
    start = time.monotonic()
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{BUCKET}/out/", "--storage-option",
                 f"endpoint_url={silent.url}", "--storage-option", "read_timeout=1", "--storage-option", "retries=1")
    assert time.monotonic() - start < 15
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"kernelcli: error: s3://{BUCKET}/out/: bucket '{BUCKET}': host '127.0.0.1:{silent.port}' "
                             "sent no answer for 1 s (2 attempts); --storage-option read_timeout=SECONDS waits longer\n")
    assert silent.connections == 2


def test_network_settings_are_checked_before_any_work(tmp_path):
    for option, why in (("read_timeout=0", "give a number of seconds above 0"), ("retries=-1", "give a whole number"),
                        ("total_timeout=soon", "give a number of seconds above 0")):
        result = run("apply", "-k", "blur", "http://127.0.0.1:9/x.png", "-o", tmp_path / "o.png",
                     "--storage-option", option)
        assert result.exit_code == 2 and why in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------- 2. declared and undeclared sizes


def test_a_declared_5_gib_is_refused_before_reading(peer, tmp_path):
    big = peer(declares_5_gib)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "kernelcli", "apply", "-k", "blur", f"{big.url}/x.png", "-o",
                           tmp_path / "o.png"], capture_output=True, text=True, timeout=25,
                          env={**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"kernelcli: error: {big.url}/x.png: declares 5368709120 bytes, over the limit of "
                           "1073741824 bytes; refused\n")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib == before or peak_kib < 1_000_000  # well under the 1 GiB it would have read


def test_an_undeclared_stream_is_cut_at_the_limit(peer):
    endless = peer(streams_without_length)
    with pytest.raises(ImageError) as caught:
        read_bytes(ObjectPath(f"{endless.url}/x.png", StorageOptions.parse(["total_timeout=20"])), limit=1 << 20)
    assert str(caught.value) == f"{endless.url}/x.png: more than 1048576 bytes; refused"


# ---------------------------------------------------------------- 7. secrets


def test_a_malformed_option_never_shows_its_value(tmp_path):
    result = run("apply", "-k", "blur", CAMERA, "-o", "s3://b/out/", "--storage-option", "secret:XYZ-do-not-show")
    assert result.exit_code == 2
    assert result.stderr == ("kernelcli: error: --storage-option secret…: expected KEY=VALUE (the text itself is not "
                             "shown: it may hold a secret)\n")
    result = run("apply", "-k", "blur", CAMERA, "-o", "s3://b/out/", "--storage-option", "secret=$KC_NOT_SET_ANYWHERE")
    assert result.exit_code == 2
    assert result.stderr == ("kernelcli: error: --storage-option secret=$KC_NOT_SET_ANYWHERE: the environment "
                             "variable KC_NOT_SET_ANYWHERE is not set\n")


def test_secrets_from_a_file_or_the_environment(s3, prefix, tmp_path, monkeypatch):
    right = s3.secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-in-the-environment")
    (tmp_path / "secret").write_text(right + "\n")
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{prefix}/a.png", "--storage-option",
                 f"secret=@{tmp_path / 'secret'}", "--storage-option", f"key={s3.key}")
    assert result.exit_code == 0, result.stderr
    monkeypatch.setenv("KC_TEST_SECRET", right)
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{prefix}/b.png", "--storage-option",
                 "secret=$KC_TEST_SECRET", "--storage-option", f"key={s3.key}")
    assert result.exit_code == 0, result.stderr
    assert sorted(k.rsplit("/", 1)[1] for k in s3.fs().find(prefix)) == ["a.png", "b.png"]
    (tmp_path / "secret").write_text("a-wrong-secret-from-a-file\n")
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{prefix}/c.png", "--storage-option",
                 f"secret=@{tmp_path / 'secret'}", "--storage-option", f"key={s3.key}")
    assert result.exit_code == 2 and "access denied" in result.stderr
    assert "a-wrong-secret" not in result.stderr and right not in result.stderr


def test_messages_hide_secret_values():
    options = StorageOptions.parse(["secret=s3cr3t-value", "client_kwargs.aws_session_token=tok-123",
                                    "endpoint_url=http://store:9000"])
    assert options.redact("bad s3cr3t-value and tok-123 at http://store:9000") == "bad *** and *** at http://store:9000"
    assert "s3cr3t" not in repr(options)


# ---------------------------------------------------------------- 8. options a store does not take


@pytest.mark.parametrize("option, message", [
    ("bogus=1", "--storage-option bogus: s3:// (s3fs.core.S3FileSystem) has no option 'bogus'"),
    ("endpoint=http://h:1", "--storage-option endpoint: s3:// (s3fs.core.S3FileSystem) has no option 'endpoint'; "
                            "did you mean 'endpoint_url'?"),
    ("client_kwargs.bogus=1", "--storage-option client_kwargs.bogus: not an option of client_kwargs for s3://"),
])
def test_an_option_the_store_does_not_take_is_a_usage_error(option, message, tmp_path, no_store_credentials):
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{BUCKET}/out/", "--storage-option", option)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"kernelcli: error: {message}\n"


# ---------------------------------------------------------------- 8. orphaned multipart uploads


def test_an_upload_a_killed_run_left_is_aborted_by_the_next_run_in_that_prefix(s3, prefix, tmp_path):
    fs = s3.fs()
    key = f"{prefix.split('/', 1)[1]}/out/camera.png"
    other = f"{prefix.split('/', 1)[1]}/out/not-planned.png"
    for k in (key, other):  # what kill -9 leaves while s3fs uploads an object in parts
        upload = fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=k)
        fs.call_s3("upload_part", Bucket=BUCKET, Key=k, PartNumber=1, UploadId=upload["UploadId"], Body=b"x" * 1024)
    time.sleep(2 * 1.5 + 2)  # older than twice the total deadline of the next run (the store says whole seconds)
    result = run("apply", "-k", "blur", CAMERA, "-o", f"s3://{prefix}/out/", "--storage-option", "total_timeout=1.5")
    assert result.exit_code == 0, result.stderr
    assert (f"kernelcli: warning: s3://{BUCKET}/{key}: aborted an incomplete upload left by an interrupted "
            "kernelcli run") in result.stderr
    left = [u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=prefix.split("/", 1)[1]
                                         ).get("Uploads", [])]
    assert left == [other]  # only this run's own outputs are its business
    fs.call_s3("abort_multipart_upload", Bucket=BUCKET, Key=other, UploadId=fs.call_s3(
        "list_multipart_uploads", Bucket=BUCKET, Prefix=other)["Uploads"][0]["UploadId"])


# ---------------------------------------------------------------- 5. object keys that are not plain paths


def test_keys_with_dot_or_empty_parts_are_refused_by_name_and_never_planned_outside(s3, prefix, monkeypatch):
    from kernelcli.run.batch import find_inputs, plan

    s3.fs().pipe(f"{prefix}/in/a.png", CAMERA.read_bytes())
    inputs = ObjectPath(f"s3://{prefix}/in/")
    fs = inputs.fs
    real_find = fs._find
    odd = [f"{prefix}/in/../other/y.png", f"{prefix}/in/../../x.png", f"{prefix}/in//z.png", f"{prefix}/in/./w.png"]

    async def listing(path, *args, **kwargs):  # AWS S3 lists such keys as written; SeaweedFS normalises them
        found = await real_find(path, *args, **kwargs)
        return sorted([*found, *odd]) if path.rstrip("/").endswith("/in") else found

    monkeypatch.setattr(fs, "_find", listing)
    sources, bad = find_inputs([inputs], recursive=True)
    assert [str(s.path) for s in sources] == [f"s3://{prefix}/in/a.png"]
    assert sorted(j.error for j in bad) == sorted(
        f"s3://{key}: the key has an empty, '.' or '..' part, which cannot be mirrored inside the output folder; "
        "refused (rename the object)" for key in odd)
    out = ObjectPath(f"s3://{prefix}/out/")
    jobs = plan(sources, [()], out_dir=out, template="{stem}{ext}", ext_for=lambda s: s.path.suffix)
    assert [str(o.path) for j in jobs for o in j.outputs] == [f"s3://{prefix}/out/a.png"]
