"""ACLs without Ray: the authorizer's Kafka semantics (core/acl.py), their persistence
(journal JSON, SQLite cache, snapshots) and the metadata service's ACL calls and watch
(metadata/acl_service.py), and the agent's cache (agent/acl_cache.py).

The service tests run the real ``MetadataService`` in-process over a ``MemoryStore`` and
check what a *new* incarnation over the same store rebuilds (a failover).
"""

from __future__ import annotations

import asyncio
import pickle
import random
import shutil

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ray_stream.agent.acl_cache import AclCache
from ray_stream.config import Settings
from ray_stream.core.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AclSnapshot,
    Authorizer,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    check_binding,
)
from ray_stream.core.journal import changes_from_json, changes_to_json
from ray_stream.core.sequencer import Changes
from ray_stream.errors import InvalidConfig, InvalidRequest
from ray_stream.metadata.store import cache_dir
from ray_stream.storage.memory import MemoryStore
from tests.fakes import CountingMetadata, make_meta

T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
LIT, PRE = PatternType.LITERAL, PatternType.PREFIXED
ALLOW, DENY = Permission.ALLOW, Permission.DENY
ALICE, BOB = "User:alice", "User:bob"
HOST = "/10.0.0.1"


def acl(name="orders", op=Operation.WRITE, *, who=ALICE, perm=ALLOW, rtype=T, pattern=LIT,
        host="*") -> AclBinding:  # fmt: skip
    return AclBinding(rtype, name, pattern, who, host, op, perm)


def allowed(bindings, op, name="orders", *, who=ALICE, rtype=T, host=HOST, **kw) -> bool:
    return Authorizer(bindings, **kw).authorize(who, host, op, rtype, name)


# ------------------------------------------------------------------- authorizer
def test_acl_deny_by_default_when_enabled():
    assert not allowed([], Operation.WRITE)
    assert not allowed([acl(who=BOB)], Operation.WRITE)


def test_acl_disabled_allows_everything():
    assert allowed([], Operation.WRITE, enabled=False)
    assert allowed([acl(perm=DENY)], Operation.WRITE, enabled=False)


def test_acl_super_user_bypasses_deny():
    assert allowed([acl(perm=DENY, op=Operation.ALL)], Operation.WRITE, super_users=[ALICE])
    assert not allowed([], Operation.WRITE, who=BOB, super_users=[ALICE])


def test_acl_literal_allow_matches_only_its_name():
    assert allowed([acl()], Operation.WRITE)
    assert not allowed([acl()], Operation.WRITE, name="orders2")
    assert not allowed([acl()], Operation.READ)


def test_acl_deny_beats_allow():
    assert not allowed([acl(), acl(perm=DENY)], Operation.WRITE)
    assert not allowed([acl(op=Operation.ALL), acl("ord", pattern=PRE, perm=DENY)], Operation.WRITE)


def test_acl_prefixed_matches_names_that_start_with_it():
    rule = [acl("logs-", Operation.READ, pattern=PRE)]
    assert allowed(rule, Operation.READ, name="logs-app")
    assert allowed(rule, Operation.READ, name="logs-")
    assert not allowed(rule, Operation.READ, name="logs")
    assert not allowed(rule, Operation.READ, name="xlogs-app")


def test_acl_wildcards_for_resource_principal_and_host():
    assert allowed([acl("*")], Operation.WRITE, name="anything")
    assert allowed([acl(who="User:*")], Operation.WRITE, who="User:ANONYMOUS")
    assert allowed([acl(host="10.0.0.1")], Operation.WRITE)
    assert not allowed([acl(host="10.0.0.2")], Operation.WRITE)


def test_acl_operation_all_matches_every_operation():
    for op in (Operation.READ, Operation.WRITE, Operation.DESCRIBE, Operation.DELETE):
        assert allowed([acl(op=Operation.ALL)], op)


def test_acl_implied_describe_and_describe_configs():
    for op in (Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER):
        assert allowed([acl(op=op)], Operation.DESCRIBE)
    assert not allowed([acl(op=Operation.CREATE)], Operation.DESCRIBE)
    assert allowed([acl(op=Operation.ALTER_CONFIGS)], Operation.DESCRIBE_CONFIGS)
    # a DENY denies only what it names
    assert allowed([acl(op=Operation.READ), acl(op=Operation.WRITE, perm=DENY)], Operation.DESCRIBE)


