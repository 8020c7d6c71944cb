"""MetadataActor instantiated directly (no Ray) on a temporary data_dir."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from ray_stream.actors.metadata import MetadataActor
from ray_stream.actors.metadata_store import MetadataStore
from ray_stream.config import Settings
from ray_stream.core.types import BatchEntry, CommitRequest, CommittedOffset
from ray_stream.errors import (
    InvalidPartitions,
    InvalidTopic,
    OffsetOutOfRange,
    StorageUnavailable,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def entry(partition=0, count=1, *, topic="t", pid=-1, epoch=-1, seq=-1, ts=1000, length=100):
    return BatchEntry(topic, partition, 0, length, count, ts, ts, pid, epoch, seq)


def request(*entries, key="segments/a.arrow"):
    return CommitRequest(key, sum(e.length for e in entries), tuple(entries))


def run(coro):
    return asyncio.run(coro)


def test_create_describe_list_delete_topic(settings):
    async def scenario():
        actor = MetadataActor(settings)
        created = await actor.create_topic("t", 2, {"cleanup.policy": "delete"})
        assert (created.name, created.partitions, len(created.topic_id)) == ("t", 2, 32)
        assert [p.high_watermark for p in created.partition_info] == [0, 0]
        assert await actor.describe_topic("t") == created
        grown = await actor.create_partitions("t", 3)
        assert grown.partitions == 3
        assert [t.name for t in await actor.list_topics()] == ["t"]
        await actor.delete_topic("t")
        assert await actor.list_topics() == []
        with pytest.raises(UnknownTopicOrPartition):
            await actor.describe_topic("t")

    run(scenario())


def test_errors_are_raised_as_ray_stream_errors(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        with pytest.raises(InvalidTopic):
            await actor.create_topic("bad name", 1)
        with pytest.raises(InvalidPartitions):
            await actor.create_topic("u", 0)
        with pytest.raises(TopicAlreadyExists):
            await actor.create_topic("t", 1)
        with pytest.raises(UnknownTopicOrPartition):
            await actor.delete_topic("nope")
        with pytest.raises(OffsetOutOfRange):
            await actor.locate("t", 0, 1, 1000)

    run(scenario())


def test_commit_then_locate_and_list_offset(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        results = await actor.commit(request(entry(0, 3, ts=100), entry(0, 2, ts=200)))
        assert [r.base_offset for r in results] == [0, 3]
        located = await actor.locate("t", 0, 3, 1 << 20)
        assert [b.base_offset for b in located.batches] == [3]
        assert located.high_watermark == 5
        assert await actor.list_offset("t", 0, 150) == (3, 200)
        assert await actor.list_offset("t", 0, -1) == (5, -1)

    run(scenario())


def test_concurrent_commits_share_transactions(settings):
    calls = 40

    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        before = await actor.stats()
        results = await asyncio.gather(
            *(actor.commit(request(entry(0, 2), key=f"segments/{i}.arrow")) for i in range(calls))
        )
        after = await actor.stats()
        return results, before, after

    results, before, after = run(scenario())
    assert sorted(r[0].base_offset for r in results) == list(range(0, 2 * calls, 2))
    assert after["transactions"] - before["transactions"] < calls
    assert after["commit_rounds"] < calls
    assert after["commit_requests"] == calls
    assert after["batches_committed"] == calls


def test_commits_arriving_during_a_write_form_the_next_round(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        real_persist = actor._store.persist
        entered, release = threading.Event(), threading.Event()

        def gated_persist(changes):
            entered.set()
            release.wait(10)
            real_persist(changes)

        actor._store.persist = gated_persist
        first = asyncio.ensure_future(actor.commit(request(entry(0, 1))))
        assert await asyncio.to_thread(entered.wait, 10)
        later = [asyncio.ensure_future(actor.commit(request(entry(0, 1)))) for _ in range(3)]
        await asyncio.sleep(0)  # let the later commits enqueue while the write is blocked
        assert (await actor.ping())["pending_commits"] == 3
        release.set()
        results = [await first] + [await f for f in later]
        return results, await actor.stats()

    results, stats = run(scenario())
    assert [r[0].base_offset for r in results] == [0, 1, 2, 3]
    assert stats["commit_rounds"] == 2
    assert stats["max_round_requests"] == 3


def test_thousand_batch_round_is_one_transaction(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 8)
        before = await actor.stats()
        entries = [entry(i % 8, 1, pid=i, epoch=0, seq=0) for i in range(1000)]
        results = await actor.commit(request(*entries))
        return results, before, await actor.stats()

    results, before, after = run(scenario())
    assert all(r.error is None for r in results)
    assert after["transactions"] - before["transactions"] == 1
    assert after["batches_committed"] == 1000


def test_restart_restores_everything(settings):
    async def first_life():
        actor = MetadataActor(settings)
        info = await actor.create_topic("t", 2, {"retention.ms": "60000"})
        pid, epoch = await actor.init_producer_id()
        tx = await actor.init_producer_id("tx")
        await actor.commit(request(entry(0, 3), entry(1, 2, pid=pid, epoch=epoch, seq=0)))
        await actor.commit(
            request(entry(0, 4, pid=pid, epoch=epoch, seq=0), key="segments/b.arrow")
        )
        await actor.commit_offsets("g", {("t", 0): CommittedOffset(3, "meta", 1)})
        return info, (pid, epoch), tx

    async def second_life(pid, epoch):
        actor = MetadataActor(settings)
        info = await actor.describe_topic("t")
        located = await actor.locate("t", 0, 0, 1 << 20)
        dup = await actor.commit(request(entry(1, 2, pid=pid, epoch=epoch, seq=0)))
        nxt = await actor.commit(request(entry(1, 1, pid=pid, epoch=epoch, seq=2)))
        offsets = await actor.fetch_offsets("g")
        new_pid = await actor.init_producer_id()
        tx = await actor.init_producer_id("tx")
        return info, located, dup, nxt, offsets, new_pid, tx, await actor.ping()

    info, (pid, epoch), tx1 = run(first_life())
    info2, located, dup, nxt, offsets, new_pid, tx2, ping = run(second_life(pid, epoch))
    assert (info2.topic_id, info2.partitions, info2.config) == (info.topic_id, 2, info.config)
    assert [p.high_watermark for p in info2.partition_info] == [7, 2]
    assert [(b.segment_key, b.base_offset) for b in located.batches] == [
        ("segments/a.arrow", 0),
        ("segments/b.arrow", 3),
    ]
    assert (dup[0].base_offset, dup[0].duplicate) == (0, True)
    assert nxt[0].base_offset == 2
    assert offsets == {("t", 0): CommittedOffset(3, "meta", 1)}
    assert new_pid[0] > max(pid, tx1[0])
    assert tx2 == (tx1[0], tx1[1] + 1)
    assert ping["segments"] == 2


def test_failed_persist_is_invisible_and_answers_every_caller(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        real_persist = actor._store.persist

        def broken(changes):
            raise sqlite3.OperationalError("disk I/O error")

        actor._store.persist = broken
        outcomes = await asyncio.gather(
            *(actor.commit(request(entry(0, 2, pid=5, epoch=0, seq=0))) for _ in range(3)),
            actor.create_topic("u", 1),
            return_exceptions=True,
        )
        hwm = (await actor.describe_topic("t")).partition_info[0].high_watermark
        empty = await actor.locate("t", 0, 0, 1000)
        topics = [t.name for t in await actor.list_topics()]
        actor._store.persist = real_persist
        retried = await actor.commit(request(entry(0, 2, pid=5, epoch=0, seq=0)))
        return outcomes, hwm, empty, topics, retried

    outcomes, hwm, empty, topics, retried = run(scenario())
    assert all(isinstance(o, StorageUnavailable) for o in outcomes)
    assert hwm == 0
    assert empty.batches == ()
    assert topics == ["t"]
    assert (retried[0].base_offset, retried[0].duplicate) == (0, False)
    reloaded = MetadataStore.open(settings).load()
    assert reloaded.partition_info("t", 0).high_watermark == 2
    assert [t.name for t in reloaded.list_topics()] == ["t"]


def test_wait_for_data_times_out_without_commits(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        return await actor.wait_for_data([("t", 0, 0)], 0.05)

    assert run(scenario()) is False


def test_wait_for_data_is_woken_by_a_commit(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 2)
        waiter = asyncio.ensure_future(actor.wait_for_data([("t", 0, 0), ("t", 1, 0)], 30))
        await asyncio.sleep(0)
        assert not waiter.done()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await actor.commit(request(entry(1, 1)))
        woke = await asyncio.wait_for(waiter, 5)
        return woke, loop.time() - started

    woke, elapsed = run(scenario())
    assert woke is True
    assert elapsed < 5


def test_wait_for_data_returns_at_once_when_data_or_error_is_there(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        await actor.commit(request(entry(0, 2)))
        return (
            await actor.wait_for_data([("t", 0, 1)], 30),
            await actor.wait_for_data([("nope", 0, 0)], 30),
            await actor.wait_for_data([("t", 0, 2)], 0),
        )

    assert run(scenario()) == (True, True, False)


def test_group_offsets_round_trip_and_delete(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 2)
        await actor.commit_offsets(
            "g", {("t", 0): CommittedOffset(4), ("t", 1): CommittedOffset(9)}
        )
        some = await actor.fetch_offsets("g", [("t", 1)])
        await actor.delete_group_offsets("g")
        return some, await actor.fetch_offsets("g")

    some, after = run(scenario())
    assert some == {("t", 1): CommittedOffset(9)}
    assert after == {}


def test_ping_and_stats_report_counts(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 3)
        await actor.commit(request(entry(0, 1), entry(2, 1)))
        return await actor.ping(), await actor.stats()

    ping, stats = run(scenario())
    assert (ping["ok"], ping["topics"], ping["partitions"], ping["batches"]) == (True, 1, 3, 2)
    assert (stats["commit_rounds"], stats["batches_committed"]) == (1, 2)


def test_settings_are_returned_and_close_stops_writes(settings):
    async def scenario():
        actor = MetadataActor(settings)
        await actor.create_topic("t", 1)
        returned = await actor.settings()
        await actor.close()
        with pytest.raises(StorageUnavailable):
            await actor.commit(request(entry(0, 1)))
        with pytest.raises(StorageUnavailable):
            await actor.create_topic("u", 1)
        return returned, await actor.describe_topic("t")

    returned, info = run(scenario())
    assert returned == settings
    assert info.partition_info[0].high_watermark == 0
    assert MetadataStore.open(settings).load().counts()["topics"] == 1
