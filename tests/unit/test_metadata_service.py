"""MetadataService (metadata/service.py) used in-process, no Ray, on a temporary data_dir."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import threading
from dataclasses import replace

import pytest

from ray_stream.config import Settings
from ray_stream.core.group import GroupDeletion
from ray_stream.core.keys import JOURNAL_PREFIX
from ray_stream.core.metadata_api import (
    CommitRequest,
    LocateRequest,
    OffsetAnswer,
    OffsetCommitRequest,
    ProducerIdentity,
)
from ray_stream.core.types import BatchEntry, CommittedOffset, TopicPartition
from ray_stream.errors import (
    InvalidPartitions,
    InvalidRequest,
    InvalidTopic,
    OffsetOutOfRange,
    StorageUnavailable,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from ray_stream.storage.faults import FaultyStore
from ray_stream.storage.memory import MemoryStore
from tests.fakes import make_meta

LONG_POLL_MS = 60_000  # far longer than any test may take: an answer before it is a wake-up
ANSWER_S = 10  # how long a test waits for an answer that must come (a hang fails, not stalls)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), orphan_sweep_interval_s=0)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


_keys = itertools.count()


def entry(partition=0, count=1, *, topic="t", pid=-1, epoch=-1, seq=-1, ts=1000, length=100):
    return BatchEntry(topic, partition, 0, length, count, ts, ts, pid, epoch, seq)


def request(*entries, key=None):
    """One segment's commit, as an agent sends it: its batches lie one after another in
    the object, and each new segment has a new key (a key names one immutable object, so
    the service answers a batch of a key it already committed as a duplicate)."""
    placed, position = [], 0
    for e in entries:
        placed.append(replace(e, position=position))
        position += e.length
    return CommitRequest.of(key or f"segments/{next(_keys)}.arrow", position, placed)


async def commit(service, *requests):
    """Commit ``requests`` in one call; the batch results of each (raises a segment error)."""
    answer = await service.commit(list(requests))
    return [segment.results() for segment in answer.segments]


async def commit_one(service, req):
    (results,) = await commit(service, req)
    return results


def at(topic, partition, offset, max_bytes=1 << 20):
    return LocateRequest(((topic, partition, offset, max_bytes),))


def run(coro):
    return asyncio.run(coro)


def test_create_describe_list_delete_topic(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        created = await service.create_topic("t", 2, {"cleanup.policy": "delete"})
        assert (created.name, created.partitions, len(created.topic_id)) == ("t", 2, 32)
        assert [p.high_watermark for p in created.partition_info] == [0, 0]
        assert await service.describe_topic("t") == created
        grown = await service.create_partitions("t", 3)
        assert grown.partitions == 3
        assert [t.name for t in await service.list_topics()] == ["t"]
        await service.delete_topic("t")
        assert await service.list_topics() == []
        with pytest.raises(UnknownTopicOrPartition):
            await service.describe_topic("t")

    run(scenario())


def test_whole_call_errors_are_raised_and_per_item_errors_answered(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        with pytest.raises(InvalidTopic):
            await service.create_topic("bad name", 1)
        with pytest.raises(InvalidPartitions):
            await service.create_topic("u", 0)
        with pytest.raises(TopicAlreadyExists):
            await service.create_topic("t", 1)
        with pytest.raises(UnknownTopicOrPartition):
            await service.delete_topic("nope")
        located = await service.locate(at("t", 0, 1, 1000))
        (answer,) = (await service.commit([request(entry(0), entry(0, topic="nope"))])).segments
        offsets = await service.list_offsets([("t", 0, -7), ("t", 0, -1)])
        return located, answer, offsets

    located, answer, offsets = run(scenario())
    assert isinstance(located.errors[0], OffsetOutOfRange)
    assert located.batches(0) == []
    assert answer.error is None
    assert [r.base_offset for r in answer.results()] == [0, -1]
    assert set(answer.errors) == {1}
    assert isinstance(answer.errors[1], UnknownTopicOrPartition)
    assert isinstance(offsets[0].error, InvalidRequest)
    assert offsets[1] == OffsetAnswer(1, -1)


def test_commit_then_locate_and_list_offsets(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        results = await commit_one(service, request(entry(0, 3, ts=100), entry(0, 2, ts=200)))
        assert [r.base_offset for r in results] == [0, 3]
        located = await service.locate(at("t", 0, 3))
        assert [b.base_offset for b in located.batches(0)] == [3]
        assert located.high_watermark[0] == 5
        answers = await service.list_offsets([("t", 0, 150), ("t", 0, -1), ("t", 0, -3)])
        assert answers == [OffsetAnswer(3, 200), OffsetAnswer(5, -1), OffsetAnswer(4, 200)]

    run(scenario())


def test_locate_answers_many_partitions_in_one_call(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 3)
        await commit_one(service, request(entry(0, 2), entry(2, 1), entry(0, 1)))
        return await service.locate(
            LocateRequest((("t", 0, 0, 1 << 20), ("t", 1, 0, 1 << 20), ("t", 2, 0, 1 << 20)))
        )

    located = run(scenario())
    assert [[b.base_offset for b in located.batches(i)] for i in range(3)] == [[0, 2], [], [0]]
    assert list(located.high_watermark) == [3, 0, 1]
    assert located.errors == {}


def test_concurrent_commits_share_transactions(settings, store):
    calls = 40

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        before = await service.stats()
        results = await asyncio.gather(
            *(
                commit_one(service, request(entry(0, 2), key=f"segments/{i}.arrow"))
                for i in range(calls)
            )
        )
        after = await service.stats()
        return results, before, after

    results, before, after = run(scenario())
    assert sorted(r[0].base_offset for r in results) == list(range(0, 2 * calls, 2))
    assert after["transactions"] - before["transactions"] < calls
    assert after["commit_rounds"] < calls
    assert after["commit_requests"] == calls
    assert after["batches_committed"] == calls


def test_commits_arriving_during_a_write_form_the_next_round(settings):
    entered, release = threading.Event(), threading.Event()

    def held(_delay_s):  # the journal PUT of the first round waits here
        entered.set()
        release.wait(ANSWER_S)

    store = FaultyStore(MemoryStore(), rng=random.Random(0), sleep=held)

    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        store.configure({"latency_s": 1.0, "key_prefix": JOURNAL_PREFIX})
        first = asyncio.ensure_future(commit_one(service, request(entry(0, 1))))
        assert await asyncio.to_thread(entered.wait, ANSWER_S)
        later = [asyncio.ensure_future(commit_one(service, request(entry(0, 1)))) for _ in range(3)]
        await asyncio.sleep(0)  # let the later commits enqueue while the write is held
        pending = (await service.ping())["pending_commits"]
        store.configure({"reset": True})
        release.set()
        results = [await first] + [await f for f in later]
        return pending, results, await service.stats()

    pending, results, stats = run(scenario())
    assert pending == 3
    assert [r[0].base_offset for r in results] == [0, 1, 2, 3]
    assert stats["commit_rounds"] == 2
    assert stats["max_round_requests"] == 3


def test_several_segments_of_one_call_are_one_round_in_order(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        before = await service.stats()
        results = await commit(
            service,
            request(entry(0, 2), key="segments/a.arrow"),
            request(entry(0, 3), key="segments/b.arrow"),
        )
        return results, before, await service.stats()

    results, before, after = run(scenario())
    assert [[r.base_offset for r in rs] for rs in results] == [[0], [2]]
    assert after["commit_rounds"] - before["commit_rounds"] == 1
    assert after["journal_puts"] - before["journal_puts"] == 1


def test_thousand_batch_round_is_one_transaction(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 8)
        before = await service.stats()
        entries = [entry(i % 8, 1, pid=i, epoch=0, seq=0) for i in range(1000)]
        results = await commit_one(service, request(*entries))
        return results, before, await service.stats()

    results, before, after = run(scenario())
    assert len(results) == 1000
    assert all(r.error is None for r in results)
    assert after["transactions"] - before["transactions"] == 1
    assert after["batches_committed"] == 1000


def test_restart_restores_everything(settings, store):
    async def first_life():
        service = make_meta(settings, store=store)
        info = await service.create_topic("t", 2, {"retention.ms": "60000"})
        producer = await service.init_producer_id()
        pid, epoch = producer.producer_id, producer.epoch
        tx = await service.init_producer_id("tx")
        await commit_one(
            service,
            request(entry(0, 3), entry(1, 2, pid=pid, epoch=epoch, seq=0), key="segments/a.arrow"),
        )
        await commit_one(
            service, request(entry(0, 4, pid=pid, epoch=epoch, seq=0), key="segments/b.arrow")
        )
        await service.commit_offsets(
            OffsetCommitRequest("g", {TopicPartition("t", 0): CommittedOffset(3, "meta", 1)})
        )
        return info, producer, tx

    async def second_life(producer):
        pid, epoch = producer.producer_id, producer.epoch
        service = make_meta(settings, store=store)
        info = await service.describe_topic("t")
        located = await service.locate(at("t", 0, 0))
        dup = await commit_one(
            service, request(entry(1, 2, pid=pid, epoch=epoch, seq=0), key="segments/d.arrow")
        )
        nxt = await commit_one(
            service, request(entry(1, 1, pid=pid, epoch=epoch, seq=2), key="segments/c.arrow")
        )
        offsets = await service.fetch_offsets("g")
        new_pid = await service.init_producer_id()
        tx = await service.init_producer_id("tx")
        return info, located, dup, nxt, offsets, new_pid, tx, await service.ping()

    info, producer, tx1 = run(first_life())
    info2, located, dup, nxt, offsets, new_pid, tx2, ping = run(second_life(producer))
    assert (info2.topic_id, info2.partitions, info2.config) == (info.topic_id, 2, info.config)
    assert [p.high_watermark for p in info2.partition_info] == [7, 2]
    assert [(b.segment_key, b.base_offset) for b in located.batches(0)] == [
        ("segments/a.arrow", 0),
        ("segments/b.arrow", 3),
    ]
    assert (dup[0].base_offset, dup[0].duplicate) == (0, True)
    assert nxt[0].base_offset == 2
    assert offsets == {TopicPartition("t", 0): CommittedOffset(3, "meta", 1)}
    assert new_pid.producer_id > max(producer.producer_id, tx1.producer_id)
    assert tx2 == ProducerIdentity(tx1.producer_id, tx1.epoch + 1)
    assert ping["segments"] == 3  # a, b and c: d holds only a duplicate, never referenced


def test_failed_persist_is_invisible_and_answers_every_caller(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        cache = service._writer._cache  # the SQLite cache: no public fault hook for it
        real_persist = cache.persist

        def broken(changes):
            raise sqlite3.OperationalError("disk I/O error")

        cache.persist = broken
        resent = request(entry(0, 2, pid=5, epoch=0, seq=0))
        outcomes = await asyncio.gather(
            *(service.commit([resent]) for _ in range(3)),
            service.create_topic("u", 1),
            return_exceptions=True,
        )
        hwm = (await service.describe_topic("t")).partition_info[0].high_watermark
        empty = await service.locate(at("t", 0, 0, 1000))
        topics = [t.name for t in await service.list_topics()]
        cache.persist = real_persist
        retried = await commit_one(service, resent)  # the agent resends the same segment
        await service.close()
        again = make_meta(settings, store=store)
        reloaded = (await again.describe_topic("t"), await again.list_topics())
        return outcomes, hwm, empty, topics, retried, reloaded

    outcomes, hwm, empty, topics, retried, (info, listed) = run(scenario())
    segment_errors = [answer.segments[0].error for answer in outcomes[:3]]
    assert all(isinstance(e, StorageUnavailable) for e in [*segment_errors, outcomes[3]])
    assert hwm == 0
    assert empty.batches(0) == []
    assert topics == ["t"]
    assert (retried[0].base_offset, retried[0].duplicate) == (0, False)
    assert info.partition_info[0].high_watermark == 2
    assert [t.name for t in listed] == ["t"]


def test_long_poll_answers_empty_when_its_time_is_up(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        polled = LocateRequest((("t", 0, 0, 1 << 20),), wait_ms=20)
        return await asyncio.wait_for(service.locate(polled), ANSWER_S)

    answer = run(scenario())
    assert answer.errors == {}
    assert answer.batches(0) == []
    assert answer.high_watermark[0] == 0


def test_long_poll_is_woken_by_a_commit(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 2)
        polled = LocateRequest((("t", 0, 0, 1 << 20), ("t", 1, 0, 1 << 20)), wait_ms=LONG_POLL_MS)
        waiter = asyncio.ensure_future(service.locate(polled))
        await asyncio.sleep(0)
        assert not waiter.done()
        await commit_one(service, request(entry(1, 1)))
        # answered because of the commit, long before the poll's own bound
        return await asyncio.wait_for(waiter, ANSWER_S)

    answer = run(scenario())
    assert answer.batches(0) == []
    assert [b.base_offset for b in answer.batches(1)] == [0]


def test_long_poll_waits_until_min_bytes_are_committed(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        polled = LocateRequest((("t", 0, 0, 1 << 20),), wait_ms=LONG_POLL_MS, min_bytes=150)
        waiter = asyncio.ensure_future(service.locate(polled))
        await commit_one(service, request(entry(0, 1, length=100)))
        for _ in range(20):  # the woken poll re-checks, finds 100 < 150 bytes, waits again
            await asyncio.sleep(0)
        early = waiter.done()
        await commit_one(service, request(entry(0, 1, length=100), key="segments/b.arrow"))
        return early, await asyncio.wait_for(waiter, ANSWER_S)

    early, answer = run(scenario())
    assert early is False
    assert [b.base_offset for b in answer.batches(0)] == [0, 1]


def test_long_poll_answers_at_once_when_data_or_an_error_is_there(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        await commit_one(service, request(entry(0, 2)))
        return (
            await asyncio.wait_for(
                service.locate(LocateRequest((("t", 0, 1, 1 << 20),), wait_ms=LONG_POLL_MS)),
                ANSWER_S,
            ),
            await asyncio.wait_for(
                service.locate(LocateRequest((("nope", 0, 0, 1 << 20),), wait_ms=LONG_POLL_MS)),
                ANSWER_S,
            ),
            await service.locate(LocateRequest((("t", 0, 2, 1 << 20),), wait_ms=0)),
        )

    data, error, nothing = run(scenario())
    assert [b.base_offset for b in data.batches(0)] == [0]
    assert isinstance(error.errors[0], UnknownTopicOrPartition)
    assert (nothing.errors, nothing.batches(0)) == ({}, [])


def test_long_poll_of_no_positions_answers_at_once(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        polled = LocateRequest((), wait_ms=LONG_POLL_MS)
        return await asyncio.wait_for(service.locate(polled), ANSWER_S)

    answer = run(scenario())
    assert (len(answer.high_watermark), len(answer.refs), answer.errors) == (0, 0, {})


def test_group_offsets_round_trip_and_delete(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 2)
        await service.commit_offsets(
            OffsetCommitRequest(
                "g",
                {
                    TopicPartition("t", 0): CommittedOffset(4),
                    TopicPartition("t", 1): CommittedOffset(9),
                },
            )
        )
        some = await service.fetch_offsets("g", [TopicPartition("t", 1), TopicPartition("t", 7)])
        listed = await service.list_groups()
        deleted = await service.delete_groups(["g"])
        return some, listed, deleted, await service.fetch_offsets("g"), await service.list_groups()

    some, listed, deleted, after, listed_after = run(scenario())
    assert some == {TopicPartition("t", 1): CommittedOffset(9)}
    # known by its offsets alone (a "simple" commit: no members, no protocol)
    assert [(g.group_id, g.state) for g in listed] == [("g", "Empty")]
    assert deleted == [GroupDeletion("g", None)]
    assert after == {}
    assert listed_after == []


def test_offset_commit_for_an_unknown_partition_commits_nothing(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        with pytest.raises(UnknownTopicOrPartition):
            await service.commit_offsets(
                OffsetCommitRequest(
                    "g",
                    {
                        TopicPartition("t", 0): CommittedOffset(1),
                        TopicPartition("t", 5): CommittedOffset(1),
                    },
                )
            )
        return await service.fetch_offsets("g")

    assert run(scenario()) == {}


def test_ping_and_stats_report_counts(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 3)
        await commit_one(service, request(entry(0, 1), entry(2, 1)))
        return await service.ping(), await service.stats()

    ping, stats = run(scenario())
    assert (ping["ok"], ping["topics"], ping["partitions"], ping["batches"]) == (True, 1, 3, 2)
    assert ping["epoch"] == stats["epoch"] == 1
    assert (stats["commit_rounds"], stats["batches_committed"]) == (1, 2)


def test_settings_are_returned_and_close_stops_writes(settings, store):
    async def scenario():
        service = make_meta(settings, store=store)
        await service.create_topic("t", 1)
        returned = await service.settings()
        await service.close()
        with pytest.raises(StorageUnavailable):
            await service.commit([request(entry(0, 1))])
        with pytest.raises(StorageUnavailable):
            await service.create_topic("u", 1)
        info = await service.describe_topic("t")
        again = make_meta(settings, store=store)
        return returned, info, await again.list_topics()

    returned, info, topics = run(scenario())
    assert returned == settings
    assert info.partition_info[0].high_watermark == 0
    assert [t.name for t in topics] == ["t"]
