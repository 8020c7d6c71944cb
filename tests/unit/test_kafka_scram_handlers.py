"""AlterUserScramCredentials / DescribeUserScramCredentials handlers (KIP-554) through
``tests/fakes.py``'s HandlerHarness: Kafka's per-user errors, and no secret answered."""

from __future__ import annotations

from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.scram import salted_password, verify_password
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, run_handlers


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def upsert(name: str, mechanism: int = 1, iterations: int = 4096, password: str = "pw") -> Any:
    digest = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}.get(mechanism, "SCRAM-SHA-256")
    return {
        "name": name,
        "mechanism": mechanism,
        "iterations": iterations,
        "salt": b"salt",
        "salted_password": salted_password(digest, password, b"salt", 4096),
    }


def results(answer: Any) -> dict[str, tuple[int, str | None]]:
    return {r.user: (r.error_code, r.error_message) for r in answer.results}


def test_scram_handlers_alter_reports_kafkas_per_user_errors(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        answer = await agent.call(
            ApiKey.ALTER_USER_SCRAM_CREDENTIALS,
            0,
            {
                "deletions": [
                    {"name": "dup", "mechanism": 1},
                    {"name": "ghost", "mechanism": 2},
                ],
                "upsertions": [
                    upsert("ok", 1),
                    upsert("ok", 2),
                    upsert("dup", 1),
                    upsert("weak", 1, iterations=1000),
                    upsert("md5", 9),
                ],
            },
        )
        stored = await agent.meta.scram_credential("ok", "SCRAM-SHA-512")
        return answer, stored, await agent.meta.scram_credential("weak", "SCRAM-SHA-256")

    answer, stored, weak = run_handlers(settings, scenario)
    got = results(answer)
    assert got["ok"] == (ErrorCode.none, None)
    assert got["dup"][0] == ErrorCode.duplicate_resource
    assert got["ghost"][0] == ErrorCode.resource_not_found
    assert got["weak"][0] == ErrorCode.unacceptable_credential
    assert "iterations" in got["weak"][1]
    assert got["md5"][0] == ErrorCode.unsupported_sasl_mechanism
    assert verify_password(stored, "pw")
    assert weak is None


def test_scram_handlers_describe_all_some_and_unknown(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.call(
            ApiKey.ALTER_USER_SCRAM_CREDENTIALS,
            0,
            {"deletions": [], "upsertions": [upsert("a", 1), upsert("a", 2), upsert("b", 2)]},
        )
        every = await agent.call(ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS, 0, {"users": None})
        some = await agent.call(
            ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS,
            0,
            {"users": [{"name": "b"}, {"name": "zed"}, {"name": "zed"}]},
        )
        return every, some

    every, some = run_handlers(settings, scenario)
    assert every.error_code == ErrorCode.none
    assert {
        r.user: [(c.mechanism, c.iterations) for c in r.credential_infos] for r in every.results
    } == {
        "a": [(1, 4096), (2, 4096)],
        "b": [(2, 4096)],
    }
    got = {r.user: r.error_code for r in some.results}
    assert got == {"b": ErrorCode.none, "zed": ErrorCode.duplicate_resource}


def test_scram_handlers_refuse_sasl_apis_without_a_connection(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})

    assert run_handlers(settings, scenario).error_code == ErrorCode.unsupported_sasl_mechanism
