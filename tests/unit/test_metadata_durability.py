"""Metadata durability without Ray: the object store alone brings everything back.

Each test runs the real ``MetadataService`` in-process (``tests/fakes.make_meta``) on a
``MemoryStore`` or ``LocalStore`` and checks what a *new* incarnation rebuilds, usually
after the local SQLite cache is deleted (a lost node). Faults come from ``FaultyStore``.

The agent's side of the protocol (segment PUT retries, commit resends across metadata
restarts, the buffer bound) runs the real agent core (``LogService``, built by
``tests/fakes.make_agent``) against real metadata incarnations over a shared store.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from ray_stream.clock import ManualClock
from ray_stream.config import Settings
from ray_stream.core.journal import decode_entry
from ray_stream.core.keys import (
    JOURNAL_PREFIX,
    SEGMENT_PREFIX,
    SNAPSHOT_PREFIX,
    journal_index,
    journal_key,
    new_segment_key,
    snapshot_index,
    snapshot_key,
)
from ray_stream.core.metadata_api import (
    CommitAnswer,
    CommitRequest,
    LocateRequest,
    OffsetCommitRequest,
    ProducerIdentity,
)
from ray_stream.core.sequencer import Sequencer
from ray_stream.core.types import BatchEntry, BrokerInfo, CommittedOffset, TopicPartition
from ray_stream.errors import Fenced, InvalidRequest, StorageUnavailable, Unavailable
from ray_stream.metadata.store import MetadataStore, cache_dir
from ray_stream.storage.faults import FaultyStore
from ray_stream.storage.local import LocalStore
from ray_stream.storage.memory import MemoryStore
from tests.fakes import make_agent, make_meta

ANSWER_S = 10.0  # the most a test waits for an answer that must come (a hang fails)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Unit tests run without Ray: starting it is refused, and the test fails even when
    the caller swallowed the refusal."""
    import ray

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("unit tests must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert attempts == [], "something tried to start Ray"


def entry(partition=0, count=1, *, pid=-1, epoch=-1, seq=-1, topic="t"):
    return BatchEntry(topic, partition, 0, 100, count, 1000, 1000, pid, epoch, seq)


def request(*entries, key="segments/a.arrow"):
    """One segment's commit as an agent sends it: batches one after another in the object
    (a segment key and position name one batch, so a resend is recognised)."""
    placed = [replace(e, position=100 * i) for i, e in enumerate(entries)]
    return CommitRequest.of(key, 100 * len(entries), placed)


async def commit(service, req):
    """The batch results of one segment (raises the segment's error)."""
    (segment,) = (await service.commit([req])).segments
    return segment.results()


async def epoch_of(service):
    return (await service.ping())["epoch"]


def run(coro):
    return asyncio.run(coro)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(ANSWER_S):
        while not predicate():
            await asyncio.sleep(0.001)


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


async def state(service):
    """Everything a client could observe, in comparable form."""
    topics = await service.list_topics()
    positions = tuple(
        (t.name, p.partition, p.log_start_offset, 1 << 30) for t in topics for p in t.partition_info
    )
    located = await service.locate(LocateRequest(positions))
    return {
        "topics": [(t.name, t.topic_id, t.partitions, t.config, t.partition_info) for t in topics],
        "batches": {
            (topic, partition): [
                (b.segment_key, b.base_offset, b.record_count) for b in located.batches(i)
            ]
            for i, (topic, partition, _, _) in enumerate(positions)
        },
        "groups": {g: await service.fetch_offsets(g) for g in ("g1", "g2")},
        "counts": {k: v for k, v in (await service.ping()).items() if k not in ("epoch",)},
    }


def offsets_of(group, offsets):
    return OffsetCommitRequest(group, {TopicPartition(t, p): o for (t, p), o in offsets.items()})


async def first_life(settings, store):
    service = make_meta(settings, store=store)
    await service.create_topic("t", 2, {"retention.ms": "60000"})
    await service.create_topic("u", 1)
    producer = await service.init_producer_id()
    pid, epoch = producer.producer_id, producer.epoch
    tx = await service.init_producer_id("tx")
    await asyncio.gather(
        commit(service, request(entry(0, 3), entry(1, 2, pid=pid, epoch=epoch, seq=0))),
        commit(service, request(entry(0, 4, pid=pid, epoch=epoch, seq=0), key="segments/b.arrow")),
        service.commit_offsets(offsets_of("g1", {("t", 0): CommittedOffset(3, "meta", 1)})),
        service.commit_offsets(
            offsets_of("g2", {("t", 1): CommittedOffset(1), ("u", 0): CommittedOffset(0)})
        ),
    )
    await service.delete_topic("u")
    return service, producer, tx


def test_restart_from_the_object_store_alone_restores_everything(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        service, producer, tx = await first_life(settings, store)
        pid, epoch = producer.producer_id, producer.epoch
        before = await state(service)
        await service.close()
        shutil.rmtree(settings.resolved_data_dir)  # the node's disk is gone

        again = make_meta(settings, store=store)
        after = await state(again)
        dup = await commit(
            again, request(entry(1, 2, pid=pid, epoch=epoch, seq=0), key="segments/c.arrow")
        )
        nxt = await commit(
            again, request(entry(1, 1, pid=pid, epoch=epoch, seq=2), key="segments/d.arrow")
        )
        tx2 = await again.init_producer_id("tx")
        new_pid = await again.init_producer_id()
        return before, after, dup, nxt, tx, tx2, (producer, new_pid), await epoch_of(again)

    before, after, dup, nxt, tx, tx2, (producer, new_pid), epoch = run(scenario())
    assert after == before
    assert before["batches"][("t", 0)] == [("segments/a.arrow", 0, 3), ("segments/b.arrow", 3, 4)]
    assert before["groups"] == {
        "g1": {TopicPartition("t", 0): CommittedOffset(3, "meta", 1)},
        "g2": {TopicPartition("t", 1): CommittedOffset(1)},
    }
    assert (dup[0].base_offset, dup[0].duplicate) == (0, True)  # producer state came back
    assert nxt[0].base_offset == 2
    assert tx2 == ProducerIdentity(tx.producer_id, tx.epoch + 1)
    assert new_pid.producer_id > max(producer.producer_id, tx.producer_id)
    assert epoch == 2


def test_each_round_is_one_journal_put(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 2)
        before = await service.stats()
        calls = [
            commit(service, request(entry(i % 2), key=f"segments/{i}.arrow")) for i in range(30)
        ]
        calls += [
            service.commit_offsets(offsets_of("g1", {("t", 0): CommittedOffset(i)}))
            for i in range(10)
        ]
        await asyncio.gather(*calls)
        return before, await service.stats(), await service.fetch_offsets("g1")

    before, after, offsets = run(scenario())
    rounds = after["commit_rounds"] - before["commit_rounds"]
    puts = after["journal_puts"] - before["journal_puts"]
    assert puts == rounds < 40
    assert offsets == {TopicPartition("t", 0): CommittedOffset(9)}  # the last commit wins
    assert journal(store) == list(range(1, after["journal_index"] + 1))


def test_local_cache_is_per_epoch_and_old_ones_are_removed(tmp_path, store):
    settings = make_settings(tmp_path)

    async def life():
        service = make_meta(settings, store=store)
        await service.close()
        return await epoch_of(service)

    epochs = [run(life()) for _ in range(3)]
    assert epochs == [1, 2, 3]
    assert [p.name for p in cache_dir(settings).glob("*.sqlite")] == ["0000000003.sqlite"]
    assert [decode_entry(store.get(journal_key(i))).kind for i in journal(store)] == ["fence"] * 3


def test_snapshot_truncates_the_journal_and_restart_uses_it(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        first = second = 0
        for i in range(6):
            await commit(service, request(entry(0, 2), key=f"segments/{i}.arrow"))
            if i == 1:
                first = await service.snapshot()
            if i == 4:
                second = await service.snapshot()
        expected = await state(service)
        await service.close()
        shutil.rmtree(settings.resolved_data_dir)
        again = make_meta(settings, store=store)
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
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        for i in range(8):
            await commit(service, request(entry(0), key=f"segments/{i}.arrow"))
            await until(lambda: len(service._tasks) == 0)  # the background snapshot ran
        return await service.stats()

    stats = run(scenario())
    assert stats["snapshots"] >= 2
    assert len(snapshots(store)) == 2
    assert journal(store)[-1] == stats["journal_index"]


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(tmp_path):
    settings = make_settings(tmp_path)
    store = MemoryStore()

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        await commit(service, request(entry(0, 2)))
        await service.snapshot()
        await commit(service, request(entry(0, 3), key="segments/b.arrow"))
        newest = await service.snapshot()
        await commit(service, request(entry(0, 4), key="segments/c.arrow"))
        expected = await state(service)
        store.put(snapshot_key(newest), b"garbage, not SQLite")
        again = make_meta(settings, store=store)
        return expected, await state(again)

    expected, got = run(scenario())
    assert got == expected


def test_a_new_incarnation_fences_the_old_one(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        old = make_meta(settings, store=store)
        await old.create_topic("t", 1)
        await commit(old, request(entry(0, 2)))
        new = make_meta(settings, store=store)  # e.g. Ray restarted it; old is a zombie
        refused = await old.commit([request(entry(0, 5), key="segments/zombie.arrow")])
        with pytest.raises(Fenced):
            await old.create_topic("u", 1)
        again = await old.commit([request(entry(0, 5), key="segments/zombie2.arrow")])
        zombie_view = await old.describe_topic("t")
        await commit(new, request(entry(0, 1), key="segments/new.arrow"))
        third = make_meta(settings, store=store)
        return (
            (refused, again),
            zombie_view,
            await state(new),
            await state(third),
            (await epoch_of(old), await epoch_of(new)),
        )

    answers, zombie_view, new_state, third_state, epochs = run(scenario())
    for answer in answers:  # per segment, with the zombie's own (older) epoch
        assert isinstance(answer.segments[0].error, Fenced)
        assert answer.epoch == 1
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
        old = make_meta(settings, store=store)
        await old.create_topic("t", 1)
        racing = old._seq.plan_commits([request(entry(0, 7), key="segments/race.arrow")])[1]
        store.victim_key = journal_key(3)
        store.before = lambda: old._journal.append(racing)  # old's round lands at index 3
        new = make_meta(settings, store=store)
        return await state(new), await new.stats()

    got, stats = run(scenario())
    assert got["batches"][("t", 0)] == [("segments/race.arrow", 0, 7)]
    assert stats["journal_index"] == 4  # fence at 4, after the raced entry
    assert decode_entry(store.get(journal_key(4))).epoch == 2


def test_lost_put_response_neither_loses_nor_doubles_the_round(tmp_path):
    settings = make_settings(tmp_path)
    store = FaultyStore(MemoryStore(), rng=random.Random(1))

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        store.fail_next_puts(1, after_write=True)  # written, but the caller sees an error
        results = await commit(service, request(entry(0, 3)))
        after_fault = await service.stats()
        await commit(service, request(entry(0, 1), key="segments/b.arrow"))
        again = make_meta(settings, store=store)
        return results, after_fault, await state(service), await state(again), store.counts()

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
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        store.set_failure_rates(put_before=1.0)  # the store is down
        (failed,) = (await service.commit([request(entry(0, 3))])).segments
        hidden = (await service.describe_topic("t")).partition_info[0].high_watermark
        doubt = (await service.stats())["in_doubt"]
        store.set_failure_rates()  # back up
        resent = await commit(service, request(entry(0, 3)))  # the agent resends
        later = await commit(service, request(entry(0, 2), key="segments/b.arrow"))
        again = make_meta(settings, store=store)
        return failed, hidden, doubt, resent, later, await state(service), await state(again)

    failed, hidden, doubt, resent, later, live, rebuilt = run(scenario())
    assert isinstance(failed.error, StorageUnavailable)
    assert "in doubt" in str(failed.error)
    assert (hidden, doubt) == (0, True)
    assert [(r.base_offset, r.duplicate) for r in resent] == [(0, True)]  # landed once
    assert later[0].base_offset == 3
    assert live["batches"][("t", 0)] == [("segments/a.arrow", 0, 3), ("segments/b.arrow", 3, 2)]
    assert rebuilt == live


def test_resend_after_a_restart_is_answered_as_duplicate(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 2)
        req = request(entry(0, 2), entry(1, 3), key="segments/r.arrow")
        first = await commit(service, req)
        again = make_meta(settings, store=store)  # the service died before answering
        answer = await again.commit([req])
        return first, answer.segments[0].results(), answer.epoch, await state(again)

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
        service = make_meta(settings, store=store)
        return await service.describe_topic("old"), await epoch_of(service)

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
        service = make_meta(settings, store=store, clock=clock)
        await service.create_topic("t", 1)
        await commit(service, request(entry(0), key=committed))
        clock.advance(100)  # the committed segment is now old too: still referenced
        return await service.sweep_orphans()

    report = run(scenario())
    assert report == {"listed": 4, "deleted": 2}
    assert store.list(SEGMENT_PREFIX) == sorted([committed, "segments/not-a-ulid.arrow"])


def test_commit_of_a_segment_older_than_half_the_grace_is_refused(tmp_path):
    clock = ManualClock(now_ms=1_700_000_000_000)
    settings = make_settings(tmp_path, orphan_grace_s=60)
    stale = new_segment_key(clock.now_ms() - 31_000, random.Random(6))

    async def scenario():
        service = make_meta(settings, store=MemoryStore(), clock=clock)
        await service.create_topic("t", 1)
        (refused,) = (await service.commit([request(entry(0), key=stale)])).segments
        return refused, (await service.describe_topic("t")).partition_info[0].high_watermark

    refused, hwm = run(scenario())
    assert isinstance(refused.error, Unavailable)
    assert "orphan" in str(refused.error)
    assert hwm == 0


def test_fault_hooks_reach_the_services_store_and_need_a_faulty_one(tmp_path):
    """The chaos nemesis injects faults through the service's ``store`` (its hooks run
    inside the actor via ``__ray_call__``); here they run on the service in-process."""
    from ray_stream.testing.nemesis import _HOOKS

    settings = make_settings(tmp_path)
    faulty = FaultyStore(MemoryStore(), rng=random.Random(0))

    async def scenario():
        plain = make_meta(settings, store=MemoryStore())
        with pytest.raises(InvalidRequest, match="FaultyStore"):
            _HOOKS["inject_faults"](plain, {"put_fail_before": 1})
        service = make_meta(make_settings(tmp_path / "x"), store=faulty)
        counts = _HOOKS["inject_faults"](service, {"put_fail_after": 1})
        created = await service.create_topic("t", 1)  # the lost response is absorbed
        return counts, _HOOKS["fault_counts"](service), created, await service.list_topics()

    counts, after, created, topics = run(scenario())
    assert counts["put_after"] == 0
    assert after["put_after"] == 1
    assert topics == [created]


def test_commit_of_several_segments_is_one_round_in_order_and_resendable(tmp_path, store):
    settings = make_settings(tmp_path)

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        reqs = [
            request(entry(0, 2), key="segments/a.arrow"),
            request(entry(0, 3), key="segments/b.arrow"),
            request(entry(0, 1, topic="nope"), key="segments/c.arrow"),
        ]
        before = (await service.stats())["commit_rounds"]
        answer = await service.commit(reqs)
        rounds = (await service.stats())["commit_rounds"] - before
        resent = await service.commit(reqs[:2])  # the agent resends
        again = make_meta(settings, store=store)
        return answer, rounds, resent, await state(service), await state(again)

    answer, rounds, resent, live, rebuilt = run(scenario())
    answers = [segment.results() for segment in answer.segments]
    assert rounds == 1  # three segments, one journal PUT
    assert [r.base_offset for r in answers[0]] == [0]
    assert [r.base_offset for r in answers[1]] == [2]
    assert answers[2][0].error is not None  # unknown topic: refused per batch, not raised
    assert [[(r.base_offset, r.duplicate) for r in s.results()] for s in resent.segments] == [
        [(0, True)],
        [(2, True)],
    ]
    assert live["batches"][("t", 0)] == [("segments/a.arrow", 0, 2), ("segments/b.arrow", 2, 3)]
    assert rebuilt == live
    assert answer.epoch == 1


# ------------------------------------------------- the agent's side of the protocol
class Incarnations:
    """The metadata service as an agent sees it across restarts: each ``commit`` goes to
    the next of ``route`` (the last one stays); every other call goes to the last one.
    Records every commit request. No product logic: each answer is a real service's."""

    def __init__(self, *route) -> None:
        self.route = list(route)
        self.requests: list[CommitRequest] = []

    async def commit(self, requests: list[CommitRequest]) -> CommitAnswer:
        self.requests.extend(requests)
        service = self.route.pop(0) if len(self.route) > 1 else self.route[0]
        return await service.commit(requests)

    def __getattr__(self, name):
        return getattr(self.route[-1], name)


def agent_settings(tmp_path, **kw):
    return make_settings(tmp_path, object_store="memory://", **kw)


async def topic_service(settings, store, **kw):
    service = make_meta(settings, store=store, **kw)
    await service.create_topic("t", 1)
    return service


async def located(service):
    answer = await service.locate(LocateRequest((("t", 0, 0, 1 << 20),)))
    return [(b.segment_key, b.base_offset) for b in answer.batches(0)]


def batch(value=b"v"):
    from ray_stream.kafka.records import Record, encode_batch

    return encode_batch([Record(value)], now_ms=1_700_000_000_000)


def test_agent_retries_a_failed_segment_put(tmp_path):
    settings = agent_settings(tmp_path)
    store = FaultyStore(MemoryStore(), rng=random.Random(0))

    async def scenario():
        meta = await topic_service(settings, store)
        agent = make_agent(settings, meta, store)
        store.configure({"put_fail_before": 1, "put_fail_after": 1, "key_prefix": SEGMENT_PREFIX})
        results = await agent.produce([("t", 0, batch())])
        return results, await located(meta)

    results, batches = run(scenario())
    assert [(r.base_offset, r.error) for r in results] == [(0, None)]
    assert (store.counts().put_before, store.counts().put_after) == (1, 1)
    assert store.list(SEGMENT_PREFIX) == [key for key, _ in batches]  # one object, committed


def test_agent_gives_up_after_the_put_attempts(tmp_path):
    settings = agent_settings(tmp_path, segment_put_attempts=2)
    store = FaultyStore(MemoryStore(), rng=random.Random(0))

    async def scenario():
        meta = await topic_service(settings, store)
        agent = make_agent(settings, meta, store)
        store.configure({"put_rate_before": 1.0, "key_prefix": SEGMENT_PREFIX})
        results = await agent.produce([("t", 0, batch())])
        return results, await meta.stats()

    results, stats = run(scenario())
    assert isinstance(results[0].error, StorageUnavailable)
    assert store.counts().put_before == 2
    assert stats["commit_requests"] == 0  # never committed a segment that is not stored


def test_agent_resends_the_same_commit_until_the_metadata_service_is_back(tmp_path):
    """Through a closed incarnation (raises StorageUnavailable), a fenced zombie (Fenced),
    and a journal write left in doubt (StorageUnavailable), to the live one."""
    settings = agent_settings(tmp_path, journal_put_timeout_s=0.01)  # no journal retries
    store = FaultyStore(MemoryStore(), rng=random.Random(0))

    async def scenario():
        gone = await topic_service(settings, store)
        await gone.close()
        zombie = make_meta(settings, store=store)
        live = make_meta(settings, store=store)  # zombie (epoch 2) is fenced by epoch 3
        next_entry = journal_key((await live.stats())["journal_index"] + 1)
        store.configure({"put_fail_before": 1, "key_prefix": next_entry})  # live's first round
        meta = Incarnations(gone, zombie, live, live)
        agent = make_agent(settings, meta, store)
        results = await asyncio.wait_for(agent.produce([("t", 0, batch())]), ANSWER_S)
        return meta.requests, results, await located(live), agent.stats()["metadata_epoch"]

    requests, results, batches, epoch = run(scenario())
    assert [(r.base_offset, r.error) for r in results] == [(0, None)]
    assert len(requests) == 4
    assert len({r.segment_key for r in requests}) == 1
    assert batches == [(requests[0].segment_key, 0)]  # committed once
    assert store.counts().put_before == 1
    assert epoch == 3


def test_agent_drops_answers_from_an_older_epoch(tmp_path):
    settings = agent_settings(tmp_path)
    store = MemoryStore()

    async def scenario():
        zombie = await topic_service(settings, store)
        live = make_meta(settings, store=store)
        meta = Incarnations(live, zombie, live)
        agent = make_agent(settings, meta, store)
        first = await agent.produce([("t", 0, batch(b"a"))])
        second = await asyncio.wait_for(agent.produce([("t", 0, batch(b"b"))]), ANSWER_S)
        return meta.requests, first, second, agent.stats()["metadata_epoch"]

    requests, first, second, epoch = run(scenario())
    assert (first[0].base_offset, first[0].error) == (0, None)
    assert (second[0].base_offset, second[0].error) == (1, None)
    assert [r.segment_key for r in requests[1:]] == [requests[1].segment_key] * 2
    assert epoch == 2


def test_agent_fails_producers_when_the_metadata_service_stays_away(tmp_path):
    settings = agent_settings(tmp_path, metadata_retry_s=5.0)
    store = MemoryStore()
    clock = ManualClock()

    async def scenario():
        gone = await topic_service(settings, store)
        await gone.close()
        meta = Incarnations(gone)
        agent = make_agent(settings, meta, store, clock=clock)
        produced = asyncio.ensure_future(agent.produce([("t", 0, batch())]))
        await until(lambda: len(meta.requests) >= 2)  # resent while the deadline is ahead
        clock.advance(settings.metadata_retry_s)
        return await asyncio.wait_for(produced, ANSWER_S)

    results = run(scenario())
    assert isinstance(results[0].error, Unavailable)
    assert "gave up" in str(results[0].error)


def test_agent_buffer_is_bounded(tmp_path):
    settings = agent_settings(tmp_path, flush_bytes=1024, agent_buffer_bytes=2000)
    entered, release = threading.Event(), threading.Event()

    def held(_delay_s):  # a journal PUT waits here: the commit hangs, bytes stay in flight
        entered.set()
        release.wait(ANSWER_S)

    store = FaultyStore(MemoryStore(), rng=random.Random(0), sleep=held)
    big = batch(b"x" * 900)

    async def scenario():
        meta = await topic_service(settings, store)
        agent = make_agent(settings, meta, store)
        store.configure({"latency_s": 1.0, "key_prefix": JOURNAL_PREFIX})
        first = asyncio.ensure_future(agent.produce([("t", 0, big)]))
        second = asyncio.ensure_future(agent.produce([("t", 0, big)]))
        try:
            assert await asyncio.to_thread(entered.wait, ANSWER_S)
            third = await agent.produce([("t", 0, big)])  # over 2000 bytes held: refused now
        finally:
            store.configure({"reset": True})
            release.set()
        return await first, await second, third

    first, second, third = run(scenario())
    assert first[0].error is None
    assert second[0].error is None
    assert isinstance(third[0].error, Unavailable)
    assert "agent_buffer_bytes" in str(third[0].error)


def test_agent_buffers_a_producers_calls_in_order_and_refuses_overtaken_ones(tmp_path, monkeypatch):
    import ray_stream.agent.call_order as call_order

    monkeypatch.setattr(call_order, "SESSION_GAP_TIMEOUT_S", 0.3)
    settings = agent_settings(tmp_path)
    store = MemoryStore()

    async def turns():
        for _ in range(10):
            await asyncio.sleep(0)

    async def scenario():
        agent = make_agent(settings, await topic_service(settings, store), store)
        # call 1 arrives before call 0: it waits for 0, then both land in order
        second = asyncio.ensure_future(agent.produce([("t", 0, batch(b"1"))], session="p/0", seq=1))
        await turns()
        assert not second.done()
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
        await turns()
        await agent.produce([("t", 0, batch(b"q"))], session="q/1", seq=0)
        overtaken = await waiting
        return first, second, third, late, newer, older, overtaken

    first, second, third, late, newer, older, overtaken = run(scenario())
    assert (
        first[0].base_offset < second[0].base_offset < third[0].base_offset < newer[0].base_offset
    )
    assert isinstance(late[0].error, Unavailable)
    assert "successor" in str(late[0].error)
    assert isinstance(older[0].error, Unavailable)
    assert "older session" in str(older[0].error)
    assert isinstance(overtaken[0].error, Unavailable)


def test_restarted_agent_listens_on_the_port_its_predecessor_registered(tmp_path, monkeypatch):
    """The Ray shell's listener (``AgentActor``), with the real metadata service in
    process as its metadata client: no Ray is started."""
    import socket

    import ray_stream.actors.agent as agent_module
    from ray_stream.actors.agent import AgentActor

    # agent._restarted() asks ray.get_runtime_context(), which starts Ray when it is not
    # running; outside an actor the answer is "not restarted".
    monkeypatch.setattr(agent_module, "_restarted", lambda: False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    settings = agent_settings(tmp_path, kafka_port=-1, linger_ms=0)

    async def scenario():
        meta = make_meta(settings, store=MemoryStore())
        await meta.register_agent(0, BrokerInfo(0, "127.0.0.1", free))  # the last incarnation
        agent = AgentActor(settings, 0, autostart=False, metadata=meta)
        address = await agent.start()
        assert await agent.start() == address  # idempotent
        await agent.stop()
        return address, await meta.agent_address(0)

    address, registered = run(scenario())
    assert (address.host, address.port) == ("127.0.0.1", free)
    assert registered == address
