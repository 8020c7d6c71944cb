"""Choose and open an ``ObjectStore`` from a URL (storage chosen by scheme, as in tansu).

Accepted forms:

* ``memory://`` — a fresh, private in-process store; ``memory://<name>`` — the in-process
  store of that name, shared by every ``open_store`` call with the same URL in one process
  (never across processes, so not across Ray actors).
* ``file:///abs/dir`` (also ``file://localhost/abs/dir``, ``file://./rel/dir``) or a bare
  filesystem path — a ``LocalStore`` on that directory (created if missing).
* ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:PORT&region=us-east-1&create_bucket=true``
  — an ``S3Store``; boto3 is imported only for this scheme.
* ``faulty+<any url above>[#spec]`` — that store wrapped in a ``FaultyStore`` (fault
  injection for tests and the chaos harness). The optional fragment is an initial fault
  spec in query form, e.g. ``faulty+file:///tmp/x#seed=7&put_rate_before=0.1``
  (``seed`` seeds the fault RNG; every other key is passed to ``FaultyStore.configure``).
  Each process opening the URL gets its own wrapper; actors change theirs at run time
  through ``inject_faults``.

Anything else is ``InvalidConfig`` naming the URL and the accepted schemes.
"""

from __future__ import annotations

import random
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

from ray_stream.errors import InvalidConfig
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.local import LocalStore
from ray_stream.storage.memory import MemoryStore

__all__ = ["FAULTY_PREFIX", "SCHEMES", "inner_url", "open_store"]

SCHEMES = ("memory://", "file://", "s3://", "faulty+")
FAULTY_PREFIX = "faulty+"

_named_memory: dict[str, MemoryStore] = {}
_named_memory_lock = threading.Lock()


def open_store(url: str) -> ObjectStore:
    """Open the object store that ``url`` names.

    Args:
        url: see the module docstring for the accepted forms.

    Returns:
        A ready store; S3 stores connect lazily, on their first request.

    Raises:
        InvalidConfig: empty URL, unknown scheme, or a malformed/unknown S3 option.
        StorageUnavailable: a local directory could not be created.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidConfig(f"object store url {url!r} is empty; accepted schemes: {SCHEMES}")
    if url.startswith(FAULTY_PREFIX):
        return _open_faulty(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return _open_memory(url)
    if scheme == "file":
        return LocalStore(_file_path(url), url=url)
    if scheme == "s3":
        from ray_stream.storage.s3 import S3Store  # boto3 costs ~0.3 s to import

        return S3Store.from_url(url)
    if scheme == "":  # a bare filesystem path
        return LocalStore(url)
    raise InvalidConfig(
        f"object store url {url!r} has unsupported scheme {scheme!r}; "
        f"accepted: {', '.join(SCHEMES)} or a bare directory path"
    )


def _open_memory(url: str) -> MemoryStore:
    name = url[len("memory://") :] if url.startswith("memory://") else ""
    if not name:
        return MemoryStore(url)
    with _named_memory_lock:
        store = _named_memory.get(name)
        if store is None:
            store = _named_memory[name] = MemoryStore(url)
        return store


def _file_path(url: str) -> str:
    rest = url[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    path = unquote(rest.split("?", 1)[0])
    if not path:
        raise InvalidConfig(f"object store url {url!r} names no directory (file:///abs/dir)")
    return path


def inner_url(url: str) -> str:
    """The URL under a ``faulty+`` wrapper (without its spec fragment); others unchanged."""
    if not url.startswith(FAULTY_PREFIX):
        return url
    return url[len(FAULTY_PREFIX) :].split("#", 1)[0]


def _open_faulty(url: str) -> ObjectStore:
    from ray_stream.storage.faults import FaultyStore

    inner = inner_url(url)
    if not inner or inner.startswith(FAULTY_PREFIX):
        raise InvalidConfig(f"object store url {url!r}: 'faulty+' must wrap one store url")
    spec, seed = _fault_spec(url)
    store = FaultyStore(open_store(inner), rng=random.Random(seed), url=url)
    if spec:
        store.configure(spec)
    return store


def _fault_spec(url: str) -> tuple[dict[str, object], int | None]:
    """The ``#k=v&...`` fragment of a faulty+ URL as a configure() spec, plus the seed."""
    fragment = url.split("#", 1)[1] if "#" in url else ""
    spec: dict[str, object] = {}
    seed: int | None = None
    for key, raw in parse_qsl(fragment, keep_blank_values=True):
        try:
            value: object = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
        except ValueError:
            value = raw
        if key == "seed":
            if not isinstance(value, int):
                raise InvalidConfig(f"object store url {url!r}: seed must be an int, got {raw!r}")
            seed = value
        else:
            spec[key] = value
    return spec, seed
