"""A place to read and write by local path or URL: a folder, or a prefix in
object storage (`s3://bucket/prefix`), behind one small interface
(`Location`), so that what writes results need not know which.

- `open_location(target, storage_options=None)`: nothing is asked of the
  store yet; `check_writable()` proves up front that the place can be
  written (a small probe written, then deleted), so a batch refuses before
  any render.
- `read_bytes`, `size_of`, `read_prefix(name, size)` (the first bytes only:
  a ranged GET), `exists`, `list(pattern)` (`*.json`, `*.png`: the names right
  under the place, sorted), `url_of(name)`.
- `open_object(url)`: the place holding one object and its name there
  (`render -o s3://bucket/a/b.png`: the place s3://bucket/a, the name b.png).
- `write_bytes_atomic(name, data)`: a result appears whole or not at all;
  `write_file_atomic(name, file)` the same from a file, never held in memory.
  Locally: a temporary name in the same folder, then `os.replace` (as
  `files.write_atomically` always has). On S3: one PUT of the whole object
  (S3 shows an object only once its PUT has arrived whole, and a PUT
  replaces an object at once); never a multipart upload, whose parts are not
  visible either but which leaves an upload to abort when its writer dies.
- `open_report(name, resume=False)`: a report of one line per item. A local
  report is appended to and flushed line by line. An object store cannot
  append: its report's lines are kept in a local spool file and the whole
  object is PUT again at each `checkpoint()` (and at `close()`), so the
  report in the store is always whole lines, at most one checkpoint behind.

Credentials and endpoints come from the standard places (AWS_ACCESS_KEY_ID
and AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared config files,
AWS_ENDPOINT_URL, AWS_REGION, an instance's role): never from a request's
body, nor from `storage_options`, which carries the rest (`endpoint_url` for
a store of its own, `client_kwargs`, `config_kwargs`, `profile`, ...).

Every failure is a `StorageError` whose message is one line naming the URL
and what is wrong (the bucket does not exist, wrong credentials, access
denied, not found). fsspec (and s3fs) are imported only for a URL: a local
path never imports them. gcsfs (gs://) and adlfs (az://) are the same kind
of extra and plug in the same way; only local paths and s3:// are supported
so far.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import secrets
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from compositor.files import atomic_file

__all__ = ["Location", "ReportWriter", "StorageError", "is_url", "open_location", "open_object"]

S3_SCHEMES = ("s3", "s3a")
SINGLE_PUT_LIMIT = 5 * 1024**3  # S3's largest single PUT
READ_BLOCK = 8 * 1024 * 1024  # an object read as a stream is fetched this much at a time
PROBE_PREFIX = ".compositor-probe-"
# Secrets in a command line show in `ps` and in shell history: they come from the standard places only.
SECRET_OPTIONS = (
    "key",
    "secret",
    "token",
    "password",
    "username",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "session_token",
)


class StorageError(Exception):
    """A place cannot be read or written; the message names the URL and says why, in one line."""

    def __init__(self, action: str, url: str, reason: str) -> None:
        self.action = action
        self.url = without_credentials(url)
        self.reason = " ".join(reason.split()) or "unknown error"
        super().__init__(f"cannot {action} {self.url}: {self.reason}")


def without_credentials(url: str) -> str:
    """`url` without a `user:secret@` before its bucket: what may be shown of it."""
    scheme, sep, rest = url.partition("://")
    bucket, slash, tail = rest.partition("/")
    if not sep or "@" not in bucket:
        return url
    return f"{scheme}://{bucket.rpartition('@')[2]}{slash}{tail}"


def open_location(target: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Location:
    """The place at `target`: a local path (or file:// URL), or s3://bucket/prefix.
    `storage_options` apply to object storage only (a local path ignores them)."""
    if isinstance(target, os.PathLike):
        return LocalLocation(Path(target))
    scheme, sep, rest = target.partition("://")
    if not sep:
        return LocalLocation(Path(target))
    scheme = scheme.lower()
    if scheme == "file":
        return LocalLocation(Path(rest))
    if scheme in S3_SCHEMES:
        return S3Location(target, rest, dict(storage_options or {}))
    raise StorageError(
        "use", target, f"{scheme}:// is not supported yet (only local paths and s3://; gs:// and az:// will follow)"
    )


def is_url(target: str) -> bool:
    """A URL (scheme://...), as opposed to a local path (which may hold a colon)."""
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def open_object(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Location, str]:
    """The place holding the one object `url` names, and its name there:
    `s3://bucket/a/b.png` is (s3://bucket/a, "b.png"). A URL that ends in `/`
    names a prefix, not an object: StorageError."""
    head, _, name = url.rstrip().rpartition("/")
    if not name or head.endswith(":/") or head.endswith(":"):
        raise StorageError("use", url, "names no object: give its name after the prefix (s3://bucket/prefix/name.png)")
    place = open_location(head, storage_options)  # refuses credentials and odd parts in the prefix first
    if name in (".", ".."):
        raise StorageError("use", url, "the prefix has an empty, . or .. part")
    return place, name


def credentials_refused(options: Mapping[str, Any]) -> str | None:
    """Why `options` cannot be taken, when they carry credential-like keys (named, never their values), or None."""
    secret = _secret_options(options)
    if not secret:
        return None
    return (
        f"may not carry credentials ({', '.join(secret)}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
        " or AWS_PROFILE"
    )


def _secret_options(options: Mapping[str, Any], within: str = "") -> list[str]:
    """The credential-like keys in `options`, at any depth (`client_kwargs.aws_access_key_id`)."""
    found = []
    for key, value in options.items():
        if str(key).lower() in SECRET_OPTIONS:
            found.append(f"{within}{key}")
        elif isinstance(value, Mapping):
            found += _secret_options(value, f"{within}{key}.")
    return sorted(found)


def _check_name(name: str) -> str:
    """A name relative to its place, that stays inside it."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{name!r} is not a name inside a place (relative, no empty, . or .. parts)")
    return name


class ReportWriter(ABC):
    """A report of one line per item (see the module's docstring for how each store keeps it)."""

    @abstractmethod
    def write_line(self, line: str) -> None: ...

    @abstractmethod
    def checkpoint(self) -> None:
        """Make the lines so far durable where the report lives (locally they already are)."""

    @abstractmethod
    def close(self) -> None:
        """The last checkpoint, then the report is closed."""


class Location(ABC):
    """A folder or a prefix in object storage. Names are relative to it, `/` between parts."""

    url: str

    @abstractmethod
    def url_of(self, name: str) -> str:
        """Where `name` is, as a report would say it."""

    @abstractmethod
    def read_bytes(self, name: str) -> bytes: ...

    def size_of(self, name: str) -> int:
        """The bytes `name` holds, asked before reading it (a HEAD in object storage)."""
        return len(self.read_bytes(name))

    def read_prefix(self, name: str, size: int) -> bytes:
        """At most the first `size` bytes of `name` (a ranged GET in object storage)."""
        return self.read_bytes(name)[: max(size, 0)]

    @abstractmethod
    def open_read(self, name: str) -> IO[bytes]:
        """`name` as a binary stream, read a block at a time; a failed read raises StorageError."""

    @abstractmethod
    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        """Write `name`: it appears whole, or not at all (an old one stays whole)."""

    @abstractmethod
    def write_file_atomic(self, name: str, file: IO[bytes]) -> None:
        """Write `name` from `file` (read from where it stands to its end), as `write_bytes_atomic` does, without
        holding it in memory."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, pattern: str = "*") -> list[str]:
        """The names matching `pattern` (fnmatch; `sub/*.png` looks in `sub`), sorted."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def open_report(self, name: str, *, resume: bool = False) -> ReportWriter:
        """A report: a new one (an old one is replaced), or, resuming, the old one carried on."""

    def check_writable(self) -> None:
        """Prove the place can be written: a probe written, then deleted. StorageError if not."""
        probe = PROBE_PREFIX + secrets.token_hex(8)
        try:
            self.write_bytes_atomic(probe, b"compositor: can this place be written?\n")
            self.delete(probe)
        except StorageError as exc:  # named as the place, not the probe
            raise StorageError(exc.action, self.url, exc.reason) from None


# --- a local folder --------------------------------------------------------------------------------------------------


class LocalLocation(Location):
    """A folder: exactly what batch has always done (see `files.write_atomically`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def url_of(self, name: str) -> str:
        return str(self._path(name))

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError("read", str(path), "not found") from None
        except OSError as exc:
            raise StorageError("read", str(path), exc.strerror or str(exc)) from None

    def open_read(self, name: str) -> IO[bytes]:
        path = self._path(name)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise StorageError("read", str(path), "not found") from None
        except OSError as exc:
            raise StorageError("read", str(path), exc.strerror or str(exc)) from None

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        with self._writing(name) as sink:
            sink.write(data)

    def write_file_atomic(self, name: str, file: IO[bytes]) -> None:
        with self._writing(name) as sink:
            shutil.copyfileobj(file, sink, READ_BLOCK)

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[IO[bytes]]:
        """`atomic_file` for `name`, its OSErrors as StorageErrors naming the path."""
        path = self._path(name)
        try:
            with atomic_file(path) as sink:
                yield sink
        except FileNotFoundError:
            raise StorageError("write", str(path), "the folder does not exist") from None
        except OSError as exc:
            raise StorageError("write", str(path), exc.strerror or str(exc)) from None

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(path.relative_to(self.root).as_posix() for path in self.root.glob(pattern) if path.is_file())

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError("delete", str(path), exc.strerror or str(exc)) from None

    def check_writable(self) -> None:
        if not self.root.is_dir():
            reason = "not a folder" if self.root.exists() else "the folder does not exist"
            raise StorageError("write", self.url, reason)
        super().check_writable()

    def open_report(self, name: str, *, resume: bool = False) -> ReportWriter:
        return _LocalReport(self._path(name), resume)


class _LocalReport(ReportWriter):
    """Appended to and flushed line by line; a resume first drops a cut last line."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        try:
            if resume:
                _drop_partial_line(path)
            self._file: IO[str] = path.open("a" if resume else "w", encoding="utf-8")
        except OSError as exc:
            raise StorageError("write", str(path), exc.strerror or str(exc)) from None

    def write_line(self, line: str) -> None:
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            raise StorageError("write", str(self.path), exc.strerror or str(exc)) from None

    def checkpoint(self) -> None:
        """Each line is flushed as it is written: nothing to do."""

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:  # a line that could not be flushed: a resume drops what is left of it
            raise StorageError("write", str(self.path), exc.strerror or str(exc)) from None


def _drop_partial_line(report: Path, chunk: int = 1024 * 1024) -> None:
    """A report whose last line was cut (a kill, a full disk) loses that line,
    so that what is appended starts a line of its own."""
    try:
        file = report.open("r+b")
    except FileNotFoundError:
        return
    with file:
        end = file.seek(0, os.SEEK_END)
        keep = end
        while keep > 0:
            start = max(0, keep - chunk)
            file.seek(start)
            block = file.read(keep - start)
            if keep == end and block.endswith(b"\n"):
                return  # whole: nothing to drop
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        file.truncate(keep)


# --- S3 and S3-compatible stores --------------------------------------------------------------------------------------


class S3Location(Location):
    """A prefix in a bucket, through s3fs (imported here, on first use)."""

    def __init__(self, url: str, path: str, storage_options: dict[str, Any]) -> None:
        self.scheme = url.partition("://")[0]
        bucket = path.partition("/")[0]
        if "@" in bucket:  # user:secret@bucket (StorageError shows the URL without them)
            raise StorageError(
                "use", url, "credentials in a URL are not accepted: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        refused = credentials_refused(storage_options)
        if refused:
            raise StorageError("use", url, f"storage options {refused}")
        self.prefix = path.rstrip("/")
        if not bucket:
            raise StorageError("use", url, "no bucket named")
        if any(part in ("", ".", "..") for part in self.prefix.split("/")):  # S3 would take them as literal keys
            raise StorageError("use", url, "the prefix has an empty, . or .. part")
        self.url = f"{self.scheme}://{self.prefix}"
        self.storage_options = storage_options
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}  # a process that unpickles it connects on its own

    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:
                import s3fs
            except ImportError:
                raise StorageError("use", self.url, "s3:// needs the s3 extra: pip install 'compositor[s3]'") from None
            # A file system of its own (fsspec caches them by options: the environment may have changed since),
            # and no cached listings (other writers add objects under the same prefix).
            self._fs = s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True, use_listings_cache=False)
        return self._fs

    def _path(self, name: str) -> str:
        return f"{self.prefix}/{_check_name(name)}"

    def url_of(self, name: str) -> str:
        return f"{self.scheme}://{self._path(name)}"

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return bytes(self.fs.cat_file(path))
        except Exception as exc:
            raise _storage_error("read", self.url_of(name), exc) from None

    def size_of(self, name: str) -> int:
        try:
            info = self.fs.info(self._path(name))
        except Exception as exc:
            raise _storage_error("read", self.url_of(name), exc) from None
        if info.get("type") != "file":
            raise StorageError("read", self.url_of(name), "not found (a prefix of other objects, not an object)")
        return int(info["size"])

    def read_prefix(self, name: str, size: int) -> bytes:
        if size <= 0:
            return b""  # a range of nothing is not a range S3 answers
        try:
            return bytes(self.fs.cat_file(self._path(name), start=0, end=size))
        except Exception as exc:
            raise _storage_error("read", self.url_of(name), exc) from None

    def open_read(self, name: str) -> IO[bytes]:
        path, url = self._path(name), self.url_of(name)
        try:
            file = self.fs.open(path, "rb", block_size=READ_BLOCK)
        except Exception as exc:
            raise _storage_error("read", url, exc) from None
        return io.BufferedReader(_ObjectStream(file, url), buffer_size=READ_BLOCK)

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        self._put(name, data, len(data))

    def write_file_atomic(self, name: str, file: IO[bytes]) -> None:
        start = file.tell()
        size = file.seek(0, os.SEEK_END) - start
        file.seek(start)
        self._put(name, file, size)  # the SDK streams a file body

    def _put(self, name: str, body: bytes | IO[bytes], size: int) -> None:
        path = self._path(name)
        if size > SINGLE_PUT_LIMIT:
            raise StorageError("write", self.url_of(name), f"{size} bytes is more than one PUT can carry")
        try:
            bucket, key, _ = self.fs.split_path(path)
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body)  # one PUT: whole, or nothing
        except Exception as exc:
            raise _storage_error("write", self.url_of(name), exc) from None
        finally:
            if self._fs is not None:
                self._fs.invalidate_cache(path)

    def exists(self, name: str) -> bool:
        path = self._path(name)
        try:
            return self.fs.info(path).get("type") == "file"
        except FileNotFoundError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise _storage_error("read", self.url_of(name), exc) from None
            return False
        except Exception as exc:
            raise _storage_error("read", self.url_of(name), exc) from None

    def list(self, pattern: str = "*") -> list[str]:
        folder, _, leaf = pattern.rpartition("/")
        where = f"{self.prefix}/{_check_name(folder)}" if folder else self.prefix
        try:
            entries = self.fs.ls(where, detail=True, refresh=True)
        except FileNotFoundError as exc:
            if _error_code(exc) == "NoSuchBucket" or "/" not in where:
                raise _storage_error("list", f"{self.scheme}://{where}", exc) from None
            return []  # an empty prefix
        except Exception as exc:
            raise _storage_error("list", f"{self.scheme}://{where}", exc) from None
        names = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            base = str(entry["name"]).rstrip("/").rpartition("/")[2]
            if fnmatch.fnmatchcase(base, leaf):
                names.append(f"{folder}/{base}" if folder else base)
        return sorted(names)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            self.fs.rm_file(path)
        except Exception as exc:
            raise _storage_error("delete", self.url_of(name), exc) from None

    def open_report(self, name: str, *, resume: bool = False) -> ReportWriter:
        return _ObjectReport(self, name, resume)


class _ObjectStream(io.RawIOBase):
    """An object read a block at a time (under io.BufferedReader: lines, and reads of any size); a failed read
    is a StorageError naming the object."""

    def __init__(self, file: Any, url: str) -> None:
        self._file = file
        self._url = url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._file.read(len(buffer))
        except Exception as exc:
            raise _storage_error("read", self._url, exc) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._file.close()
        super().close()


class _ObjectReport(ReportWriter):
    """Lines kept in a local spool file; the whole object PUT again at each checkpoint and at close."""

    def __init__(self, place: Location, name: str, resume: bool) -> None:
        self.place = place
        self.name = name
        self._spool: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._dirty = not resume  # a new report replaces an old one at the first checkpoint, even if empty
        if resume:
            try:
                old = place.read_bytes(name) if place.exists(name) else b""
            except BaseException:
                self._spool.close()
                raise
            cut = old.rfind(b"\n") + 1  # an object is whole; a line without its newline is dropped all the same
            self._spool.write(old[:cut])

    def write_line(self, line: str) -> None:
        self._spool.write(line.encode("utf-8") + b"\n")
        self._dirty = True

    def checkpoint(self) -> None:
        if not self._dirty:
            return
        self._spool.seek(0)
        data = self._spool.read()
        self.place.write_bytes_atomic(self.name, data)
        self._dirty = False

    def close(self) -> None:
        try:
            self.checkpoint()
        finally:
            self._spool.close()


# --- errors, in one line -------------------------------------------------------------------------------------------

_REASONS = {
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "not found",
    "404": "not found",
    "InvalidAccessKeyId": "wrong credentials: the access key is not known (AWS_ACCESS_KEY_ID, or the profile's)",
    "SignatureDoesNotMatch": "wrong credentials: the secret key does not match the access key (AWS_SECRET_ACCESS_KEY)",
    "InvalidToken": "wrong credentials: the session token is not valid (AWS_SESSION_TOKEN)",
    "ExpiredToken": "wrong credentials: the session token has expired (AWS_SESSION_TOKEN)",
    "AccessDenied": "access denied: these credentials may not do this here",
    "AllAccessDisabled": "access denied: all access to this bucket is disabled",
    "403": "access denied (or wrong credentials)",
    "PermanentRedirect": "the bucket is in another region (set AWS_REGION)",
    "AuthorizationHeaderMalformed": "the bucket is in another region (set AWS_REGION)",
}
_REASONS_BY_CLASS = {
    "NoCredentialsError": "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "PartialCredentialsError": "incomplete credentials: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "ProfileNotFound": "the profile named (AWS_PROFILE, or the profile storage option) does not exist",
    "EndpointConnectionError": "cannot reach the endpoint (AWS_ENDPOINT_URL, or the endpoint_url storage option)",
    "ConnectTimeoutError": "cannot reach the endpoint (AWS_ENDPOINT_URL, or the endpoint_url storage option)",
}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code (NoSuchBucket, AccessDenied, ...) a botocore ClientError carried, if any."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
    return None


def _storage_error(action: str, url: str, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    code = _error_code(exc)
    if code in _REASONS:
        return StorageError(action, url, _REASONS[code])
    for link in _chain(exc):
        reason = _REASONS_BY_CLASS.get(type(link).__name__)
        if reason:
            return StorageError(action, url, reason)
    if isinstance(exc, FileNotFoundError):
        return StorageError(action, url, "not found")
    if isinstance(exc, PermissionError):
        return StorageError(action, url, "access denied")
    detail = str(exc).strip().splitlines()
    if isinstance(exc, TypeError):  # s3fs hands the options to its session and client, which reject what they lack
        return StorageError(
            action, url, f"the storage options could not be used (--storage-options): {detail[0] if detail else exc}"
        )
    return StorageError(action, url, f"{code or type(exc).__name__}: {detail[0] if detail else 'no detail'}")
