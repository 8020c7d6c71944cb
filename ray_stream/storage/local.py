"""A local-directory ``ObjectStore``: the default backend (``file:///abs/dir``).

Key ``a/b/c`` is the file ``<root>/a/b/c``. Invariants:

* **Durable on return.** ``put`` writes ``<dir>/.tmp-<uuid>``, flushes and ``fsync``s it,
  moves it into place with ``os.replace`` (atomic on POSIX: readers see the old or the new
  object, never a partial one), then ``fsync``s the directory so the rename itself survives
  a power loss. Directories created on the way are fsynced into their parents too.
* **Create-only is atomic.** ``if_none_match=True`` publishes the fsynced temp file with
  ``os.link``, which fails with ``EEXIST`` if the name exists, so of N racing creators
  exactly one wins; the rest get ``PreconditionFailed``. (An ``O_EXCL`` create of the final
  name would also be exclusive but would expose a half-written file to readers.)
* ``get_range`` reads only the requested bytes (``os.pread``).
* Names starting with ``.tmp-`` are never keys: ``list`` skips them (leftovers of a crash
  mid-``put``), and keys with such a component are rejected.
* Keys are confined to ``root``: absolute keys and ``..`` are ``InvalidRequest``.

``OSError`` is translated here: missing files are ``NotFound``; a key that collides with a
directory (``a`` vs ``a/b``) is ``InvalidRequest``; anything else (disk full, I/O error)
is ``StorageUnavailable``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from ray_stream.errors import InvalidRequest, NotFound, PreconditionFailed, StorageUnavailable
from ray_stream.storage.base import check_range, validate_key

__all__ = ["TEMP_PREFIX", "LocalStore"]

TEMP_PREFIX = ".tmp-"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _translate(key: str, action: str) -> Iterator[None]:
    """Map OSError to storage errors for one operation on ``key``."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise NotFound(f"object {key!r} not found ({action}: {exc.strerror})") from exc
    except OSError as exc:
        raise StorageUnavailable(f"{action} {key!r} failed: {exc}") from exc


class LocalStore:
    """Objects as files under one directory."""

    def __init__(self, root: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.root = str(Path(root).expanduser().resolve())
        self.url = url or "file://" + self.root
        try:
            self._make_dirs(self.root)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create store directory {self.root!r}: {exc}") from exc

    # -- paths ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        validate_key(key)
        if any(part.startswith(TEMP_PREFIX) for part in key.split("/")):
            raise InvalidRequest(f"object key {key!r} uses the reserved prefix {TEMP_PREFIX!r}")
        return os.path.join(self.root, *key.split("/"))

    def _make_dirs(self, path: str) -> None:
        """``mkdir -p`` that fsyncs each new directory's parent (the new entry is durable)."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != path:
            self._make_dirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return
        _fsync_dir(parent)

    # -- writes --------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            self._make_dirs(directory)
            self._write_synced(tmp, data)
            if if_none_match:
                self._link_exclusive(tmp, path, key)
            else:
                os.replace(tmp, path)
            _fsync_dir(directory)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise InvalidRequest(
                f"object key {key!r} collides with an existing key or directory in {self.root!r}"
            ) from exc
        except OSError as exc:
            raise StorageUnavailable(f"put {key!r} into {self.root!r} failed: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(tmp)

    @staticmethod
    def _write_synced(tmp: str, data: bytes) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _link_exclusive(tmp: str, path: str, key: str) -> None:
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            if os.path.isdir(path):
                raise  # a directory, not an object: reported as a key collision
            raise PreconditionFailed(f"object {key!r} already exists (create-only put)") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StorageUnavailable(f"delete {key!r} from {self.root!r} failed: {exc}") from exc
        with _translate(key, "delete"):
            _fsync_dir(os.path.dirname(path))

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with _translate(key, "get"), open(path, "rb") as f:
            return f.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        path = self._path(key)
        with _translate(key, "get_range"):
            fd = os.open(path, os.O_RDONLY)
            try:
                return self._pread_all(fd, start, length)
            finally:
                os.close(fd)

    @staticmethod
    def _pread_all(fd: int, start: int, length: int) -> bytes:
        chunks: list[bytes] = []
        remaining = length
        while remaining > 0:
            chunk = os.pread(fd, remaining, start + length - remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def size(self, key: str) -> int:
        path = self._path(key)
        with _translate(key, "size"):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"object {key!r} not found (size: {path!r} is not a regular file)")
        return st.st_size

    def list(self, prefix: str = "") -> list[str]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base:
            try:
                validate_key(base)
            except InvalidRequest:
                return []  # no valid key can start with this prefix
        top = os.path.join(self.root, *base.split("/")) if base else self.root
        keys: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(top, onerror=self._raise):
                dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                for name in filenames:
                    if name.startswith(TEMP_PREFIX):
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix):
                        keys.append(key)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageUnavailable(f"list {prefix!r} in {self.root!r} failed: {exc}") from exc
        keys.sort()
        return keys

    @staticmethod
    def _raise(exc: OSError) -> None:
        # os.walk swallows errors by default; a directory vanishing mid-walk (a racing
        # delete) is harmless, anything else must not silently shorten the listing.
        if not isinstance(exc, FileNotFoundError | NotADirectoryError):
            raise exc

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own file descriptors."""