def test_acl_resource_types_do_not_mix():
    assert not allowed([acl("orders", Operation.READ, rtype=G)], Operation.READ, rtype=T)
    assert allowed([acl("g1", Operation.READ, rtype=G)], Operation.READ, name="g1", rtype=G)


def test_acl_authorize_any_for_idempotent_producers():
    auth = Authorizer([acl("a")])
    assert auth.authorize_any(ALICE, HOST, Operation.WRITE, T)
    assert not Authorizer([acl("a"), acl("a", perm=DENY)]).authorize_any(
        ALICE, HOST, Operation.WRITE, T
    )
    assert not Authorizer([acl("a"), acl("*", perm=DENY)]).authorize_any(
        ALICE, HOST, Operation.WRITE, T
    )
    assert not Authorizer([acl("ab", pattern=PRE), acl("a", pattern=PRE, perm=DENY)]).authorize_any(
        ALICE, HOST, Operation.WRITE, T
    )
    assert not Authorizer([acl("a", Operation.READ)]).authorize_any(ALICE, HOST, Operation.WRITE, T)


def test_acl_authorized_operations_bits():
    bits = Authorizer([acl(op=Operation.READ)]).authorized_operations(ALICE, HOST, T, "orders")
    assert bits == (1 << Operation.READ) | (1 << Operation.DESCRIBE)
    everything = Authorizer(enabled=False).authorized_operations(ALICE, HOST, G, "g")
    assert everything == sum(
        1 << op for op in (Operation.READ, Operation.DESCRIBE, Operation.DELETE)
    )


names = st.text(alphabet="ab-", min_size=1, max_size=4)
bindings = st.builds(
    AclBinding,
    st.sampled_from([T, G]),
    st.one_of(names, st.just("*")),
    st.sampled_from([LIT, PRE]),
    st.sampled_from([ALICE, BOB, "User:*"]),
    st.sampled_from(["*", "10.0.0.1", "10.0.0.2"]),
    st.sampled_from([Operation.ALL, Operation.READ, Operation.WRITE, Operation.DESCRIBE]),
    st.sampled_from([ALLOW, DENY]),
)


def _matches(b: AclBinding, who: str, name: str, rtype: int) -> bool:
    """The reference: rule 5 of core/acl.py written out plainly."""
    if (
        b.resource_type != rtype
        or b.principal not in (who, "User:*")
        or b.host not in ("*", "10.0.0.1")
    ):
        return False
    if b.pattern_type == PRE:
        return name.startswith(b.resource_name)
    return b.resource_name in (name, "*")


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(bindings, max_size=8), names, st.sampled_from([Operation.READ, Operation.WRITE]))
def test_acl_property_matches_the_reference(rules, name, op):
    found = [b for b in rules if _matches(b, ALICE, name, T)]
    denied = any(b.permission == DENY and b.operation in (op, Operation.ALL) for b in found)
    granted = any(b.permission == ALLOW and b.operation in (op, Operation.ALL) for b in found)
    assert allowed(rules, op, name) == (granted and not denied)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(bindings, max_size=8), names)
def test_acl_property_deny_all_always_wins_and_order_does_not_matter(rules, name):
    deny_all = acl("*", Operation.ALL, who="User:*", perm=DENY)
    assert not allowed([*rules, deny_all], Operation.READ, name)
    assert allowed(rules, Operation.READ, name) == allowed(rules[::-1], Operation.READ, name)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(bindings, max_size=6))
def test_acl_property_changes_round_trip_through_the_journal(rules):
    changes = Changes(acls=tuple(rules), deleted_acls=tuple(rules[:2]))
    assert changes_from_json(changes_to_json(changes)) == changes


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("binding", "field"),
    [
        (acl(rtype=ResourceType.USER), "resource_type"),
        (acl(pattern=PatternType.MATCH), "pattern_type"),
        (acl(op=Operation.ANY), "operation"),
        (acl(perm=Permission.ANY), "permission"),
        (acl(who="alice"), "principal"),
        (acl(""), "resource_name"),
        (acl("*", pattern=PRE), "resource_name"),
        (acl("mycluster", rtype=C), "kafka-cluster"),
        (acl(host=""), "host"),
    ],
)
def test_acl_check_binding_names_the_field(binding, field):
    with pytest.raises(InvalidRequest, match=field):
        check_binding(binding)


def test_acl_check_binding_returns_plain_ints():
    checked = check_binding(acl(CLUSTER_NAME, Operation.ALTER, rtype=C))
    assert type(checked.operation) is int
    assert type(checked.resource_type) is int


