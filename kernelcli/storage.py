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

import json
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ImageError, UsageError, WriteError

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


@dataclass(frozen=True)
class StorageOptions:
    """Keyword arguments for the fsspec file system (``--storage-option KEY=VALUE``), as a value."""

    items: tuple = ()

    @classmethod
    def parse(cls, pairs) -> "StorageOptions":
        """``KEY=VALUE`` texts; VALUE is read as JSON when it is JSON (true, 3, {"a": 1}), else text;
        ``a.b=V`` nests (``client_kwargs.region_name=eu-west-1``)."""
        items = []
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--storage-option {pair!r}: expected KEY=VALUE")
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            items.append((key.strip(), value))
        return cls(tuple(items))

    def kwargs(self) -> dict:
        out: dict = {}
        for key, value in self.items:
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return out


_FILESYSTEMS: dict = {}  # (protocol, options, credential variables) → fsspec file system
_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS")


def filesystem(scheme: str, options: StorageOptions):
    """The fsspec file system for ``scheme``; a missing extra is a usage error naming it."""
    # JSON values may be unhashable dicts; changed credential variables make a new file system
    key = (scheme, json.dumps(options.items, sort_keys=True), tuple(os.environ.get(v) for v in _ENVIRONMENT))
    if key not in _FILESYSTEMS:
        module = SCHEMES[scheme]
        try:
            import fsspec

            __import__(module)
        except ImportError:
            raise UsageError(f"{scheme}:// needs {module}: pip install \"{EXTRAS[module]}\"") from None
        defaults = {"skip_instance_cache": True}  # cached here, by the credentials too
        if scheme not in READ_ONLY:
            defaults["use_listings_cache"] = False  # other writers: list afresh
        _FILESYSTEMS[key] = fsspec.filesystem(scheme, **{**defaults, **options.kwargs()})
    return _FILESYSTEMS[key]


