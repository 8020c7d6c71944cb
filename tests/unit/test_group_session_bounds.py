"""The coordinator's session-timeout bounds (Kafka's group.min/max.session.timeout.ms):
6 s and 30 min by default, settable through Settings, the environment and the CLI, and
answered INVALID_SESSION_TIMEOUT outside them (core, asyncio shell, Kafka handler)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.clock import ManualClock
from ray_stream.config import Settings, settings_from_env
from ray_stream.core.group import GroupCoordinator, JoinResult, Pending
from ray_stream.core.metadata_api import JoinRequest
from ray_stream.errors import InvalidConfig, InvalidSessionTimeout
from ray_stream.kafka.versions import ApiKey
from ray_stream.metadata.group_service import GroupService
from tests.fakes import HandlerHarness, run_handlers


def core_join(core: GroupCoordinator, group: str, session_ms: int) -> JoinResult | Pending:
    return core.join(
        group,
        member_id="",
        group_instance_id=None,
        protocol_type="consumer",
        protocols=[("range", b"")],
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=10_000,
        client_id="c",
        client_host="h",
        require_known_member_id=False,
        now_ms=0,
    )


@pytest.mark.parametrize(
    ("session_ms", "accepted"),
    [(1, False), (5_999, False), (6_000, True), (1_800_000, True), (1_800_001, False)],
)
def test_group_session_bounds_default_to_kafkas(session_ms, accepted):
    core = GroupCoordinator(rand=random.Random(1))
    out = core_join(core, f"g{session_ms}", session_ms)
    if accepted:
        assert isinstance(out, Pending)
    else:
        assert isinstance(out, JoinResult)
        assert isinstance(out.error, InvalidSessionTimeout)
        assert out.generation_id == -1


def test_group_session_bounds_are_inclusive_and_settable():
    core = GroupCoordinator(
        rand=random.Random(1), min_session_timeout_ms=1, max_session_timeout_ms=10
    )
    assert isinstance(core_join(core, "a", 1), Pending)
    assert isinstance(core_join(core, "b", 10), Pending)
    refused = core_join(core, "c", 11)
    assert isinstance(refused, JoinResult)
    assert isinstance(refused.error, InvalidSessionTimeout)


def join_request(session_ms: int) -> JoinRequest:
    return JoinRequest(
        group_id="g",
        member_id="",
        group_instance_id=None,
        protocol_type="consumer",
        protocols=(("range", b""),),
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=10_000,
        client_id="c",
        client_host="/127.0.0.1",
        require_known_member_id=True,
    )


def test_group_service_answers_a_1ms_session_at_once_with_invalid_session_timeout():
    async def body() -> JoinResult:
        svc = GroupService(ManualClock())  # the injected clock: nothing waits on time
        try:
            return await asyncio.wait_for(svc.join_group(join_request(1)), 5)
        finally:
            await svc.close()

    result = asyncio.run(body())
    assert isinstance(result.error, InvalidSessionTimeout)


JOIN_V9 = {
    "group_id": "g",
    "session_timeout": 1,
    "rebalance_timeout": 10_000,
    "member_id": "",
    "group_instance_id": None,
    "protocol_type": "consumer",
    "protocols": [{"name": "range", "metadata": b""}],
    "reason": None,
}


@pytest.mark.parametrize(
    ("min_session_ms", "expected"),
    [
        (6_000, ErrorCode.invalid_session_timeout),  # Kafka's default minimum
        (1, ErrorCode.member_id_required),  # lowered: the join goes ahead (KIP-394 first)
    ],
)
def test_group_session_bounds_reach_kafka_clients_from_settings(tmp_path, min_session_ms, expected):
    settings = Settings(data_dir=str(tmp_path / "d"), group_min_session_timeout_ms=min_session_ms)

    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(ApiKey.JOIN_GROUP, 9, JOIN_V9)

    answer = run_handlers(settings, scenario)
    assert answer.error_code == expected


def test_group_session_bound_settings_are_validated():
    assert (Settings().group_min_session_timeout_ms, Settings().group_max_session_timeout_ms) == (
        6_000,
        1_800_000,
    )
    with pytest.raises(InvalidConfig, match="group_min_session_timeout_ms"):
        Settings(group_min_session_timeout_ms=0)
    with pytest.raises(InvalidConfig, match="group_max_session_timeout_ms"):
        Settings(group_min_session_timeout_ms=10_000, group_max_session_timeout_ms=9_999)


def test_group_session_bounds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_STREAM_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    monkeypatch.setenv("RAY_STREAM_GROUP_MAX_SESSION_TIMEOUT_MS", "60000")
    settings = settings_from_env()
    assert (settings.group_min_session_timeout_ms, settings.group_max_session_timeout_ms) == (
        1_000,
        60_000,
    )


def test_group_session_bounds_come_from_the_start_flags():
    from ray_stream.cli import _settings_kwargs, build_parser

    args = build_parser().parse_args(
        [
            "start",
            "--group-min-session-timeout-ms",
            "1000",
            "--group-max-session-timeout-ms",
            "9000",
        ]
    )
    kwargs = _settings_kwargs(args)
    assert (kwargs["group_min_session_timeout_ms"], kwargs["group_max_session_timeout_ms"]) == (
        1_000,
        9_000,
    )
    defaults = _settings_kwargs(build_parser().parse_args(["start"]))
    assert defaults["group_min_session_timeout_ms"] is None  # unset: Settings' default
