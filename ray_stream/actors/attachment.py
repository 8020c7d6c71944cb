"""A driver's attachment to the Ray of a cluster that runs elsewhere: attach, watch, detach.

``connect()`` attaches this process to the Ray a ``ray-stream start`` (or a Ray head)
runs. That cluster can stop or be replaced under a live driver (a notebook kernel), and
Ray's core then aborts the driver: measured on Ray 2.60, a driver whose GCS went away
exits with status 1 about 60 s later (``Failed to connect to GCS within 60 seconds``),
calls or no calls. The limit is ``gcs_rpc_server_reconnect_timeout_s``, which Ray reads
from ``RAY_gcs_rpc_server_reconnect_timeout_s`` at every ``ray.init``.

Rules this module keeps:

1. One Ray session per process (Ray's rule). ``attach`` reuses the session only while
   it is live and is the cluster asked for; a lost, stopped or replaced session is shut
   down first, so no handle keeps a dead session.
2. A session ``attach`` starts runs with ``DRIVER_RECONNECT_TIMEOUT_S`` instead of 60 s,
   so a stopped cluster cannot abort the driver; the dead session is shut down at the
   next ``attach`` or the last ``release``, in the caller's thread (``ray.shutdown`` of
   a lost session was measured at 5 s, and the process lives on).
3. A session somebody else started (their own ``ray.init``) keeps Ray's 60 s, so the
   watchdog shuts it down itself as soon as it is lost, well inside that time.
4. Lost means: the ``ray-stream start`` process the state record named has exited, or
   the GCS port refused ``LOSS_PROBES`` connections in a row (one per
   ``PROBE_INTERVAL_S``).
5. No call goes into a lost session: ``check`` raises ``Unavailable`` naming
   ``connect()``. (There ``ray.get_actor`` blocks 60 s.) While a lost session is shut
   down and no new one attached, Ray's auto-init is off: an old handle's call would
   otherwise start a new, empty local Ray in the driver.
6. A Ray worker (a task or an actor) is never attached, watched or shut down.
7. A session replaced behind this module's back (``ray.shutdown()`` and a new
   ``ray.init`` by the caller, as test suites and notebooks do) ends the watch of the old
   one quietly: its loss never shuts down or blocks the new session.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import ray

from ray_stream.errors import Unavailable

__all__ = [
    "DRIVER_RECONNECT_TIMEOUT_S",
    "LOSS_PROBES",
    "PROBE_INTERVAL_S",
    "RAY_ENV_DEFAULTS",
    "Attachment",
    "attach",
    "check_current",
    "drop_lost",
    "process_alive",
    "release",
]

# Ray binds the machine's external address unless told otherwise; keep it on loopback.
RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts workers at nice 15 by default; an agent is a server that Kafka clients
    # wait on, so it runs at the same priority as they do.
    "RAY_worker_niceness": "0",
}
RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
# Seven days. Ray keeps it in an int32 and multiplies it by 1000 in one place
# (GcsServerAddressUpdater), so values above ~24.8 days overflow.
DRIVER_RECONNECT_TIMEOUT_S = 7 * 24 * 3600
# A session whose limit is at least this long is left to the caller's thread (rule 2).
PROTECTED_MIN_S = 600
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
# Three refused probes (~3 s) before a session counts as lost: a GCS that is merely slow
# still accepts TCP connections, so this only has to ride out a busy machine.
LOSS_PROBES = 3

HOW_TO_START = "start one with `ray-stream start`, or pass connect(address=...)"


@dataclass(slots=True, eq=False)
class Attachment:
    """The Ray session ``connect()`` handles use; guarded by the module lock.

    Attributes:
        gcs_address: ``host:port`` of the cluster's GCS.
        server_pid: the ``ray-stream start`` process of the state record, if any.
        owns_session: ``attach`` called ``ray.init``; the last ``release`` shuts it down.
        protected: Ray's abort limit is at least ``PROTECTED_MIN_S`` (rule 2).
        users: open handles on it.
        lost: why it ended (the ``Unavailable`` message), None while live.
    """

    gcs_address: str
    server_pid: int | None
    owns_session: bool
    protected: bool
    users: int = 0
    lost: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raises:
        Unavailable: the session is lost, closed or replaced (the message says why).
        """
        if self.lost is not None:
            raise Unavailable(self.lost)


