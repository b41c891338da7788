"""Paths or URLs: local files through today's code, object stores and the web through fsspec.

``s3://`` (the ``kernelcli[s3]`` extra: s3fs), ``gs://`` (``kernelcli[gcs]``: gcsfs) and read-only
``http(s)://`` name objects; ``file://`` is a local path. Credentials and the endpoint come from
the standard places (``AWS_*`` variables including ``AWS_ENDPOINT_URL``, profiles, the Google
default credentials), plus ``--storage-option KEY=VALUE``. Local paths never import fsspec.

Object stores have no folders: a "folder" is a key prefix ending in ``/``. Writes are one PUT
(s3fs switches to a multipart upload that is completed only at the end for large objects), so
no partial object ever stands under a real key; without overwrite the PUT is conditional
(``If-None-Match: *``) where the store supports it. Access errors found while planning
(endpoint, credentials, missing bucket) are usage errors naming the bucket (exit 2).
"""

from __future__ import annotations

import difflib
import json
import os
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ImageError, UsageError, WriteError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
EXTRAS = {"s3fs": "kernelcli[s3]", "gcsfs": "kernelcli[gcs]", "aiohttp": "aiohttp"}
READ_ONLY = {"http", "https"}


def is_url(text) -> bool:
    """True for ``scheme://…`` text (``file://`` included) and for :class:`ObjectPath`."""
    return isinstance(text, ObjectPath) or bool(_URL.match(str(text)))


def as_path(text, options: "StorageOptions | None" = None):
    """A local :class:`Path` for paths and ``file://`` URLs, an :class:`ObjectPath` for the rest."""
    if isinstance(text, (ObjectPath, Path)):
        return text
    match = _URL.match(str(text))
    if not match:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme == "file":
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(str(text)).path))
    if scheme not in SCHEMES:
        raise UsageError(f"{text}: unsupported URL scheme {scheme!r}; use s3://, gs://, http(s):// or file://")
    return ObjectPath(str(text), options or StorageOptions())


def locate(text, options: "StorageOptions"):
    """A command-line path as the rest of kernelcli takes it: local text as given (``file://``
    turned into its path), an :class:`ObjectPath` carrying ``options`` for store and web URLs."""
    if not is_url(text):
        return text
    path = as_path(text, options)
    return str(path) if isinstance(path, Path) else path


def is_dir(path) -> bool:
    """A local folder, or a prefix ("folder") in a store."""
    return path.is_dir() if isinstance(path, ObjectPath) else os.path.isdir(path)


def check_output(output, *, listing: bool):
    """Before planning: a store output's bucket answers (usage errors otherwise); with
    ``listing`` (an output folder) its keys are listed once for the no-clobber checks.
    Returns the output to plan with."""
    if isinstance(output, ObjectPath):
        check_bucket(output, write=True)
        if listing:
            return prime(output)
    return output


# --------------------------------------------------------------------------- options


ENV_OPTIONS = "KERNELCLI_STORAGE_OPTIONS"  # KEY=VALUE words, taken before the command line's --storage-option
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|key|auth", re.IGNORECASE)
MAX_SECRET_FILE = 1 << 16


@dataclass(frozen=True)
class Network:
    """Deadlines and retries of every request kernelcli makes to a store or a web server.

    ``connect``: seconds to open a connection; ``read``: the longest silence while waiting for
    or reading an answer; ``total``: one whole operation (an object read or written, a listing),
    its retries included, so a server that trickles a byte a second ends too; ``retries``:
    further attempts after a connection error, a timeout or a server error (5xx, throttling).
    """

    connect: float = 10.0
    read: float = 20.0
    total: float = 120.0
    retries: int = 2


# --storage-option keys that are kernelcli's own (seconds, or a count), never passed to fsspec
NETWORK_OPTIONS = {"connect_timeout": "connect", "read_timeout": "read", "total_timeout": "total",
                   "retries": "retries"}


