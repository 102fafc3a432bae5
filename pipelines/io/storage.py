"""One way to name data: local paths and ``s3://bucket/prefix`` URIs, through pyarrow's filesystems.

    store = StorageOptions.from_env(endpoint_url=None)      # on the driver
    loc = store.resolve("s3://bucket/shards")               # a Location: filesystem + path
    loc.child("00000.tar").read_bytes()

Credentials and region come from the standard AWS configuration (environment variables, the shared
config/credentials files and profiles, and on clusters the instance/pod role), resolved by boto3's
default chain. An endpoint override (``--endpoint-url`` or ``AWS_ENDPOINT_URL[_S3]``) serves
S3-compatible stores (MinIO, SeaweedFS, Ceph). ``StorageOptions`` is what a Ray job ships to its
workers: plain strings, with credentials in a ``Credentials`` object whose repr never shows them.
Errors name the URI and never a key.
"""

from __future__ import annotations

import contextlib

import functools
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

log = logging.getLogger(__name__)


class StorageError(OSError):
    """A storage operation failed; the message names the URI (never a credential)."""


@dataclass(frozen=True)
class Credentials:
    """AWS credentials; repr and str are redacted so they cannot leak into logs or errors."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # unix seconds when temporary credentials (STS, SSO) expire; None: never

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None  # S3-compatible endpoint, e.g. http://127.0.0.1:9000 (None: AWS)
    region: str | None = None  # S3 region; None: from the AWS config, else us-east-1 with an endpoint
    credentials: Credentials | None = field(default=None, repr=False)  # None: each process's own chain

    def __post_init__(self):
        if self.endpoint_url is not None:
            parsed = urlparse(self.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"endpoint URL must look like http(s)://host[:port], got {self.endpoint_url!r}")
            if parsed.username or parsed.password:
                raise ValueError("endpoint URL must not carry credentials (use the AWS config or environment)")

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, forward_credentials: bool = True) -> "StorageOptions":
        """Resolve endpoint, region and (optionally) credentials from the standard AWS configuration.

        ``forward_credentials=False`` leaves credentials to each worker's own chain (instance or pod
        roles on a cluster); True freezes the driver's credentials so workers use the same identity.
        """
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        creds = None
        try:
            import boto3

            session = boto3.Session()
            region = region or session.region_name
            if forward_credentials:
                found = session.get_credentials()
                if found is not None:
                    frozen = found.get_frozen_credentials()
                    expiry = getattr(found, "_expiry_time", None)  # RefreshableCredentials (SSO, STS, process)
                    creds = Credentials(frozen.access_key, frozen.secret_key, frozen.token,
                                        expiry.timestamp() if expiry is not None else None)
        except Exception as e:  # noqa: BLE001 -- a broken profile must not print its contents
            raise StorageError(f"cannot read the AWS configuration ({type(e).__name__})") from None
        return cls(endpoint_url=endpoint, region=region, credentials=creds)

    def describe(self) -> dict:
        """What may be logged or written: endpoint and region, never credentials."""
        return {"endpoint_url": self.endpoint_url, "region": self.region,
                "credentials": "forwarded" if self.credentials else "worker default chain"}

    def resolve(self, uri: str) -> "Location":
        return Location(uri=uri, options=self)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, options: StorageOptions):
    """One pyarrow filesystem per process and options (S3 clients are expensive to build)."""
    import pyarrow.fs as pafs

    if scheme == "file":
        return pafs.LocalFileSystem()
    kwargs = {"region": options.region or "us-east-1", "allow_delayed_open": True,  # small writes: one PutObject
              "allow_bucket_creation": False, "allow_bucket_deletion": False}
    if options.endpoint_url:
        parsed = urlparse(options.endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if options.credentials is not None:
        c = options.credentials
        kwargs.update(access_key=c.access_key, secret_key=c.secret_key, session_token=c.session_token)
    try:
        return pafs.S3FileSystem(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"cannot open S3 (endpoint {options.endpoint_url or 'AWS'}): {type(e).__name__}") from None


def split_uri(uri: str) -> tuple[str, str]:
    """``(scheme, path)``: ('s3', 'bucket/prefix') or ('file', '/abs/path'). Rejects keys in URIs."""
    if not uri:
        raise ValueError("empty storage URI")
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        parsed = urlparse(uri)
        if parsed.username or parsed.password or "@" in parsed.netloc:
            raise ValueError("S3 URIs must not carry credentials (use the AWS config or environment)")
        if not parsed.netloc:
            raise ValueError(f"S3 URI needs a bucket: {uri!r} (expected s3://bucket/prefix)")
        return "s3", posixpath.join(parsed.netloc, parsed.path.lstrip("/")).rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    path = uri.removeprefix("file://")
    return "file", os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class Location:
    """A file or folder: the URI the user wrote, and the filesystem + path that reach it."""

    uri: str
    options: StorageOptions = field(default_factory=StorageOptions, repr=False)

    @property
    def scheme(self) -> str:
        return split_uri(self.uri)[0]

    @property
    def path(self) -> str:
        return split_uri(self.uri)[1]

    @property
    def fs(self):
        return _filesystem(self.scheme, self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *parts: str) -> "Location":
        base = self.uri.rstrip("/")
        return Location(uri="/".join([base, *[p.strip("/") for p in parts]]), options=self.options)

    def relative_to(self, root: "Location") -> str:
        rel = posixpath.relpath(self.path, root.path)
        return "" if rel == "." else rel

    def _wrap(self, action: str, e: Exception) -> StorageError:
        return StorageError(f"{self.uri}: cannot {action} ({_reason(e, self.options.credentials)})")

    # ---- queries ----
    def exists(self) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound
        except OSError as e:
            raise self._wrap("stat", e) from None

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(self.path).type == pafs.FileType.Directory
        except OSError as e:
            raise self._wrap("stat", e) from None

    def list_files(self, recursive: bool = True) -> list[tuple["Location", int]]:
        """Files under this folder (sorted, with sizes); an absent folder lists as empty."""
        return [(loc, size) for loc, size, _ in self.list_entries(recursive)]

    def list_entries(self, recursive: bool = True) -> list[tuple["Location", int, int]]:
        """Files under this folder (sorted) with size and modification time in ns (0 when the store
        gives none): what a done marker records to tell a replaced input from the one it was made of."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except OSError as e:
            raise self._wrap("list", e) from None
        files = [i for i in infos if i.type == pafs.FileType.File]
        files.sort(key=lambda i: i.path)
        return [(self.child(posixpath.relpath(i.path, self.path)), i.size, _mtime_ns(i)) for i in files]

    def input_files(self) -> tuple["Location", list[tuple["Location", int, int]]]:
        """An input given as a folder/prefix or as one file: (the folder that ids are relative to,
        the files with size and mtime in ns). Empty when nothing is there."""
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self.path)
        except OSError as e:
            raise self._wrap("stat", e) from None
        if info.type == pafs.FileType.File:
            return Location(posixpath.dirname(self.uri.rstrip("/")) or ".", self.options), [(self, info.size,
                                                                                             _mtime_ns(info))]
        return self, self.list_entries()

    # ---- reads ----
    @contextlib.contextmanager
    def _read_errors(self, verb: str):
        """Turn a read's OSError into a StorageError naming this URI (and never a credential)."""
        try:
            yield
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: no such file") from None
        except OSError as e:
            raise self._wrap(verb, e) from None

    def read_bytes(self) -> bytes:
        with self._read_errors("read"), self.fs.open_input_stream(self.path) as f:
            return f.read()

    def open_input_file(self):
        """A seekable file (pyarrow NativeFile), e.g. for Parquet row-group reads."""
        with self._read_errors("open"):
            return self.fs.open_input_file(self.path)

    def open_input_stream(self):
        with self._read_errors("open"):
            return self.fs.open_input_stream(self.path)

    # ---- writes ----
    def write_bytes(self, data: bytes, tmp_dir: "Location | None" = None) -> None:
        """Write the whole object at once: on S3 one PUT (an object appears complete or not at all);
        locally a temporary file renamed into place. A half-written file is never visible, and a
        rerun replaces the file instead of appending to it.

        Locally the temporary file goes to ``tmp_dir`` (a folder on the same filesystem that readers
        do not scan, e.g. OUTPUT/_tmp), else beside the target as a hidden ``.name.tmp-*`` file
        (which pandas, pyarrow datasets and ``*.parquet`` globs skip): a write killed mid-way never
        leaves a partial file where readers look."""
        tmp = None
        try:
            if self.scheme == "file":
                tag = uuid.uuid4().hex[:8]
                if tmp_dir is not None:
                    os.makedirs(tmp_dir.path, exist_ok=True)
                    tmp = os.path.join(tmp_dir.path, f"{tag}-{posixpath.basename(self.path)}")
                else:
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                    tmp = os.path.join(os.path.dirname(self.path), f".{posixpath.basename(self.path)}.tmp-{tag}")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.makedirs(os.path.dirname(self.path), exist_ok=True)  # only now: no long-empty folder for readers
                os.replace(tmp, self.path)
                tmp = None
            else:
                with self.fs.open_output_stream(self.path) as f:
                    f.write(data)
        except OSError as e:
            raise self._wrap("write", e) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)

    def write_text(self, text: str, tmp_dir: "Location | None" = None) -> None:
        self.write_bytes(text.encode(), tmp_dir)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._wrap("delete", e) from None


def _mtime_ns(info) -> int:
    try:
        return int(info.mtime_ns or 0)
    except (TypeError, ValueError):
        return 0


def normalize_uri(uri: str) -> str:
    """One spelling per location, for comparing: an absolute local path, or ``s3://bucket/prefix``
    without a trailing slash (``./in``, ``in/`` and ``/abs/in`` are the same folder)."""
    scheme, path = split_uri(uri)
    return path if scheme == "file" else f"s3://{path}"


def _reason(e: Exception, credentials: Credentials | None = None) -> str:
    """An exception's first line with every known credential cut out."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    secrets = [os.environ.get(v) for v in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")]
    if credentials is not None:
        secrets += [credentials.access_key, credentials.secret_key, credentials.session_token]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text[:300]