_lock = threading.RLock()
_current: Attachment | None = None
_auto_init: bool | None = None  # Ray's auto-init setting while this module holds it off


def attach(address: str | None, *, namespace: str, server_pid: int | None = None) -> Attachment:
    """The live session on ``address`` (or the Ray this process runs), one user more.

    Args:
        address: the cluster's GCS ``host:port`` (or ``auto``); None uses the Ray this
            process already runs, if any.
        namespace: the Ray namespace of a session this call starts.
        server_pid: the ``ray-stream start`` process that runs the cluster, if known.

    Raises:
        Unavailable: nothing to attach to, or its GCS does not answer (the message says
            how to start a cluster).
    """
    global _current
    with _lock:
        if _in_worker():
            return Attachment(_session_gcs(), None, owns_session=False, protected=True)
        if ray.is_initialized() and not _usable(address, server_pid):
            _shutdown(_current, "connect() moved this process to another Ray session")
        if not ray.is_initialized():
            _current = _start_session(address, namespace=namespace, server_pid=server_pid)
        elif _current is None or _current.lost is not None:
            # The session of the caller's own ray.init (or start_local): watched, not owned.
            _current = Attachment(_session_gcs(), server_pid, owns_session=False, protected=False)
            _start_watchdog(_current)
        _current.users += 1
        return _current


def release(attachment: Attachment) -> None:
    """One user fewer; the last one shuts down a session ``attach`` started (or a lost
    one: rule 2). Never raises."""
    global _current
    with _lock:
        attachment.users = max(0, attachment.users - 1)
        if attachment.users or attachment is not _current:
            return
        if attachment.owns_session or attachment.lost is not None:
            _shutdown(attachment, "this handle was closed", auto_init_after=True)
        else:  # the caller's own session: no longer ours to watch
            attachment.stop.set()
            _current = None


def drop_lost() -> None:
    """Shut down this process's session if it is lost (before a new ``ray.init``)."""
    global _current
    with _lock:
        if _current is not None and _current.lost is not None:
            _shutdown(_current, _current.lost, auto_init_after=True)
            _current = None


def check_current() -> None:
    """Raises:
    Unavailable: this process's attachment is lost (so no call goes into it).
    """
    current = _current
    if current is not None and current.lost is not None:
        if _replaced(current):
            return  # rule 7: a session started since, outside connect(); not ours
        raise Unavailable(current.lost)


def _replaced(attachment: Attachment) -> bool:
    """Rule 7: this process runs another Ray session than ``attachment``'s (its owner
    shut that one down and called ``ray.init`` again without ``connect()``)."""
    return ray.is_initialized() and not _same_address(_session_gcs(), attachment.gcs_address)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probe); a zombie is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child its parent has not reaped yet is a zombie, not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# ------------------------------------------------------------------ the session


def _usable(address: str | None, server_pid: int | None) -> bool:
    """Whether the running session may serve an attach to ``address``."""
    current = _current
    if current is not None and current.lost is not None:
        return False
    gcs = _session_gcs()
    if not gcs_answers(gcs):
        return False
    if current is None or not current.owns_session:
        return True  # the caller's own ray.init or start_local: used as it is
    if current.server_pid is not None and not process_alive(current.server_pid):
        return False
    if server_pid is not None and server_pid != current.server_pid:
        return False  # the state record names another `ray-stream start`: replaced
    return address in (None, "auto") or _same_address(address, gcs)


def _start_session(address: str | None, *, namespace: str, server_pid: int | None) -> Attachment:
    if address is None:
        raise Unavailable(f"no running ray_stream cluster found: {HOW_TO_START}")
    if address != "auto" and not gcs_answers(address):
        raise Unavailable(
            f"no Ray answers at {address} (the cluster is stopped, or still stopping): "
            f"{HOW_TO_START}"
        )
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    preset = os.environ.get(RECONNECT_ENV)
    # Set for this ray.init only: the driver's core worker reads it now, and a Ray this
    # process starts later (start_local) must not inherit it.
    os.environ[RECONNECT_ENV] = preset or str(DRIVER_RECONNECT_TIMEOUT_S)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except ConnectionError as exc:
        raise Unavailable(f"could not attach to Ray at {address} ({exc}): {HOW_TO_START}") from exc
    finally:
        if preset is None:
            os.environ.pop(RECONNECT_ENV, None)
        _restore_auto_init()
    limit = int(preset) if preset and preset.strip().isdigit() else DRIVER_RECONNECT_TIMEOUT_S
    attachment = Attachment(
        _session_gcs(), server_pid, owns_session=True, protected=limit >= PROTECTED_MIN_S
    )
    _start_watchdog(attachment)
    return attachment