@dataclass(frozen=True)
class StorageOptions:
    """Keyword arguments for the fsspec file system (``--storage-option KEY=VALUE``) and the
    network settings (:class:`Network`), as a value. Its repr never shows the values."""

    items: tuple = field(default=(), repr=False)

    @classmethod
    def parse(cls, pairs=(), environ=None) -> "StorageOptions":
        """``KEY=VALUE`` texts after those of ``$KERNELCLI_STORAGE_OPTIONS``; VALUE is read as JSON
        when it is JSON (true, 3, {"a": 1}), else text; ``KEY=@FILE`` takes the value from a file
        (a trailing newline dropped), ``KEY=$NAME`` from the environment variable NAME (quote it
        from the shell: ``'secret=$MY_SECRET'``); ``a.b=V`` nests (``client_kwargs.region_name=eu-west-1``).
        Messages name the key, never the value."""
        environ = os.environ if environ is None else environ
        try:
            from_env = shlex.split(environ.get(ENV_OPTIONS, ""))
        except ValueError:
            raise UsageError(f"${ENV_OPTIONS}: unbalanced quotes; write KEY=VALUE words separated by spaces") from None
        items = [_item(pair, f"${ENV_OPTIONS}", environ) for pair in from_env]
        items += [_item(pair, "--storage-option", environ) for pair in pairs]
        return cls(tuple(items))

    def kwargs(self) -> dict:
        """The fsspec file system's keyword arguments (kernelcli's own network keys left out)."""
        out: dict = {}
        for key, value in self.items:
            if key in NETWORK_OPTIONS:
                continue
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UsageError(f"--storage-option {key}: {part} is given a value and nested keys")
            node[last] = value
        return out

    def network(self) -> Network:
        """The deadlines and retries these options set (checked when parsed), else the defaults."""
        return Network(**{NETWORK_OPTIONS[key]: float(value) if key != "retries" else value
                          for key, value in self.items if key in NETWORK_OPTIONS})

    def redact(self, text: str) -> str:
        """``text`` with the values of secret-looking options (secret, key, token, password …)
        replaced by ``***``: a message never shows a credential."""
        for key, value in self.items:
            if _SECRET_KEY.search(key.rpartition(".")[2]) and isinstance(value, str) and len(value) >= 3:
                text = text.replace(value, "***")
        return text


def _item(pair: str, where: str, environ) -> tuple:
    """One ``KEY=VALUE`` as (key, value); errors name the key only (the value may be a secret)."""
    key, sep, text = pair.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        shown = _KEY.match(pair.strip())
        shown = shown.group() + "…" if shown else "(no key)"
        raise UsageError(f"{where} {shown}: expected KEY=VALUE (the text itself is not shown: it may hold a secret)")
    if text.startswith("@"):
        path = text[1:]
        try:
            data = read_small(path, MAX_SECRET_FILE + 1)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{where} {key}=@{path}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if len(data) > MAX_SECRET_FILE:
            raise UsageError(f"{where} {key}=@{path}: {path} is larger than {MAX_SECRET_FILE} bytes")
        try:
            return key, data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise UsageError(f"{where} {key}=@{path}: {path} is not UTF-8 text") from None
    if text.startswith("$"):
        name = text[1:]
        if not _ENV_NAME.fullmatch(name):
            raise UsageError(f"{where} {key}=$…: write $NAME with the name of an environment variable")
        if name not in environ:
            raise UsageError(f"{where} {key}=${name}: the environment variable {name} is not set")
        return key, environ[name]
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if key in NETWORK_OPTIONS:  # kernelcli's own: checked now, before any work
        whole = key == "retries"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and (float(value).is_integer() and 0 <= value <= 20 if whole else 0 < value <= 86400)):
            raise UsageError(f"{where} {key}: " + ("give a whole number of retries from 0 to 20" if whole
                                                   else "give a number of seconds above 0 (at most 86400)"))
        value = int(value) if whole else value
    return key, value


