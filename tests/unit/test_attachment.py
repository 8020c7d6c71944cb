"""A connected handle's lifecycle and loss rules, without Ray (issue 12).

The Ray half (a real restart under a live driver) is tests/integration/test_reattach.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ray_stream.actors import attachment, handles
from ray_stream.actors.attachment import Attachment
from ray_stream.client import cluster as cluster_module
from ray_stream.client.cluster import Cluster
from ray_stream.config import Settings
from ray_stream.errors import InvalidRequest, Unavailable


class _Metadata:
    """Stands in for the metadata actor handle: ``list_topics.remote()`` returns a tag."""

    class _Method:
        def remote(self, *args: object) -> str:
            return "ref"

    list_topics = _Method()


def _attachment(**kw) -> Attachment:
    kw.setdefault("owns_session", True)
    kw.setdefault("protected", True)
    return Attachment("127.0.0.1:1", None, **kw)


def _connected(att: Attachment, *, timeout_s: float = 30.0) -> Cluster:
    att.users += 1
    return Cluster(
        Settings(),
        owned=False,
        started_ray=False,
        actors=(_Metadata(), None),
        attachment=att,
        timeout_s=timeout_s,
    )


def test_gcs_answers_only_where_something_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert attachment.gcs_answers(f"127.0.0.1:{port}")
    assert not attachment.gcs_answers(f"127.0.0.1:{port}")
    assert not attachment.gcs_answers("no-port")


def test_process_alive_is_false_for_an_exited_process():
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert not attachment.process_alive(int(child.stdout))  # exited and reaped
    assert attachment.process_alive(os.getpid())


def test_cluster_lost_attachment_raises_unavailable_naming_connect():
    att = _attachment()
    cluster = _connected(att)
    att.lost = attachment._lost_message("the `ray-stream start` process 1 exited")
    with pytest.raises(Unavailable, match=r"connect\(\) again"):
        cluster.list_topics()
    with pytest.raises(Unavailable, match="process 1 exited"):
        _ = cluster.metadata


def test_cluster_close_detaches_once_and_the_handle_refuses_calls():
    att = _attachment()
    cluster = _connected(att)
    cluster.close()
    cluster.close()
    assert att.users == 0
    with pytest.raises(InvalidRequest, match="closed"):
        cluster.list_topics()


def test_cluster_connected_shutdown_and_with_block_only_detach():
    att = _attachment(users=1)  # another handle on the same session stays open
    with _connected(att) as cluster:
        assert att.users == 2
    assert att.users == 1
    assert att.lost is None
    _connected(att).shutdown()
    assert att.users == 1
    with pytest.raises(InvalidRequest):
        _ = cluster.metadata


def test_cluster_read_waits_out_a_restart_then_answers(monkeypatch):
    answers = iter([Unavailable("restarting"), Unavailable("restarting"), ["t"]])

    def get(ref, *, timeout_s=None):
        value = next(answers)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(handles, "get", get)
    monkeypatch.setattr(cluster_module.time, "sleep", lambda s: None)
    assert _connected(_attachment()).list_topics() == ["t"]


def test_cluster_call_past_timeout_raises_unavailable_saying_what_to_do(monkeypatch):
    def get(ref, *, timeout_s=None):
        raise Unavailable("timed out waiting for an actor")

    monkeypatch.setattr(handles, "get", get)
    with pytest.raises(Unavailable, match=r"timeout_s=0 s.*connect\(\) again"):
        _connected(_attachment(), timeout_s=0).list_topics()


def test_handles_get_refuses_a_lost_session(monkeypatch):
    monkeypatch.setattr(attachment.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(attachment, "_current", _attachment(lost="gone: call connect() again"))
    with pytest.raises(Unavailable, match="gone"):
        handles.get("ref", timeout_s=1)


def test_handles_unwrap_names_connect_for_a_handle_of_an_earlier_session():
    exc = Exception(
        "Failed to submit task to actor ActorID(ab) due to b\"Can't find actor ab. "
        "It might be dead or it's from a different cluster\""
    )
    err = handles.unwrap(exc)
    assert isinstance(err, Unavailable)
    assert "connect()" in str(err)
    other = Exception("something else")
    assert handles.unwrap(other) is other


def test_release_of_an_old_attachment_touches_no_session():
    att = _attachment(users=1)
    attachment.release(att)  # not the process's current one: no ray.shutdown
    assert att.users == 0
    assert att.lost is None


def test_a_session_replaced_outside_connect_is_neither_shut_down_nor_refused(monkeypatch):
    """Rule 7: the caller shut the watched session down and started another Ray (as a
    test suite or a notebook does): the old session's loss must not end the new one."""
    shutdowns: list[bool] = []
    monkeypatch.setattr(attachment.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(attachment.ray, "shutdown", lambda: shutdowns.append(True))
    monkeypatch.setattr(attachment, "_session_gcs", lambda: "127.0.0.1:2")  # the new one
    old = _attachment(users=1, owns_session=False, protected=False)  # GCS 127.0.0.1:1
    monkeypatch.setattr(attachment, "_current", old)
    attachment._lose(old, "the cluster's Ray (GCS 127.0.0.1:1) stopped answering")
    assert shutdowns == []
    assert attachment._current is None
    assert old.stop.is_set()
    # An attachment already marked lost does not block calls into the new session either,
    # but still does while the process runs its (dead) session.
    monkeypatch.setattr(attachment, "_current", _attachment(lost="gone: call connect()"))
    attachment.check_current()
    monkeypatch.setattr(attachment, "_session_gcs", lambda: "127.0.0.1:1")
    with pytest.raises(Unavailable, match="connect"):
        attachment.check_current()
