"""MetadataActor durability without Ray: the object store alone brings everything back.

Each test runs the actor directly (``asyncio.run``) on a ``MemoryStore`` or ``LocalStore``
and checks what a *new* incarnation rebuilds, usually after the local SQLite cache is
deleted (a lost node). Faults come from ``FaultyStore``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil

import pytest

from ray_stream.actors.metadata import MetadataActor
from ray_stream.actors.metadata_store import MetadataStore, cache_dir
from ray_stream.clock import ManualClock
from ray_stream.config import Settings
from ray_stream.core.journal import (
    JOURNAL_PREFIX,
    SNAPSHOT_PREFIX,
    decode_entry,
    journal_index,
    journal_key,
    snapshot_index,
    snapshot_key,
)
from ray_stream.core.segment import new_segment_key
from ray_stream.core.sequencer import Sequencer
from ray_stream.core.types import (
    BatchEntry,
    BatchResult,
    BrokerInfo,
    CommitRequest,
    CommittedOffset,
)
from ray_stream.errors import Fenced, StorageUnavailable, Unavailable
from ray_stream.storage.faults import FaultyStore
from ray_stream.storage.local import LocalStore
from ray_stream.storage.memory import MemoryStore


def entry(partition=0, count=1, *, pid=-1, epoch=-1, seq=-1, position=0, topic="t"):
    return BatchEntry(topic, partition, position, 100, count, 1000, 1000, pid, epoch, seq)


def request(*entries, key="segments/a.arrow"):
    return CommitRequest(key, 100 * len(entries), tuple(entries))


def run(coro):
    return asyncio.run(coro)


def make_settings(tmp_path, **kw):
    kw.setdefault("orphan_sweep_interval_s", 0)
    kw.setdefault("journal_put_timeout_s", 0.5)
    return Settings(data_dir=str(tmp_path / "data"), **kw)


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return LocalStore(tmp_path / "objects")


def journal(store):
    return sorted(i for k in store.list(JOURNAL_PREFIX) if (i := journal_index(k)) is not None)


def snapshots(store):
    return sorted(i for k in store.list(SNAPSHOT_PREFIX) if (i := snapshot_index(k)) is not None)


async def state(actor):
    """Everything a client could observe, in comparable form."""
    topics = await actor.list_topics()
    located = {
        (t.name, p.partition): [
            (b.segment_key, b.base_offset, b.record_count)
            for b in (await actor.locate(t.name, p.partition, p.log_start_offset, 1 << 30)).batches
        ]
        for t in topics
        for p in t.partition_info
    }
    return {
        "topics": [(t.name, t.topic_id, t.partitions, t.config, t.partition_info) for t in topics],
        "batches": located,
        "groups": {g: await actor.fetch_offsets(g) for g in ("g1", "g2")},
        "counts": {k: v for k, v in (await actor.ping()).items() if k not in ("epoch",)},
    }


async def first_life(settings, store):
    actor = MetadataActor(settings, store=store)
    await actor.create_topic("t", 2, {"retention.ms": "60000"})
    await actor.create_topic("u", 1)
    pid, epoch = await actor.init_producer_id()
    tx = await actor.init_producer_id("tx")
    await asyncio.gather(
        actor.commit(request(entry(0, 3), entry(1, 2, pid=pid, epoch=epoch, seq=0))),
        actor.commit(request(entry(0, 4, pid=pid, epoch=epoch, seq=0), key="segments/b.arrow")),
        actor.commit_offsets("g1", {("t", 0): CommittedOffset(3, "meta", 1)}),
        actor.commit_offsets("g2", {("t", 1): CommittedOffset(1), ("u", 0): CommittedOffset(0)}),
    )
    await actor.delete_topic("u")
    return actor, (pid, epoch), tx


def test_restart_from_the_object_store_alone_restores_everything(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        actor, (pid, epoch), tx = await first_life(settings, store)
        before = await state(actor)
        await actor.close()
        shutil.rmtree(settings.resolved_data_dir)  # the node's disk is gone

        again = MetadataActor(settings, store=store)
        after = await state(again)
        dup = await again.commit(request(entry(1, 2, pid=pid, epoch=epoch, seq=0)))
        nxt = await again.commit(request(entry(1, 1, pid=pid, epoch=epoch, seq=2)))
        tx2 = await again.init_producer_id("tx")
        new_pid = await again.init_producer_id()
        return before, after, dup, nxt, tx, tx2, (pid, new_pid), await again.epoch()

    before, after, dup, nxt, tx, tx2, (pid, new_pid), epoch = run(scenario())
    assert after == before
    assert before["batches"][("t", 0)] == [("segments/a.arrow", 0, 3), ("segments/b.arrow", 3, 4)]
    assert before["groups"] == {
        "g1": {("t", 0): CommittedOffset(3, "meta", 1)},
        "g2": {("t", 1): CommittedOffset(1)},
    }
    assert (dup[0].base_offset, dup[0].duplicate) == (0, True)  # producer state came back
    assert nxt[0].base_offset == 2
    assert tx2 == (tx[0], tx[1] + 1)
    assert new_pid[0] > max(pid, tx[0])
    assert epoch == 2


def test_each_round_is_one_journal_put(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 2)
        before = await actor.stats()
        calls = [actor.commit(request(entry(i % 2), key=f"segments/{i}.arrow")) for i in range(30)]
        calls += [actor.commit_offsets("g1", {("t", 0): CommittedOffset(i)}) for i in range(10)]
        await asyncio.gather(*calls)
        return before, await actor.stats(), await actor.fetch_offsets("g1")

    before, after, offsets = run(scenario())
    rounds = after["commit_rounds"] - before["commit_rounds"]
    puts = after["journal_puts"] - before["journal_puts"]
    assert puts == rounds < 40
    assert offsets == {("t", 0): CommittedOffset(9)}  # the last offset commit wins
    assert journal(store) == list(range(1, after["journal_index"] + 1))


def test_local_cache_is_per_epoch_and_old_ones_are_removed(tmp_path, store):
    settings = make_settings(tmp_path)

    async def life():
        actor = MetadataActor(settings, store=store)
        await actor.close()
        return await actor.epoch()

    epochs = [run(life()) for _ in range(3)]
    assert epochs == [1, 2, 3]
    assert [p.name for p in cache_dir(settings).glob("*.sqlite")] == ["0000000003.sqlite"]
    assert [decode_entry(store.get(journal_key(i))).kind for i in journal(store)] == ["fence"] * 3


def test_snapshot_truncates_the_journal_and_restart_uses_it(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        first = second = 0
        for i in range(6):
            await actor.commit(request(entry(0, 2), key=f"segments/{i}.arrow"))
            if i == 1:
                first = await actor.snapshot()
            if i == 4:
                second = await actor.snapshot()
        expected = await state(actor)
        await actor.close()
        shutil.rmtree(settings.resolved_data_dir)
        again = MetadataActor(settings, store=store)
        return first, second, expected, await state(again), await again.stats()

    first, second, expected, got, stats = run(scenario())
    assert snapshots(store) == [first, second]
    # the previous snapshot stays as a fallback, with the journal after it
    assert journal(store)[0] == first + 1
    assert got == expected
    assert stats["recovered_snapshot"] == second
    assert stats["recovered_entries"] == 1  # the last commit only
    assert expected["batches"][("t", 0)][-1][1] == 10


def test_snapshots_are_taken_on_their_own_every_n_rounds(tmp_path, store):
    settings = make_settings(tmp_path, snapshot_every_rounds=3)

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        for i in range(8):
            await actor.commit(request(entry(0), key=f"segments/{i}.arrow"))
            await asyncio.sleep(0.01)  # let the background snapshot run
        for _ in range(200):
            if (await actor.stats())["snapshots"] >= 2:
                break
            await asyncio.sleep(0.01)
        return await actor.stats()

    stats = run(scenario())
    assert stats["snapshots"] >= 2
    assert len(snapshots(store)) == 2
    assert journal(store)[-1] == stats["journal_index"]


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(tmp_path):
    settings = make_settings(tmp_path)
    store = MemoryStore()

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        await actor.commit(request(entry(0, 2)))
        await actor.snapshot()
        await actor.commit(request(entry(0, 3), key="segments/b.arrow"))
        newest = await actor.snapshot()
        await actor.commit(request(entry(0, 4), key="segments/c.arrow"))
        expected = await state(actor)
        store.put(snapshot_key(newest), b"garbage, not SQLite")
        again = MetadataActor(settings, store=store)
        return expected, await state(again)

    expected, got = run(scenario())
    assert got == expected


def test_a_new_incarnation_fences_the_old_one(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        old = MetadataActor(settings, store=store)
        await old.create_topic("t", 1)
        await old.commit(request(entry(0, 2)))
        new = MetadataActor(settings, store=store)  # e.g. Ray restarted it; old is a zombie
        with pytest.raises(Fenced):
            await old.commit(request(entry(0, 5), key="segments/zombie.arrow"))
        with pytest.raises(Fenced):
            await old.create_topic("u", 1)
        zombie_view = await old.describe_topic("t")
        await new.commit(request(entry(0, 1), key="segments/new.arrow"))
        third = MetadataActor(settings, store=store)
        return (
            zombie_view,
            await state(new),
            await state(third),
            (await old.epoch(), await new.epoch()),
        )

    zombie_view, new_state, third_state, epochs = run(scenario())
    assert zombie_view.partition_info[0].high_watermark == 2  # the fenced round was not applied
    assert new_state["batches"][("t", 0)] == [
        ("segments/a.arrow", 0, 2),
        ("segments/new.arrow", 2, 1),
    ]
    assert third_state == new_state
    assert epochs == (1, 2)


class _RaceStore(MemoryStore):
    """Before the first create-only PUT of ``victim_key`` runs, calls ``before``."""

    def __init__(self):
        super().__init__()
        self.victim_key = ""
        self.before = None

    def put(self, key, data, *, if_none_match=False):
        if key == self.victim_key and self.before is not None:
            hook, self.before = self.before, None
            hook()
        super().put(key, data, if_none_match=if_none_match)


def test_a_round_written_while_the_successor_starts_is_kept(tmp_path):
    """The old incarnation appends between the new one's read and its fence: the new
    one loses the race for that index, reads the entry, and fences the next index."""
    settings = make_settings(tmp_path)
    store = _RaceStore()

    async def scenario():
        old = MetadataActor(settings, store=store)
        await old.create_topic("t", 1)
        racing = old._seq.plan_commits([request(entry(0, 7), key="segments/race.arrow")])[1]
        store.victim_key = journal_key(3)
        store.before = lambda: old._journal.append(racing)  # old's round lands at index 3
        new = MetadataActor(settings, store=store)
        return await state(new), await new.stats()

    got, stats = run(scenario())
    assert got["batches"][("t", 0)] == [("segments/race.arrow", 0, 7)]
    assert stats["journal_index"] == 4  # fence at 4, after the raced entry
    assert decode_entry(store.get(journal_key(4))).epoch == 2


def test_lost_put_response_neither_loses_nor_doubles_the_round(tmp_path):
    settings = make_settings(tmp_path)
    store = FaultyStore(MemoryStore(), rng=random.Random(1))

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        store.fail_next_puts(1, after_write=True)  # written, but the caller sees an error
        results = await actor.commit(request(entry(0, 3)))
        after_fault = await actor.stats()
        await actor.commit(request(entry(0, 1), key="segments/b.arrow"))
        again = MetadataActor(settings, store=store)
        return results, after_fault, await state(actor), await state(again), store.counts()

    results, stats, live, rebuilt, counts = run(scenario())
    assert counts.put_after == 1
    assert results[0].base_offset == 0
    assert stats["failed_rounds"] == 0
    assert live["batches"][("t", 0)] == [("segments/a.arrow", 0, 3), ("segments/b.arrow", 3, 1)]
    assert rebuilt == live


def test_round_in_doubt_is_settled_before_the_next_one(tmp_path):
    settings = make_settings(tmp_path, journal_put_timeout_s=0.2)
    store = FaultyStore(MemoryStore(), rng=random.Random(2))

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        store.set_failure_rates(put_before=1.0)  # the store is down
        with pytest.raises(StorageUnavailable, match="in doubt"):
            await actor.commit_with_epoch(request(entry(0, 3)))
        hidden = (await actor.describe_topic("t")).partition_info[0].high_watermark
        doubt = (await actor.stats())["in_doubt"]
        store.set_failure_rates()  # back up
        resent, _ = await actor.commit_with_epoch(request(entry(0, 3)))  # the agent resends
        later = await actor.commit(request(entry(0, 2), key="segments/b.arrow"))
        again = MetadataActor(settings, store=store)
        return hidden, doubt, resent, later, await state(actor), await state(again)

    hidden, doubt, resent, later, live, rebuilt = run(scenario())
    assert (hidden, doubt) == (0, True)
    assert [(r.base_offset, r.duplicate) for r in resent] == [(0, True)]  # landed once
    assert later[0].base_offset == 3
    assert live["batches"][("t", 0)] == [("segments/a.arrow", 0, 3), ("segments/b.arrow", 3, 2)]
    assert rebuilt == live


def test_resend_after_a_restart_is_answered_as_duplicate(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 2)
        req = request(entry(0, 2, position=0), entry(1, 3, position=100), key="segments/r.arrow")
        first, _ = await actor.commit_with_epoch(req)
        again = MetadataActor(settings, store=store)  # the actor died before answering
        resent, epoch = await again.commit_with_epoch(req)
        return first, resent, epoch, await state(again)

    first, resent, epoch, got = run(scenario())
    assert [r.base_offset for r in resent] == [r.base_offset for r in first] == [0, 0]
    assert all(r.duplicate for r in resent)
    assert epoch == 2
    assert got["batches"][("t", 0)] == [("segments/r.arrow", 0, 2)]


def test_legacy_data_dir_is_imported_as_the_first_snapshot(tmp_path, store):
    settings = make_settings(tmp_path)
    legacy = MetadataStore.open(settings)  # <data_dir>/metadata.sqlite, as before journals
    seq = Sequencer()
    created = seq.plan_create_topic("old", 1, topic_id="ab" * 16)
    legacy.persist(created)
    seq.apply(created)
    legacy.persist(seq.plan_commits([request(entry(0, 5, topic="old"))])[1])
    legacy.close()

    async def scenario():
        actor = MetadataActor(settings, store=store)
        return await actor.describe_topic("old"), await actor.epoch()

    info, epoch = run(scenario())
    assert info.partition_info[0].high_watermark == 5
    assert snapshots(store) == [0]
    assert epoch == 1


def test_orphan_sweep_deletes_only_old_unreferenced_segments(tmp_path):
    clock = ManualClock(now_ms=1_700_000_000_000)
    settings = make_settings(tmp_path, orphan_grace_s=60)
    store = MemoryStore()
    rand = random.Random(5)
    old_orphan = new_segment_key(clock.now_ms() - 120_000, rand)
    young_orphan = new_segment_key(clock.now_ms() - 10_000, rand)
    committed = new_segment_key(clock.now_ms() - 20_000, rand)
    for key in (old_orphan, young_orphan, committed, "segments/not-a-ulid.arrow"):
        store.put(key, b"x")

    async def scenario():
        actor = MetadataActor(settings, store=store, clock=clock)
        await actor.create_topic("t", 1)
        await actor.commit(request(entry(0), key=committed))
        clock.advance(100)  # the committed segment is now old too: still referenced
        return await actor.sweep_orphans()

    report = run(scenario())
    assert report == {"listed": 4, "deleted": 2}
    assert store.list("segments/") == sorted([committed, "segments/not-a-ulid.arrow"])


def test_commit_of_a_segment_older_than_half_the_grace_is_refused(tmp_path):
    clock = ManualClock(now_ms=1_700_000_000_000)
    settings = make_settings(tmp_path, orphan_grace_s=60)
    stale = new_segment_key(clock.now_ms() - 31_000, random.Random(6))

    async def scenario():
        actor = MetadataActor(settings, store=MemoryStore(), clock=clock)
        await actor.create_topic("t", 1)
        with pytest.raises(Unavailable, match="orphan"):
            await actor.commit_with_epoch(request(entry(0), key=stale))
        return (await actor.describe_topic("t")).partition_info[0].high_watermark

    assert run(scenario()) == 0


def test_fault_hooks_need_a_faulty_store(tmp_path):
    settings = make_settings(tmp_path)
    faulty = FaultyStore(MemoryStore(), rng=random.Random(0))

    async def scenario():
        plain = MetadataActor(settings, store=MemoryStore())
        with pytest.raises(Exception, match="fault"):
            await plain.inject_faults({"put_fail_before": 1})
        actor = MetadataActor(make_settings(tmp_path / "x"), store=faulty)
        counts = await actor.inject_faults({"put_fail_after": 1})
        await actor.create_topic("t", 1)  # the lost response is absorbed by the read-back
        return counts, await actor.fault_counts(), await actor.pid(), await actor.node_id()

    counts, after, pid, node = run(scenario())
    assert counts["put_after"] == 0
    assert after["put_after"] == 1
    assert pid == os.getpid()
    import ray  # a session Ray may be up when integration tests ran first

    assert node == (ray.get_runtime_context().get_node_id() if ray.is_initialized() else "")


# ------------------------------------------------- the agent's side of the protocol
class FakeMeta:
    """Stands in for the metadata actor behind an agent: scripted commit answers."""

    def __init__(self, *answers):
        self.answers = list(answers)  # each: an exception to raise, or an epoch to answer
        self.requests = []
        self.gate = None
        self.addresses = {}
        self._offset = 0

    async def agent_address(self, index):
        return self.addresses.get(index)

    async def register_agent(self, index, address):
        self.addresses[index] = address

    async def commit_many_with_epoch(self, requests):
        self.requests.extend(requests)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else 1
        if isinstance(answer, Exception):
            raise answer
        answers = []
        for request in requests:
            results = []
            for batch in request.batches:
                results.append(BatchResult(self._offset))
                self._offset += batch.record_count
            answers.append(results)
        return answers, answer


def make_agent(tmp_path, meta, store=None, **kw):
    from ray_stream.actors.agent import AgentActor

    kw.setdefault("linger_ms", 0)
    kw.setdefault("kafka_port", 0)
    settings = Settings(data_dir=str(tmp_path / "data"), object_store="memory://", **kw)
    agent = AgentActor(settings, 0, autostart=False)
    agent._meta_once = meta
    if store is not None:
        agent.store = store
    return agent


def batch(value=b"v"):
    from ray_stream.kafka.records import Record, encode_batch

    return encode_batch([Record(value)], now_ms=1_700_000_000_000)


def test_agent_retries_a_failed_segment_put(tmp_path):
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    store.fail_next_puts(1)
    store.fail_next_puts(1, after_write=True)
    meta = FakeMeta()
    agent = make_agent(tmp_path, meta, store)

    results = run(agent.produce([("t", 0, batch())]))
    assert [(r.base_offset, r.error) for r in results] == [(0, None)]
    assert (store.counts().put_before, store.counts().put_after) == (1, 1)
    assert store.list("segments/") == [meta.requests[0].segment_key]


def test_agent_gives_up_after_the_put_attempts(tmp_path):
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    store.set_failure_rates(put_before=1.0)
    meta = FakeMeta()
    agent = make_agent(tmp_path, meta, store, segment_put_attempts=2)

    results = run(agent.produce([("t", 0, batch())]))
    assert isinstance(results[0].error, StorageUnavailable)
    assert meta.requests == []  # never committed a segment that is not stored


def test_agent_resends_the_same_commit_until_the_metadata_actor_is_back(tmp_path):
    meta = FakeMeta(
        Unavailable("restarting"), StorageUnavailable("journal in doubt"), Fenced("old"), 2
    )
    agent = make_agent(tmp_path, meta)

    results = run(agent.produce([("t", 0, batch())]))
    assert [(r.base_offset, r.error) for r in results] == [(0, None)]
    assert len({r.segment_key for r in meta.requests}) == 1
    assert len(meta.requests) == 4


def test_agent_drops_answers_from_an_older_epoch(tmp_path):
    meta = FakeMeta(3, 2, 3)
    agent = make_agent(tmp_path, meta)

    async def scenario():
        first = await agent.produce([("t", 0, batch(b"a"))])
        second = await agent.produce([("t", 0, batch(b"b"))])
        return first, second, (await agent.stats())["metadata_epoch"]

    first, second, epoch = run(scenario())
    assert first[0].error is None
    assert second[0].error is None
    assert [r.segment_key for r in meta.requests[1:]] == [meta.requests[1].segment_key] * 2
    assert epoch == 3


def test_agent_fails_producers_when_the_metadata_actor_stays_away(tmp_path):
    meta = FakeMeta(*[Unavailable("down")] * 100)
    agent = make_agent(tmp_path, meta, metadata_retry_s=0.3)

    results = run(agent.produce([("t", 0, batch())]))
    assert isinstance(results[0].error, Unavailable)
    assert "gave up" in str(results[0].error)


def test_agent_buffer_is_bounded(tmp_path):
    meta = FakeMeta()
    agent = make_agent(tmp_path, meta, flush_bytes=1024, agent_buffer_bytes=2000)
    big = batch(b"x" * 900)

    async def scenario():
        meta.gate = asyncio.Event()  # the commit hangs: bytes stay in flight
        first = asyncio.ensure_future(agent.produce([("t", 0, big)]))
        second = asyncio.ensure_future(agent.produce([("t", 0, big)]))
        await asyncio.sleep(0.2)
        third = await agent.produce([("t", 0, big)])  # over 2000 bytes held: refused now
        meta.gate.set()
        return await first, await second, third

    first, second, third = run(scenario())
    assert first[0].error is None
    assert second[0].error is None
    assert isinstance(third[0].error, Unavailable)
    assert "agent_buffer_bytes" in str(third[0].error)


def test_restarted_agent_listens_on_the_port_its_predecessor_registered(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    meta = FakeMeta()
    meta.addresses[0] = BrokerInfo(0, "127.0.0.1", free)  # what the last incarnation had

    async def scenario():
        agent = make_agent(tmp_path, meta, kafka_port=-1)
        address = await agent.start()
        assert await agent.start() == address  # idempotent
        await agent.stop()
        return address

    address = run(scenario())
    assert (address.host, address.port) == ("127.0.0.1", free)
    assert meta.addresses[0] == address


def test_agent_buffers_a_producers_calls_in_order_and_refuses_overtaken_ones(tmp_path, monkeypatch):
    import ray_stream.actors.call_order as call_order

    monkeypatch.setattr(call_order, "SESSION_GAP_TIMEOUT_S", 0.3)
    meta = FakeMeta()
    agent = make_agent(tmp_path, meta)

    async def scenario():
        # call 1 arrives before call 0: it waits for 0, then both land in order
        second = asyncio.ensure_future(agent.produce([("t", 0, batch(b"1"))], session="p/0", seq=1))
        await asyncio.sleep(0.05)
        first = await agent.produce([("t", 0, batch(b"0"))], session="p/0", seq=0)
        second = await second
        # call 3 gives up on a missing call 2; call 2 turning up later is refused
        third = await agent.produce([("t", 0, batch(b"3"))], session="p/0", seq=3)
        late = await agent.produce([("t", 0, batch(b"2"))], session="p/0", seq=2)
        # a newer session of the producer makes the older one's calls late too
        newer = await agent.produce([("t", 0, batch(b"n"))], session="p/1", seq=0)
        older = await agent.produce([("t", 0, batch(b"o"))], session="p/0", seq=4)
        # an older session's call waiting for its turn is refused once a newer one goes first
        waiting = asyncio.ensure_future(
            agent.produce([("t", 0, batch(b"w"))], session="q/0", seq=5)
        )
        await asyncio.sleep(0.05)
        await agent.produce([("t", 0, batch(b"q"))], session="q/1", seq=0)
        overtaken = await waiting
        assert isinstance(overtaken[0].error, Unavailable)
        return first, second, third, late, newer, older

    first, second, third, late, newer, older = run(scenario())
    assert (
        first[0].base_offset < second[0].base_offset < third[0].base_offset < newer[0].base_offset
    )
    assert isinstance(late[0].error, Unavailable) and "successor" in str(late[0].error)
    assert isinstance(older[0].error, Unavailable) and "older session" in str(older[0].error)


def test_commit_many_is_one_round_in_order_and_resendable(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        actor = MetadataActor(settings, store=store)
        await actor.create_topic("t", 1)
        reqs = [
            request(entry(0, 2), key="segments/a.arrow"),
            request(entry(0, 3), key="segments/b.arrow"),
            request(entry(0, 1, topic="nope"), key="segments/c.arrow"),
        ]
        before = (await actor.stats())["commit_rounds"]
        answers, epoch = await actor.commit_many_with_epoch(reqs)
        rounds = (await actor.stats())["commit_rounds"] - before
        resent, _ = await actor.commit_many_with_epoch(reqs[:2])  # the agent resends
        again = MetadataActor(settings, store=store)
        return answers, epoch, rounds, resent, await state(actor), await state(again)

    answers, epoch, rounds, resent, live, rebuilt = run(scenario())
    assert rounds == 1  # three segments, one journal PUT
    assert [r.base_offset for r in answers[0]] == [0]
    assert [r.base_offset for r in answers[1]] == [2]
    assert answers[2][0].error is not None  # unknown topic: refused per batch, not raised
    assert [[(r.base_offset, r.duplicate) for r in rs] for rs in resent] == [
        [(0, True)],
        [(2, True)],
    ]
    assert live["batches"][("t", 0)] == [("segments/a.arrow", 0, 2), ("segments/b.arrow", 2, 3)]
    assert rebuilt == live
    assert epoch == 1