def test_acl_filter_match_pattern_type():
    literal, prefixed, wildcard = acl("orders"), acl("ord", pattern=PRE), acl("*")
    match = AclFilter(T, "orders", PatternType.MATCH)
    assert [b for b in (literal, prefixed, wildcard, acl("x")) if match.matches(b)] == [
        literal,
        prefixed,
        wildcard,
    ]
    assert AclFilter(T, "ord", PatternType.ANY).matches(prefixed)
    assert not AclFilter(T, "ord", PatternType.LITERAL).matches(prefixed)
    assert AclFilter(principal=ALICE, operation=Operation.WRITE).matches(literal)
    assert not AclFilter(permission=DENY).matches(literal)


def test_acl_messages_pickle():
    for value in (acl(), AclFilter(T, "x"), AclSnapshot(3, (acl(),))):
        assert pickle.loads(pickle.dumps(value)) == value


def test_acl_settings_are_checked():
    assert Settings(authorizer="acl", super_users=("User:admin",)).authorizer == "acl"
    with pytest.raises(InvalidConfig, match="authorizer"):
        Settings(authorizer="simple")
    with pytest.raises(InvalidConfig, match="super_users"):
        Settings(super_users=("admin",))


# --------------------------------------------------------------------- service
def _settings(tmp_path, **kw):
    return Settings(data_dir=str(tmp_path / "data"), orphan_sweep_interval_s=0, **kw)


def test_acl_service_create_describe_delete(tmp_path):
    async def main():
        service = make_meta(_settings(tmp_path))
        outcomes = await service.create_acls([acl(), acl(who="bad"), acl()])
        assert [o.error is None for o in outcomes] == [True, False, True]
        assert await service.describe_acls(AclFilter()) == [acl()]
        await service.create_acls([acl("logs-", Operation.READ, pattern=PRE)])
        found = await service.describe_acls(AclFilter(T, "logs-x", PatternType.MATCH))
        assert found == [acl("logs-", Operation.READ, pattern=PRE)]
        deleted = await service.delete_acls([AclFilter(operation=Operation.WRITE), AclFilter(9)])
        assert deleted[0].bindings == (acl(),)
        assert isinstance(deleted[1].error, InvalidRequest)
        assert len(await service.describe_acls(AclFilter())) == 1
        await service.close()

    asyncio.run(main())


def test_acl_service_acls_survive_failover_and_snapshot(tmp_path):
    """A new incarnation over the same object store (its local cache gone) has them."""
    store = MemoryStore()
    settings = _settings(tmp_path)

    async def first():
        service = make_meta(settings, store=store)
        await service.create_acls([acl(), acl("g", Operation.READ, rtype=G)])
        await service.snapshot()  # one from the snapshot, one from the journal after it
        await service.create_acls([acl("p-", Operation.READ, pattern=PRE)])
        await service.delete_acls([AclFilter(G)])
        version = (await service.watch_acls(-1, 0)).version
        await service.close()
        return version

    async def second():
        service = make_meta(settings, store=store)
        found = await service.describe_acls(AclFilter())
        version = (await service.watch_acls(-1, 0)).version
        await service.close()
        return found, version

    old_version = asyncio.run(first())
    shutil.rmtree(cache_dir(settings))
    found, new_version = asyncio.run(second())
    assert found == [acl(), acl("p-", Operation.READ, pattern=PRE)]
    assert new_version != old_version  # a new incarnation: agents reload everything


def test_acl_service_watch_wakes_on_change(tmp_path):
    async def main():
        service = make_meta(_settings(tmp_path))
        first = await service.watch_acls(-1, 0)
        assert first.bindings == ()
        assert (await service.watch_acls(first.version, 0)).bindings is None  # unchanged
        waiting = asyncio.ensure_future(service.watch_acls(first.version, 30))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await service.create_acls([acl()])
        woke = await asyncio.wait_for(waiting, 5)
        assert woke.bindings == (acl(),)
        assert woke.version != first.version
        await service.close()

    asyncio.run(main())


# ------------------------------------------------------------------ agent cache
def test_acl_cache_off_never_calls_the_metadata_service(tmp_path):
    async def main():
        service = make_meta(_settings(tmp_path))
        meta = CountingMetadata(service)
        cache = AclCache(meta, settings=_settings(tmp_path), rand=random.Random(0))
        auth = await cache.authorizer()
        await service.close()
        return auth, meta.total()

    auth, calls = asyncio.run(main())
    assert not auth.enabled
    assert calls == 0


