"""CommitQueue: flush order, grouping only when behind, resends (agent/commit_queue.py).

The queue sends to the real, Ray-free ``MetadataService`` (``tests/fakes.make_meta``);
"the metadata actor is away" is a closed incarnation, a restart is a second incarnation
over the same object store. Time comes from a ``ManualClock``: a test that needs the
queue to give up moves it past the deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from ray_stream.agent.commit_queue import CommitQueue
from ray_stream.clock import ManualClock
from ray_stream.config import Settings
from ray_stream.core.keys import new_segment_key
from ray_stream.core.metadata_api import CommitAnswer, CommitRequest
from ray_stream.core.types import BatchEntry
from ray_stream.errors import InvalidRequest, StorageUnavailable, Unavailable
from ray_stream.storage.memory import MemoryStore
from tests.fakes import make_meta

LONG_S = 60.0  # a wait no test may sit out: an answer before it proves it was not waited
ANSWER_S = 10.0  # the most a test waits for an answer that must come


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), orphan_sweep_interval_s=0)


def request(key: str) -> CommitRequest:
    entry = BatchEntry("t", 0, 0, 10, 1, 0, 0)
    return CommitRequest.of(f"segments/{key}.arrow", 10, [entry])


class Recorder:
    """Sends each call to the next service of ``route`` (the last one stays), recording
    the segment names of every call."""

    def __init__(self, *route) -> None:
        self.route = list(route)
        self.calls: list[list[str]] = []

    async def send(self, requests: list[CommitRequest]) -> CommitAnswer:
        self.calls.append([r.segment_key.split("/")[1].split(".")[0] for r in requests])
        service = self.route.pop(0) if len(self.route) > 1 else self.route[0]
        return await service.commit(requests)


async def started(settings, store=None, clock=None):
    service = make_meta(settings, store=store or MemoryStore(), clock=clock)
    await service.create_topic("t", 1)
    return service


def make(send, clock, *, wait_s: float = 1.0, retry_s: float = 5.0) -> CommitQueue:
    return CommitQueue(send, clock=clock, wait_s=wait_s, retry_s=retry_s)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(ANSWER_S):
        while not predicate():
            await asyncio.sleep(0.001)


def offsets(outcome) -> list[int]:
    assert not isinstance(outcome, Exception), outcome
    return [r.base_offset for r in outcome]


def test_a_lone_commit_is_sent_at_once(settings):
    async def scenario():
        clock = ManualClock()
        meta = Recorder(await started(settings))
        queue = make(meta.send, clock, wait_s=LONG_S)
        place = queue.reserve()
        # answered long before wait_s: no wait for a flush that never started
        out = await asyncio.wait_for(queue.commit(place, request("a"), give_up=LONG_S), ANSWER_S)
        return meta.calls, out

    calls, out = asyncio.run(scenario())
    assert calls == [["a"]]
    assert offsets(out) == [0]


def test_a_flush_behind_is_waited_for_and_both_go_in_one_call_in_order(settings):
    async def scenario():
        clock = ManualClock()
        meta = Recorder(await started(settings))
        queue = make(meta.send, clock, wait_s=LONG_S)
        first, second = queue.reserve(), queue.reserve()
        one = asyncio.create_task(queue.commit(first, request("a"), give_up=LONG_S))
        for _ in range(10):  # the committer runs and waits: the second PUT is still running
            await asyncio.sleep(0)
        calls_meanwhile = list(meta.calls)
        two = asyncio.create_task(queue.commit(second, request("b"), give_up=LONG_S))
        done = await asyncio.wait_for(asyncio.gather(one, two), ANSWER_S)
        return calls_meanwhile, meta.calls, done, queue.stats

    calls_meanwhile, calls, (one, two), stats = asyncio.run(scenario())
    assert calls_meanwhile == []
    assert calls == [["a", "b"]]
    assert (offsets(one), offsets(two)) == ([0], [1])
    assert (stats.calls, stats.segments, stats.max_group) == (1, 2, 2)


def test_a_small_segment_is_not_held_back_for_the_flush_behind_it(settings):
    """A lightly loaded agent's linger-bound segment goes at once (its producers wait for
    nothing); only a big one, a sign of backlog, waits to share the journal PUT."""

    async def scenario():
        meta = Recorder(await started(settings))
        queue = CommitQueue(
            meta.send, clock=ManualClock(), wait_s=LONG_S, retry_s=5.0, group_min_bytes=11
        )
        first, second = queue.reserve(), queue.reserve()  # the second PUT is running
        one = await asyncio.wait_for(  # answered long before wait_s
            queue.commit(first, request("a"), give_up=LONG_S), ANSWER_S
        )
        calls_then = list(meta.calls)
        two = await queue.commit(second, request("b"), give_up=LONG_S)
        return calls_then, meta.calls, one, two

    calls_then, calls, one, two = asyncio.run(scenario())
    assert calls_then == [["a"]]  # request("a") is 10 bytes, under group_min_bytes
    assert calls == [["a"], ["b"]]
    assert (offsets(one), offsets(two)) == ([0], [1])


def test_the_wait_for_a_flush_behind_is_bounded(settings):
    async def scenario():
        clock = ManualClock()
        meta = Recorder(await started(settings))
        # asyncio's timer bounds the wait (a short one: the ManualClock does not move)
        queue = make(meta.send, clock, wait_s=0.01)
        first, second = queue.reserve(), queue.reserve()
        one = await asyncio.wait_for(  # the second flush never gets ready meanwhile
            queue.commit(first, request("a"), give_up=LONG_S), ANSWER_S
        )
        calls_then = list(meta.calls)
        two = await queue.commit(second, request("b"), give_up=LONG_S)
        return calls_then, meta.calls, one, two

    calls_then, calls, one, two = asyncio.run(scenario())
    assert calls_then == [["a"]]
    assert calls == [["a"], ["b"]]
    assert (offsets(one), offsets(two)) == ([0], [1])


def test_a_failed_put_is_answered_in_its_turn_and_never_sent(settings):
    async def scenario():
        meta = Recorder(await started(settings))
        queue = make(meta.send, ManualClock(), wait_s=LONG_S)
        places = [queue.reserve() for _ in range(3)]
        broken = StorageUnavailable("PUT failed")
        outs = await asyncio.wait_for(
            asyncio.gather(
                queue.commit(places[0], request("a"), give_up=LONG_S),
                queue.commit(places[1], broken),
                queue.commit(places[2], request("c"), give_up=LONG_S),
            ),
            ANSWER_S,
        )
        return meta.calls, outs, broken

    calls, outs, broken = asyncio.run(scenario())
    assert calls == [["a"], ["c"]]  # the group stops before the failed flush
    assert outs[1] is broken
    assert (offsets(outs[0]), offsets(outs[2])) == ([0], [1])


def test_a_group_is_resent_while_the_metadata_actor_is_away(settings):
    async def scenario():
        store = MemoryStore()
        gone = await started(settings, store)
        await gone.close()  # its calls raise StorageUnavailable until the next one runs
        back = make_meta(settings, store=store)
        meta = Recorder(gone, back)
        queue = make(meta.send, ManualClock())
        first, second = queue.reserve(), queue.reserve()
        outs = await asyncio.wait_for(
            asyncio.gather(
                queue.commit(first, request("a"), give_up=LONG_S),
                queue.commit(second, request("b"), give_up=LONG_S),
            ),
            ANSWER_S,
        )
        return meta.calls, outs, queue.stats, queue.epoch

    calls, outs, stats, epoch = asyncio.run(scenario())
    assert calls == [["a", "b"], ["a", "b"]]
    assert [offsets(o) for o in outs] == [[0], [1]]
    assert stats.failures == {"commit": 1}
    assert epoch == 2


def test_only_the_refused_requests_of_a_group_are_resent(settings):
    """A segment older than half the orphan grace is refused (Unavailable) on its own;
    the fresh one of the same call is answered and never sent again."""
    clock = ManualClock()
    rand = random.Random(4)
    fresh = new_segment_key(clock.now_ms(), rand)
    stale = new_segment_key(clock.now_ms() - 3_600_000, rand)

    def named(key):
        return CommitRequest.of(key, 10, [BatchEntry("t", 0, 0, 10, 1, 0, 0)])

    async def scenario():
        service = await started(settings, clock=clock)
        meta = Recorder(service)
        queue = make(meta.send, clock, retry_s=LONG_S)
        first, second = queue.reserve(), queue.reserve()
        outs = asyncio.gather(
            queue.commit(first, named(fresh), give_up=LONG_S),
            queue.commit(second, named(stale), give_up=LONG_S),
        )
        await until(lambda: len(meta.calls) >= 2)
        clock.advance(LONG_S)  # past the resend deadline: the queue gives up
        return meta.calls, await asyncio.wait_for(outs, ANSWER_S)

    calls, (one, two) = asyncio.run(scenario())
    names = [key.split("/")[1].split(".")[0] for key in (fresh, stale)]
    assert calls[0] == names
    assert all(call == [names[1]] for call in calls[1:])
    assert offsets(one) == [0]
    assert isinstance(two, Unavailable)
    assert "gave up" in str(two)
    assert "orphan" in str(two)


def test_an_answer_from_an_older_epoch_is_not_trusted(settings):
    async def scenario():
        store = MemoryStore()
        old = await started(settings, store)
        new = make_meta(settings, store=store)  # a restart: ``old`` lives on as a zombie
        meta = Recorder(new, old, new)
        queue = make(meta.send, ManualClock(), wait_s=0)
        first = await queue.commit(queue.reserve(), request("a"), give_up=LONG_S)
        second = await asyncio.wait_for(
            queue.commit(queue.reserve(), request("b"), give_up=LONG_S), ANSWER_S
        )
        return meta.calls, first, second, queue.epoch

    calls, first, second, epoch = asyncio.run(scenario())
    assert calls == [["a"], ["b"], ["b"]]  # the zombie's epoch-1 answer after 2: resent
    assert epoch == 2
    assert (offsets(first), offsets(second)) == ([0], [1])


def test_a_refusal_is_not_resent():
    calls: list[list[CommitRequest]] = []

    async def refuse(requests: list[CommitRequest]) -> CommitAnswer:
        calls.append(requests)
        raise InvalidRequest("bad")

    async def scenario():
        queue = make(refuse, ManualClock())
        return await asyncio.wait_for(
            queue.commit(queue.reserve(), request("a"), give_up=LONG_S), ANSWER_S
        )

    out = asyncio.run(scenario())
    assert len(calls) == 1
    assert isinstance(out, InvalidRequest)


def test_giving_up_on_an_absent_metadata_actor_is_reported(settings):
    async def scenario():
        gone = await started(settings)
        await gone.close()
        meta = Recorder(gone)
        clock = ManualClock()
        queue = make(meta.send, clock, retry_s=5.0)
        late = asyncio.ensure_future(queue.commit(queue.reserve(), request("z"), give_up=LONG_S))
        await until(lambda: len(meta.calls) >= 2)  # resent while the deadline is ahead
        clock.advance(5.0)
        return meta.calls, await asyncio.wait_for(late, ANSWER_S)

    calls, late = asyncio.run(scenario())
    assert calls[:2] == [["z"], ["z"]]
    assert isinstance(late, Unavailable)
    assert "gave up" in str(late)


def test_a_request_is_not_resent_past_its_give_up_time(settings):
    """After ``give_up`` (half the orphan grace) the sweep may delete the segment: the
    queue stops resending then, however long ``retry_s`` is."""

    async def scenario():
        gone = await started(settings)
        await gone.close()
        meta = Recorder(gone)
        clock = ManualClock()
        queue = make(meta.send, clock, retry_s=LONG_S)
        give_up = clock.monotonic_s() + 0.01  # under the first backoff delay
        out = await asyncio.wait_for(
            queue.commit(queue.reserve(), request("a"), give_up=give_up), ANSWER_S
        )
        return meta.calls, out

    calls, out = asyncio.run(scenario())
    assert calls == [["a"]]
    assert isinstance(out, Unavailable)
    assert "gave up" in str(out)