def _store_errors() -> tuple:
    """What a store raises for access problems: OSError (s3fs maps S3's answers onto it) and
    the client libraries' own errors (endpoint unreachable, no credentials), when loaded."""
    errors = [OSError]
    for module, name in (("botocore.exceptions", "BotoCoreError"), ("aiohttp", "ClientError"),
                         ("google.auth.exceptions", "GoogleAuthError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return f"access denied ({exc.strerror or exc}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or --storage-option)"
    if isinstance(exc, FileNotFoundError):
        return f"not found ({exc.strerror or exc})"
    return str(exc) or type(exc).__name__


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
            return self.fs.exists(self._fs_path)
        except _store_errors() as exc:
            raise UsageError(f"{self}: {self.where()}: {_reason(exc)}") from None

    def is_symlink(self) -> bool:
        return False

    def is_dir(self) -> bool:
        try:
            return self.key.endswith("/") or self.key == "" or self.fs.isdir(self._fs_path)
        except _store_errors() as exc:
            raise UsageError(f"{self}: {self.where()}: {_reason(exc)}") from None

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
        info = path.fs.info(path.bucket)
        if info.get("type") != "directory":
            raise FileNotFoundError(2, "no such bucket")
    except FileNotFoundError:
        raise UsageError(f"{path}: bucket {path.bucket!r} does not exist") from None
    except _store_errors() as exc:
        raise UsageError(f"{path}: {path.where()}: {_reason(exc)}") from None


def prime(prefix: "ObjectPath") -> "ObjectPath":
    """The prefix, listed once: planning a thousand outputs under it then asks the store once,
    not a thousand times (:meth:`ObjectPath.exists` answers from the listing)."""
    base = prefix._fs_path.rstrip("/") + "/"
    try:
        present = set(prefix.fs.find(base))
    except FileNotFoundError:
        present = set()
    except _store_errors() as exc:
        raise UsageError(f"{prefix}: {prefix.where()}: {_reason(exc)}") from None
    listed = (f"{prefix.scheme}://{base}", frozenset(f"{prefix.scheme}://{key}" for key in present))
    return ObjectPath(prefix.url, prefix.options, listed)


# --------------------------------------------------------------------------- listing


def list_objects(path: ObjectPath, *, recursive=False, avoid=None):
    """The objects under a prefix (a "folder"), or the one object named, as (path, path relative
    to the prefix) pairs; ``avoid`` (the output prefix) is never listed. Which of them are images
    to read is the planner's decision (batch.find_inputs), as for a folder on disk.
    Raises UsageError for access problems and a missing bucket.
    """
    check_bucket(path, write=False)
    if path.scheme in READ_ONLY:
        return [(path, PurePosixPath(path.name))]
    fs = path.fs
    base = path._fs_path.rstrip("/")
    try:
        if not path.key.endswith("/") and fs.isfile(base):
            return [(path, PurePosixPath(path.name))]
        keys = sorted(fs.find(base + "/", maxdepth=None if recursive else 1))
    except _store_errors() as exc:
        raise UsageError(f"{path}: {path.where()}: {_reason(exc)}") from None
    avoid_prefix = avoid._fs_path.rstrip("/") + "/" if isinstance(avoid, ObjectPath) else None
    return [(ObjectPath(f"{path.scheme}://{key}", path.options), PurePosixPath(key[len(base) + 1:]))
            for key in keys if not (avoid_prefix and key.startswith(avoid_prefix))]


# --------------------------------------------------------------------------- reading and writing


def read_bytes(path, limit: int = 1 << 30) -> bytes:
    """All bytes of an object (ImageError when it cannot be read: the input fails, the batch goes on)."""
    try:
        with path.fs.open(path._fs_path, "rb") as fh:
            data = fh.read(limit + 1)
    except _store_errors() as exc:
        raise ImageError(f"{path}: cannot read: {_reason(exc)}") from None
    if len(data) > limit:
        raise ImageError(f"{path}: more than {limit} bytes; refused")
    return data


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
    fs, key = path.fs, path._fs_path
    exists = ImageError(f"{path}: already exists; pass --overwrite to replace it")
    try:
        if overwrite:
            fs.pipe_file(key, data)
        elif path.scheme.startswith("s3"):
            try:
                fs.pipe_file(key, data, mode="create")  # If-None-Match: *
            except OSError as exc:  # 412 Precondition Failed when the key exists
                if fs.exists(key):
                    raise exists from None
                raise WriteError(f"{path}: cannot write: {_reason(exc)}") from None
        else:
            if fs.exists(key):  # no conditional PUT through fsspec here: check, then write
                raise exists
            fs.pipe_file(key, data)
    except (ImageError, WriteError):
        raise
    except _store_errors() as exc:
        raise WriteError(f"{path}: cannot write: {_reason(exc)}") from None


def _same_bytes(path, data: bytes) -> bool:
    try:
        existing = read_bytes(path, len(data)) if isinstance(path, ObjectPath) else Path(path).read_bytes()
    except (ImageError, OSError):
        return False
    return existing == data


def read_config(text, limit: int) -> bytes:
    """A kernel file at a URL, up to ``limit`` bytes; any failure is a KernelFileError (exit 2)."""
    from .errors import KernelFileError

    path = as_path(text)
    try:
        if not isinstance(path, ObjectPath):  # file://
            with open(path, "rb") as fh:
                return fh.read(limit)
        check_bucket(path, write=False)
        return read_bytes(path, limit)
    except OSError as exc:
        raise KernelFileError(f"{path}: cannot read kernel file: {exc.strerror or exc}") from None
    except (UsageError, ImageError) as exc:
        raise KernelFileError(f"cannot read kernel file: {exc}") from None


def read_list_bytes(text) -> bytes:
    """--files-from FILE where FILE may be a URL."""
    path = as_path(text)
    if isinstance(path, ObjectPath):
        check_bucket(path, write=False)
        try:
            return read_bytes(path)
        except ImageError as exc:
            raise UsageError(str(exc)) from None
    return Path(path).read_bytes()