def test_acl_cache_follows_changes_without_a_call_per_check(tmp_path):
    async def main():
        settings = _settings(tmp_path, authorizer="acl", super_users=("User:admin",))
        service = make_meta(settings)
        meta = CountingMetadata(service)
        cache = AclCache(meta, settings=settings, rand=random.Random(0))
        auth = await cache.authorizer()
        assert not auth.authorize(ALICE, HOST, Operation.WRITE, T, "orders")
        assert auth.authorize("User:admin", HOST, Operation.WRITE, T, "orders")
        await service.create_acls([acl()])
        for _ in range(500):  # the background long poll brings the change
            if (await cache.authorizer()).authorize(ALICE, HOST, Operation.WRITE, T, "orders"):
                break
            await asyncio.sleep(0.01)
        calls = meta.total()
        for _ in range(100):
            await cache.authorizer()
        assert meta.total() == calls  # checks cost no metadata call
        allowed_now = (await cache.authorizer()).authorize(
            ALICE, HOST, Operation.WRITE, T, "orders"
        )
        await cache.close()
        await service.close()
        return allowed_now

    assert asyncio.run(main())


def test_acl_cache_fails_closed_when_the_acls_cannot_be_loaded(tmp_path):
    class Away:
        async def watch_acls(self, version, timeout_s):
            raise ConnectionError("metadata away")

    async def main():
        settings = _settings(tmp_path, authorizer="acl", super_users=("User:admin",))
        cache = AclCache(Away(), settings=settings, rand=random.Random(0))  # type: ignore[arg-type]
        auth = await cache.authorizer()
        await cache.close()
        return auth

    auth = asyncio.run(main())
    assert not auth.authorize(ALICE, HOST, Operation.READ, T, "t")
    assert auth.authorize("User:admin", HOST, Operation.READ, T, "t")


# ------------------------------------------------------------------------- cli
def _args(*argv):
    from ray_stream.cli import build_parser

    return build_parser().parse_args(["acls", *argv])


def test_acl_cli_add_makes_the_cross_product_like_kafka_acls():
    from ray_stream.acl_cli import _bindings

    args = _args(
        "add",
        "--allow-principal", "User:alice",
        "--deny-principal", "User:bob",
        "--deny-host", "10.0.0.9",
        "--operation", "Write",
        "--operation", "describe-configs",
        "--topic", "logs-",
        "--resource-pattern-type", "prefixed",
    )  # fmt: skip
    assert set(_bindings(args)) == {
        acl("logs-", Operation.WRITE, pattern=PRE),
        acl("logs-", Operation.DESCRIBE_CONFIGS, pattern=PRE),
        acl("logs-", Operation.WRITE, who=BOB, perm=DENY, pattern=PRE, host="10.0.0.9"),
        acl("logs-", Operation.DESCRIBE_CONFIGS, who=BOB, perm=DENY, pattern=PRE, host="10.0.0.9"),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allow-principal", "User:a", "--operation", "Write"], "resource"),
        (["--allow-principal", "User:a", "--topic", "t"], "--operation"),
        (["--operation", "Write", "--topic", "t"], "principal"),
        (["--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"], "Fly"),
    ],
)
def test_acl_cli_add_names_what_is_missing(argv, message):
    from ray_stream.acl_cli import _bindings

    with pytest.raises(InvalidRequest, match=message):
        _bindings(_args("add", *argv))


def test_acl_cli_delete_without_principal_matches_every_principal_and_host():
    from ray_stream.acl_cli import _delete_filters

    (only,) = _delete_filters(_args("delete", "--group", "g"))
    assert only == AclFilter(G, "g", LIT, None, None, Operation.ANY, Permission.ANY)


def test_acl_start_flags_and_env_reach_the_settings(monkeypatch):
    from ray_stream.cli import _settings_kwargs, build_parser
    from ray_stream.config import settings_from_env

    args = build_parser().parse_args(
        ["start", "--authorizer", "acl", "--super-users", "User:admin, User:ops"]
    )
    made = settings_from_env(**_settings_kwargs(args))
    assert made.authorizer == "acl"
    assert made.super_users == ("User:admin", "User:ops")
    monkeypatch.setenv("RAY_STREAM_AUTHORIZER", "acl")
    monkeypatch.setenv("RAY_STREAM_SUPER_USERS", "User:root")
    assert settings_from_env().super_users == ("User:root",)
    assert settings_from_env().authorizer == "acl"
    monkeypatch.setenv("RAY_STREAM_SUPER_USERS", "root")
    with pytest.raises(InvalidConfig, match="super_users"):
        settings_from_env()
