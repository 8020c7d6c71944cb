"""SCRAM credentials in the metadata: stored salted and hashed, journaled and
snapshotted, so a new incarnation (failover, full restart) has every user back.

The real ``MetadataService`` runs in-process over a ``MemoryStore``; "restart" means a
new service on the same store after the local SQLite cache is deleted.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from ray_stream.config import Settings
from ray_stream.core.journal import changes_from_json, changes_to_json, decode_entry
from ray_stream.core.keys import JOURNAL_PREFIX
from ray_stream.core.scram import ScramUserInfo, credential_from_password
from ray_stream.core.sequencer import Changes, Sequencer
from ray_stream.errors import InvalidRequest
from ray_stream.storage.memory import MemoryStore
from tests.fakes import make_meta


def cred(user, mechanism="SCRAM-SHA-256", password="pw", salt=b"salt-0123"):
    return credential_from_password(user, mechanism, password, salt=salt, iterations=4096)


def settings(tmp_path):
    return Settings(data_dir=str(tmp_path / "data"), orphan_sweep_interval_s=0)


def test_credentials_journal_round_trip_is_exact():
    changes = Changes(deleted_scram=(("old", "SCRAM-SHA-512"),), scram=(cred("a"), cred("b")))
    assert changes_from_json(changes_to_json(changes)) == changes


def test_sequencer_plan_then_apply_upserts_and_deletes():
    seq = Sequencer()
    seq.apply(seq.plan_alter_scram([cred("a"), cred("a", "SCRAM-SHA-512")], []))
    assert seq.scram_credential("a", "SCRAM-SHA-512") == cred("a", "SCRAM-SHA-512")
    assert seq.plan_alter_scram([], [("nobody", "SCRAM-SHA-256")]).empty
    seq.apply(seq.plan_alter_scram([], [("a", "SCRAM-SHA-256")]))
    assert seq.scram_credential("a", "SCRAM-SHA-256") is None
    assert [c.mechanism for c in seq.scram_credentials()] == ["SCRAM-SHA-512"]


@pytest.mark.parametrize("snapshot", [False, True])
def test_credentials_survive_a_restart_from_the_object_store(tmp_path, snapshot):
    store, config = MemoryStore(), settings(tmp_path)

    async def scenario():
        service = make_meta(config, store=store)
        await service.alter_scram_credentials(
            [cred("alice"), cred("alice", "SCRAM-SHA-512"), cred("bob")], []
        )
        await service.alter_scram_credentials([cred("bob", password="new")], [])
        if snapshot:
            await service.snapshot()
        await service.alter_scram_credentials([], [("alice", "SCRAM-SHA-512")])
        await service.close()
        shutil.rmtree(config.resolved_data_dir)  # the node's disk is gone
        again = make_meta(config, store=store)
        return (
            await again.describe_scram_credentials(None),
            await again.scram_credential("bob", "SCRAM-SHA-256"),
            await again.describe_scram_credentials(["bob", "carol"]),
        )

    listed, bob, only_bob = asyncio.run(scenario())
    assert listed == [
        ScramUserInfo("alice", "SCRAM-SHA-256", 4096),
        ScramUserInfo("bob", "SCRAM-SHA-256", 4096),
    ]
    assert bob == cred("bob", password="new")
    assert only_bob == [ScramUserInfo("bob", "SCRAM-SHA-256", 4096)]


def test_journal_entries_hold_no_password(tmp_path):
    store, config = MemoryStore(), settings(tmp_path)

    async def scenario():
        service = make_meta(config, store=store)
        await service.alter_scram_credentials(
            [credential_from_password("u", "SCRAM-SHA-256", "hunter2-secret", salt=b"s" * 16)], []
        )
        await service.close()

    asyncio.run(scenario())
    blobs = [store.get(k) for k in store.list(JOURNAL_PREFIX)]
    assert any(decode_entry(b).changes.scram for b in blobs)
    assert not any(b"hunter2" in b for b in blobs)


def test_alter_refuses_an_unknown_mechanism(tmp_path):
    async def scenario():
        service = make_meta(settings(tmp_path))
        with pytest.raises(InvalidRequest, match="mechanism"):
            await service.alter_scram_credentials([], [("u", "SCRAM-MD5")])
        await service.close()

    asyncio.run(scenario())