_FILESYSTEMS: dict = {}  # (protocol, options, credential variables) → fsspec file system
_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS")


def filesystem(scheme: str, options: StorageOptions):
    """The fsspec file system for ``scheme``, with the network settings' deadlines and retries;
    a missing extra or an option the file system does not take is a usage error naming it."""
    # JSON values may be unhashable dicts; changed credential variables make a new file system
    key = (scheme, json.dumps(options.items, sort_keys=True), tuple(os.environ.get(v) for v in _ENVIRONMENT))
    if key not in _FILESYSTEMS:
        module = SCHEMES[scheme]
        try:
            import fsspec

            __import__(module)
        except ImportError:
            raise UsageError(f"{scheme}:// needs {module}: pip install \"{EXTRAS[module]}\"") from None
        cls = fsspec.get_filesystem_class(scheme)
        given = options.kwargs()
        _check_keys(scheme, cls, given)
        defaults = {"skip_instance_cache": True}  # cached here, by the credentials too
        if scheme not in READ_ONLY:
            defaults["use_listings_cache"] = False  # other writers: list afresh
        net = options.network()
        fs = cls(**_merged(_merged(defaults, _network_kwargs(module, net)), given))
        if module == "s3fs":  # class settings of s3fs, read when its client is made
            fs.connect_timeout, fs.read_timeout = net.connect, net.read
            fs.retries = 1  # botocore retries (config_kwargs["retries"]); s3fs's own loop would multiply them
        _FILESYSTEMS[key] = fs
    return _FILESYSTEMS[key]


def _network_kwargs(module: str, net: Network) -> dict:
    """The file system's own settings for the connect and read deadlines and the retries."""
    if module == "s3fs":  # its connect and read timeouts are attributes (filesystem() sets them)
        return {"config_kwargs": {"retries": {"max_attempts": net.retries, "mode": "standard"}}}  # retries after the first
    if module == "aiohttp":
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=net.connect,
                                                                     sock_connect=net.connect, sock_read=net.read)}}
    return {}  # gcsfs: its own retries; the total deadline (storage._io) bounds every call


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_keys(scheme: str, cls, given: dict) -> None:
    """Refuse (UsageError) a --storage-option the file system would choke on later (a TypeError
    deep in a client library): its constructor's parameters, and where its ``**kwargs`` and
    ``client_kwargs``/``config_kwargs`` go, theirs. A file system not known here takes anything."""
    import inspect

    def names(fn) -> set:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return set()
        return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}

    nested: dict = {}
    known = names(cls.__init__) | {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"}
    if SCHEMES[scheme] == "s3fs":
        from aiobotocore.session import AioSession
        from botocore.config import Config
        from botocore.session import Session

        known |= names(AioSession.__init__)  # s3fs hands its **kwargs to the session
        nested = {"client_kwargs": names(Session.create_client) - {"service_name", "config"},
                  "config_kwargs": set(Config.OPTION_DEFAULTS)}
    elif SCHEMES[scheme] == "aiohttp":
        import aiohttp

        known |= names(aiohttp.ClientSession._request) - {"method", "str_or_url"}  # **kwargs: each request's
        nested = {"client_kwargs": names(aiohttp.ClientSession.__init__)}
    else:
        return
    for key, value in given.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | set(NETWORK_OPTIONS)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"--storage-option {key}: {scheme}:// ({cls.__module__}.{cls.__name__}) has no "
                             f"option {key!r}{hint}")
        if key in nested and isinstance(value, dict):
            for sub in value:
                if sub not in nested[key]:
                    raise UsageError(f"--storage-option {key}.{sub}: not an option of {key} for {scheme}://")
        elif key in nested:
            raise UsageError(f"--storage-option {key}: give its keys, e.g. {key}.NAME=VALUE")