def _shutdown(attachment: Attachment | None, reason: str, *, auto_init_after: bool = False) -> None:
    """End ``attachment`` (with ``reason`` unless it already has one) and this process's
    Ray session (the caller holds the lock)."""
    if attachment is not None:
        attachment.stop.set()
        if attachment.lost is None:
            attachment.lost = _lost_message(reason)
    _hold_auto_init()
    if ray.is_initialized():
        ray.shutdown()
    if auto_init_after:
        _restore_auto_init()


def _lost_message(reason: str) -> str:
    return (
        f"{reason}: the cluster was stopped or restarted and this handle's Ray session is "
        "gone; call ray_stream.connect() again for a handle on the cluster running now "
        "(if none runs, start one with `ray-stream start`)"
    )


def _session_gcs() -> str:
    return str(ray.get_runtime_context().gcs_address) if ray.is_initialized() else ""


def _in_worker() -> bool:
    return bool(ray.is_initialized() and _worker().mode == ray.WORKER_MODE)


def _worker() -> Any:
    return ray._private.worker.global_worker


# ------------------------------------------------------------------ auto-init


def _hold_auto_init() -> None:
    """Turn Ray's auto-init off until the next attach or release (rule 5)."""
    global _auto_init
    hook = _auto_init_hook()
    if hook is not None and _auto_init is None:
        _auto_init = bool(hook.enable_auto_connect)
        hook.enable_auto_connect = False


def _restore_auto_init() -> None:
    global _auto_init
    hook = _auto_init_hook()
    if hook is not None and _auto_init is not None:
        hook.enable_auto_connect = _auto_init
    _auto_init = None


def _auto_init_hook() -> Any:
    # Ray has no public switch after import (RAY_ENABLE_AUTO_CONNECT is read once, when
    # ray is imported); without the attribute (another Ray) rule 5's guard is skipped.
    from ray._private import auto_init_hook

    return auto_init_hook if hasattr(auto_init_hook, "enable_auto_connect") else None


# ------------------------------------------------------------------ the watchdog


def gcs_answers(address: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections on the GCS ``host:port``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _same_address(a: str, b: str) -> bool:
    def canonical(address: str) -> str:
        host, _, port = address.rpartition(":")
        try:
            return f"{socket.gethostbyname(host.strip('[]'))}:{port}"
        except OSError:
            return address

    return a == b or canonical(a) == canonical(b)


def _start_watchdog(attachment: Attachment) -> None:
    threading.Thread(
        target=_watch, args=(attachment,), name="ray-stream-attachment", daemon=True
    ).start()


def _watch(attachment: Attachment) -> None:
    """Probe once per ``PROBE_INTERVAL_S`` until lost or stopped (rules 3 and 4)."""
    refused = 0
    while not attachment.stop.wait(PROBE_INTERVAL_S):
        pid = attachment.server_pid
        if pid is not None and not process_alive(pid):
            _lose(attachment, f"the `ray-stream start` process {pid} exited")
            return
        refused = 0 if gcs_answers(attachment.gcs_address) else refused + 1
        if refused >= LOSS_PROBES:
            _lose(attachment, f"the cluster's Ray (GCS {attachment.gcs_address}) stopped answering")
            return


def _lose(attachment: Attachment, reason: str) -> None:
    global _current
    with _lock:
        if attachment.lost is not None or attachment.stop.is_set():
            return
        if not ray.is_initialized() or _replaced(attachment):
            # Rule 7: its session was shut down (and maybe another started) by someone
            # else; there is nothing of ours to protect, and the new session is not lost.
            attachment.stop.set()
            if attachment is _current:
                _current = None
            return
        attachment.lost = _lost_message(reason)
        if not attachment.protected and attachment is _current:
            _shutdown(attachment, reason)  # before Ray's core aborts the process (rule 3)