def _store_errors() -> tuple:
    """What a store raises for access problems: OSError (s3fs maps S3's answers onto it;
    timeouts are OSErrors too) and the client libraries' own errors (endpoint unreachable,
    no credentials), when loaded."""
    import asyncio

    errors = [OSError, asyncio.TimeoutError]
    for module, name in (("botocore.exceptions", "BotoCoreError"), ("aiohttp", "ClientError"),
                         ("google.auth.exceptions", "GoogleAuthError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _reason(exc: BaseException, path: "ObjectPath") -> str:
    """A store's exception as the end of a one-line message (secrets of ``path``'s options hidden)."""
    if isinstance(exc, PermissionError):
        text = f"access denied ({exc.strerror or exc}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or --storage-option)"
    elif isinstance(exc, FileNotFoundError):
        text = f"not found ({exc.strerror or exc})"
    else:
        text = str(exc) or type(exc).__name__
    return path.options.redact(text)


def _timeout_reason(exc: BaseException, path: "ObjectPath") -> str | None:
    """A deadline of the client library that passed (connect, read), as what happened, the host
    and the setting that changes it; None for other errors."""
    import asyncio

    net = path.options.network()
    tries = f" ({net.retries + 1} attempts)" if net.retries else ""
    botocore = sys.modules.get("botocore.exceptions")
    if (botocore is not None and isinstance(exc, botocore.ConnectTimeoutError)
            or type(exc).__name__ == "ConnectionTimeoutError"):  # aiohttp's
        return (f"no connection to {_host(path, exc)} within {net.connect:g} s{tries}; --storage-option "
                "connect_timeout=SECONDS waits longer")
    if (botocore is not None and isinstance(exc, botocore.ReadTimeoutError)
            or isinstance(exc, (TimeoutError, asyncio.TimeoutError))):  # aiohttp's socket read timeout
        return (f"{_host(path, exc)} sent no answer for {net.read:g} s{tries}; --storage-option "
                "read_timeout=SECONDS waits longer")
    return None


class Deadline(OSError):
    """An operation on a store or a web server did not finish in time (the message says which
    deadline and the setting that changes it). Not a TimeoutError: fsspec would rename those."""


def _host(path: "ObjectPath", exc=None) -> str:
    """The host a request went to: the store's endpoint (the URL of a web input names its host)."""
    url = getattr(exc, "kwargs", {}).get("endpoint_url") if exc is not None else None
    if path.scheme in READ_ONLY:
        return "the web server"
    if not url:
        client = getattr(path.fs, "_s3", None)
        url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    if not url:
        url = (path.options.kwargs().get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
               or os.environ.get("AWS_ENDPOINT_URL"))
    from urllib.parse import urlsplit

    host = urlsplit(url).netloc if url else ""
    return f"host {host!r}" if host else f"the store of bucket {path.bucket!r}"


def _io(path: "ObjectPath", method, *args, **kwargs):
    """``path.fs.method(*args, **kwargs)`` (``method`` a name, or a function of the file system
    and the arguments that returns a coroutine) within the total deadline of ``path``'s network
    settings: the call is cancelled when it passes (an fsspec async file system). A deadline
    that passed, the total or the client library's connect and read deadlines, raises
    :class:`Deadline` naming the host and the setting."""
    fs, total = path.fs, path.options.network().total
    if isinstance(method, str) and not getattr(fs, "async_impl", False):
        return getattr(fs, method)(*args, **kwargs)
    import asyncio

    from fsspec.asyn import sync

    async def bounded():
        call = getattr(fs, "_" + method)(*args, **kwargs) if isinstance(method, str) else method(fs, *args, **kwargs)
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait([task], timeout=total)
        if not done:
            task.cancel()
            raise Deadline(f"{_host(path)} did not finish within {total:g} s; --storage-option "
                           "total_timeout=SECONDS allows longer")
        try:
            return task.result()
        except Exception as exc:
            reason = _timeout_reason(exc, path)
            if reason is not None:
                raise Deadline(reason) from None
            raise

    return sync(fs.loop, bounded)


# --------------------------------------------------------------------------- object paths


class ObjectPath:
    """An object URL with the small part of :class:`pathlib.Path` that planning uses.

    It is deliberately not os.PathLike: nothing local can be opened or created by mistake.
    ``listed`` (from :func:`prime`): a prefix URL and the object URLs under it, listed once
    while planning; paths joined onto this one inherit it and answer ``exists()`` from it.
    """

    __slots__ = ("url", "options", "listed")

    def __init__(self, url: str, options: StorageOptions = StorageOptions(), listed=None):
        scheme, rest = url.split("://", 1)
        self.url = f"{scheme.lower()}://{rest}"
        self.options = options
        self.listed = listed

    def __reduce__(self):  # to Dask workers: the URL and the --storage-option values
        return (ObjectPath, (self.url, self.options))

    # names
    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        return self.url.split("://", 1)[1].split("/", 1)[0]

    @property
    def key(self) -> str:
        rest = self.url.split("://", 1)[1]
        return rest.split("/", 1)[1] if "/" in rest else ""

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath("/" + self.key)

    name = property(lambda self: self._pure.name)
    stem = property(lambda self: self._pure.stem)
    suffix = property(lambda self: self._pure.suffix)

    @property
    def parent(self) -> "ObjectPath":
        parent = posixpath.dirname(self.url.rstrip("/"))
        return self if parent.endswith(":/") else ObjectPath(parent, self.options, self.listed)

    def __truediv__(self, other) -> "ObjectPath":
        other = PurePosixPath(other).as_posix() if not isinstance(other, str) else other
        if other in ("", "."):
            return self
        joined = posixpath.normpath(self.url.rstrip("/") + "/" + other).replace(":/", "://", 1)
        return ObjectPath(joined, self.options, self.listed)

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def resolve(self) -> "ObjectPath":
        return self

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    # the store
    @property
    def fs(self):
        return filesystem(self.scheme, self.options)

    @property
    def _fs_path(self) -> str:
        return self.url if self.scheme in READ_ONLY else self.url.split("://", 1)[1]

    def exists(self) -> bool:
        """Whether the object exists; access problems are usage errors (this runs while planning)."""
        if self.listed is not None and self.url.startswith(self.listed[0]):
            return self.url in self.listed[1]
        try:
            return _io(self, "exists", self._fs_path)
        except _store_errors() as exc:
            raise UsageError(f"{self}: {self.where()}: {_reason(exc, self)}") from None

    def is_symlink(self) -> bool:
        return False

    def is_dir(self) -> bool:
        if self.key.endswith("/") or self.key == "":
            return True
        if self.scheme in READ_ONLY:
            return False  # a web URL names one object (never GET a page to look for links)
        try:
            return _io(self, "isdir", self._fs_path)
        except _store_errors() as exc:
            raise UsageError(f"{self}: {self.where()}: {_reason(exc, self)}") from None

    def where(self) -> str:
        return f"bucket {self.bucket!r}" if self.scheme not in READ_ONLY else f"host {self.bucket!r}"


def check_bucket(path: ObjectPath, *, write: bool) -> None:
    """Before any work: the endpoint answers, the credentials are accepted and the bucket
    exists (usage errors, exit 2, naming the bucket); web URLs are never written."""
    if path.scheme in READ_ONLY:
        if write:
            raise UsageError(f"{path}: {path.scheme}:// is read-only; write to a folder, s3:// or gs://")
        return
    try:
        info = _io(path, "info", path.bucket)
        if info.get("type") != "directory":
            raise FileNotFoundError(2, "no such bucket")
    except FileNotFoundError:
        raise UsageError(f"{path}: bucket {path.bucket!r} does not exist") from None
    except _store_errors() as exc:
        raise UsageError(f"{path}: {path.where()}: {_reason(exc, path)}") from None


def prime(prefix: "ObjectPath") -> "ObjectPath":
    """The prefix, listed once: planning a thousand outputs under it then asks the store once,
    not a thousand times (:meth:`ObjectPath.exists` answers from the listing)."""
    base = prefix._fs_path.rstrip("/") + "/"
    try:
        present = set(_io(prefix, "find", base))
    except FileNotFoundError:
        present = set()
    except _store_errors() as exc:
        raise UsageError(f"{prefix}: {prefix.where()}: {_reason(exc, prefix)}") from None
    listed = (f"{prefix.scheme}://{base}", frozenset(f"{prefix.scheme}://{key}" for key in present))
    return ObjectPath(prefix.url, prefix.options, listed)


# --------------------------------------------------------------------------- listing


def list_objects(path: ObjectPath, *, recursive=False, avoid=None):
    """The objects under a prefix (a "folder"), or the one object named, as (path, key relative
    to the prefix) pairs; ``avoid`` (the output prefix) is never listed. The relative key is the
    store's text as listed, not normalised (``a//b``, ``a/../b`` stay as they are): which objects
    are images to read, and which keys can be mirrored under an output folder, is the planner's
    decision (batch.find_inputs), as for a folder on disk.
    Raises UsageError for access problems and a missing bucket.
    """
    check_bucket(path, write=False)
    if path.scheme in READ_ONLY:
        return [(path, path.name)]
    base = path._fs_path.rstrip("/")
    try:
        if not path.key.endswith("/") and _io(path, "isfile", base):
            return [(path, path.name)]
        keys = sorted(_io(path, "find", base + "/", maxdepth=None if recursive else 1))
    except _store_errors() as exc:
        raise UsageError(f"{path}: {path.where()}: {_reason(exc, path)}") from None
    avoid_prefix = avoid._fs_path.rstrip("/") + "/" if isinstance(avoid, ObjectPath) else None
    return [(ObjectPath(f"{path.scheme}://{key}", path.options), key[len(base) + 1:])
            for key in keys if not (avoid_prefix and key.startswith(avoid_prefix))]


# --------------------------------------------------------------------------- reading and writing


def read_bytes(path, limit: int = 1 << 30) -> bytes:
    """All bytes of an object, at most ``limit``: a size the store or the web server declares
    above it is refused before reading, and the bytes are counted as they come (a server that
    declares nothing, or more than it said). ImageError when it cannot be read (the input
    fails, the batch goes on)."""
    try:
        if path.scheme in READ_ONLY:
            return _io(path, _http_read, path._fs_path, limit, path.options.network())
        size = _io(path, "info", path._fs_path).get("size")
        if size is not None and size > limit:
            raise TooLarge(size)
        data = _io(path, "cat_file", path._fs_path, start=0, end=limit + 1)
        if len(data) > limit:
            raise TooLarge(None)
        return data
    except TooLarge as exc:
        if exc.declared is None:
            raise ImageError(f"{path}: more than {limit} bytes; refused") from None
        raise ImageError(f"{path}: declares {exc.declared} bytes, over the limit of {limit} bytes; refused") from None
    except _store_errors() as exc:
        raise ImageError(f"{path}: cannot read: {_reason(exc, path)}") from None


class TooLarge(Exception):
    """An object over the size limit; ``declared``: the size its server announced, or None."""

    def __init__(self, declared):
        super().__init__(declared)
        self.declared = declared


def _http_read(fs, url: str, limit: int, network: Network):
    """A GET of ``url`` through ``fs``'s session: refused on a Content-Length above ``limit``,
    else read in pieces and refused past ``limit`` bytes (also decompressed bytes); retried on
    connection errors, read timeouts and 5xx answers (``network.retries`` times)."""
    import asyncio

    import aiohttp

    async def get():
        session = await fs.set_session()
        for attempt in range(network.retries + 1):
            last = attempt == network.retries
            try:
                async with session.get(fs.encode_url(url), **fs.kwargs) as r:
                    if r.status == 404:
                        raise FileNotFoundError(2, "404 Not Found")
                    if r.status >= 500 and not last:
                        raise aiohttp.ServerConnectionError(f"{r.status} {r.reason}")
                    r.raise_for_status()
                    if r.content_length is not None and r.content_length > limit:
                        raise TooLarge(r.content_length)
                    data = bytearray()
                    async for piece in r.content.iter_chunked(1 << 20):
                        data += piece
                        if len(data) > limit:
                            raise TooLarge(None)
                    return bytes(data)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError):
                if last:
                    raise
            await asyncio.sleep(min(0.25 * 2 ** attempt, 4))

    return get()


def read(path, limits=None):
    """Read an image or array from a local path (today's reader) or an object URL."""
    from .images import Limits
    from .images import read as read_local

    limits = limits or Limits()
    if not isinstance(path, ObjectPath):
        return read_local(path, limits=limits)
    return read_local(str(path), read_bytes(path, limits.max_bytes), limits)


def write(path, data: bytes, *, overwrite: bool = False, idempotent: bool = False) -> None:
    """Write ``data`` whole under ``path``: locally by temp file + rename (parents created),
    to a store by one PUT (conditional without ``overwrite``). A failing destination raises
    WriteError (the batch stops); an existing output without ``overwrite`` raises ImageError.

    ``idempotent``: an existing output that holds exactly ``data`` counts as written (a task
    retried after its worker died finds its own earlier output).
    """
    from .images import write_atomic

    try:
        if not isinstance(path, ObjectPath):
            write_atomic(path, data, overwrite=overwrite)  # creates missing folders
        else:
            _put(path, data, overwrite)
    except WriteError:
        raise
    except ImageError:  # it exists
        if not (idempotent and _same_bytes(path, data)):
            raise


def _put(path: "ObjectPath", data: bytes, overwrite: bool) -> None:
    if path.scheme in READ_ONLY:
        raise WriteError(f"{path}: {path.scheme}:// is read-only")
    key = path._fs_path
    exists = ImageError(f"{path}: already exists; pass --overwrite to replace it")
    try:
        if overwrite:
            _io(path, "pipe_file", key, data)
        elif path.scheme.startswith("s3"):
            try:
                _io(path, "pipe_file", key, data, mode="create")  # If-None-Match: *
            except OSError as exc:  # 412 Precondition Failed when the key exists
                if not isinstance(exc, Deadline) and _io(path, "exists", key):
                    raise exists from None
                raise WriteError(f"{path}: cannot write: {_reason(exc, path)}") from None
        else:
            if _io(path, "exists", key):  # no conditional PUT through fsspec here: check, then write
                raise exists
            _io(path, "pipe_file", key, data)
    except (ImageError, WriteError):
        raise
    except _store_errors() as exc:
        raise WriteError(f"{path}: cannot write: {_reason(exc, path)}") from None


def abort_stale_uploads(paths) -> list[str]:
    """Abort the incomplete multipart uploads of these ``s3://`` outputs that a killed run left
    (kill -9 while s3fs uploaded an object of 100 MiB or more in parts): those begun more than
    twice the total deadline ago by the store's clock. A kernelcli upload never outlives its
    deadline, so none of them is still being written. Best effort: a store that does not list
    uploads, or does not let us, is left to its lifecycle rule (README). Returns the URLs."""
    import datetime

    keys: dict = {}
    for p in paths:
        if isinstance(p, ObjectPath) and p.scheme.startswith("s3") and p.key:
            keys.setdefault((p.scheme, p.bucket, p.options), set()).add(p.key)
    aborted = []
    for (scheme, bucket, options), wanted in keys.items():
        prefix = os.path.commonprefix(sorted(wanted)).rpartition("/")[0]
        where = ObjectPath(f"{scheme}://{bucket}/{prefix}", options)
        age = datetime.timedelta(seconds=2 * options.network().total)
        marks: dict = {}
        try:
            for _ in range(1000):  # pages of 1000 uploads
                answer = _io(where, "call_s3", "list_multipart_uploads", Bucket=bucket,
                             Prefix=prefix + "/" if prefix else "", **marks)
                date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
                now = _parse_date(date) or datetime.datetime.now(datetime.timezone.utc)
                for upload in answer.get("Uploads", []):
                    if upload.get("Key") in wanted and now - upload["Initiated"] > age:
                        _io(where, "call_s3", "abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                            UploadId=upload["UploadId"])
                        aborted.append(f"{scheme}://{bucket}/{upload['Key']}")
                if not answer.get("IsTruncated"):
                    break
                marks = {"KeyMarker": answer.get("NextKeyMarker", ""), "UploadIdMarker": answer.get("NextUploadIdMarker", "")}
        except _store_errors() + (KeyError, TypeError):
            continue
    return aborted


def _parse_date(text):
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None


def _same_bytes(path, data: bytes) -> bool:
    try:
        if isinstance(path, ObjectPath):
            existing = read_bytes(path, len(data))
        else:  # never more than it takes to tell, never a FIFO in the output's place
            from .images import read_regular

            existing = read_regular(path, len(data) + 1)
    except (ImageError, OSError):
        return False
    return existing == data


def read_config(text, limit: int) -> bytes:
    """A kernel file, local or at a URL, up to ``limit`` bytes; any failure is a KernelFileError
    (exit 2). A local file must be a regular file: it is opened non-blocking and checked before
    any read, so a FIFO or a device named by --kernels or $KERNELCLI_KERNELS never hangs."""
    from ..errors import KernelFileError

    path = as_path(text)
    try:
        if not isinstance(path, ObjectPath):  # a path or file://
            return read_small(path, limit)
        check_bucket(path, write=False)
        return read_bytes(path, limit)
    except OSError as exc:
        raise KernelFileError(f"{path}: cannot read kernel file: {exc.strerror or exc}") from None
    except (UsageError, ImageError) as exc:
        raise KernelFileError(f"cannot read kernel file: {exc}") from None


PIPE_WAIT = 10.0  # seconds a kernel or secret file that is a pipe may take to give its data


def read_small(path, limit: int, wait: float = PIPE_WAIT) -> bytes:
    """Up to ``limit`` bytes of a small local file (a kernel file, a secret), never blocking: it
    is opened non-blocking; a regular file is read, a pipe (``<(…)``) or a device is read as
    its data comes for at most ``wait`` seconds (a FIFO nobody writes to reads as empty);
    a folder is refused. OSError otherwise."""
    import errno
    import select
    import stat
    import time

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if stat.S_ISREG(mode):
            return fh.read(limit)
        data, deadline = bytearray(), time.monotonic() + wait
        while len(data) < limit:
            try:
                piece = os.read(fd, min(1 << 16, limit - len(data)))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError(errno.ETIMEDOUT, f"not a regular file, and no end of its data within "
                                                        f"{wait:g} s") from None
                continue
            if not piece:
                break
            data += piece
        return bytes(data)


def read_list_bytes(text, limit: int) -> bytes:
    """--files-from FILE where FILE may be a URL: at most ``limit`` + 1 bytes (the caller tells
    "too long"). A local list may be a pipe (``<(find …)``): it is read as it comes."""
    path = as_path(text)
    if isinstance(path, ObjectPath):
        check_bucket(path, write=False)
        try:
            return read_bytes(path, limit)
        except ImageError as exc:
            raise UsageError(f"--files-from {exc}") from None
    from .images import read_capped

    with open(path, "rb") as fh:
        return read_capped(fh, limit + 1)
