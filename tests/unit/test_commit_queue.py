"""CommitQueue: flush order, grouping only when behind, resends (actors/commit_queue.py)."""

from __future__ import annotations

import asyncio

from ray_stream.actors.commit_queue import CommitQueue
from ray_stream.clock import SystemClock
from ray_stream.core.types import BatchEntry, BatchResult, CommitRequest
from ray_stream.errors import InvalidRequest, StorageUnavailable, Unavailable


def request(key: str) -> CommitRequest:
    entry = BatchEntry(
        topic="t",
        partition=0,
        position=0,
        length=10,
        record_count=1,
        first_timestamp=0,
        max_timestamp=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
    )
    return CommitRequest(segment_key=key, segment_bytes=10, batches=(entry,))


class Meta:
    """Answers each call with consecutive offsets; ``answers`` scripts epochs or errors."""

    def __init__(self, *answers: object) -> None:
        self.calls: list[list[str]] = []
        self.answers = list(answers)
        self.offset = 0

    async def send(self, requests: list[CommitRequest]) -> tuple[list[object], int]:
        self.calls.append([r.segment_key for r in requests])
        answer = self.answers.pop(0) if self.answers else 1
        if isinstance(answer, Exception):
            raise answer
        out: list[object] = []
        for r in requests:
            if isinstance(answer, dict) and r.segment_key in answer:
                out.append(answer.pop(r.segment_key))
                continue
            out.append([BatchResult(self.offset)])
            self.offset += 1
        return out, answer if isinstance(answer, int) else 1


def make(meta: Meta, *, wait_s: float = 1.0, retry_s: float = 5.0) -> CommitQueue:
    return CommitQueue(meta.send, clock=SystemClock(), wait_s=wait_s, retry_s=retry_s)


def far() -> float:
    return SystemClock().monotonic_s() + 60


def test_a_lone_commit_is_sent_at_once():
    async def scenario():
        meta = Meta()
        queue = make(meta, wait_s=30.0)
        place = queue.reserve()
        started = asyncio.get_running_loop().time()
        out = await queue.commit(place, request("a"), give_up=far())
        return meta.calls, out, asyncio.get_running_loop().time() - started

    calls, out, took = asyncio.run(scenario())
    assert calls == [["a"]]
    assert [r.base_offset for r in out] == [0]
    assert took < 5  # did not wait out wait_s for a flush that never started


def test_a_flush_behind_is_waited_for_and_both_go_in_one_call_in_order():
    async def scenario():
        meta = Meta()
        queue = make(meta)
        first, second = queue.reserve(), queue.reserve()
        one = asyncio.create_task(queue.commit(first, request("a"), give_up=far()))
        await asyncio.sleep(0.05)  # the second PUT is still running
        two = asyncio.create_task(queue.commit(second, request("b"), give_up=far()))
        return meta.calls, await one, await two, queue.stats

    calls, one, two, stats = asyncio.run(scenario())
    assert calls == [["a", "b"]]
    assert (one[0].base_offset, two[0].base_offset) == (0, 1)
    assert (stats.calls, stats.segments, stats.max_group) == (1, 2, 2)


def test_the_wait_for_a_flush_behind_is_bounded():
    async def scenario():
        meta = Meta()
        queue = make(meta, wait_s=0.05)
        first, second = queue.reserve(), queue.reserve()
        one = await queue.commit(first, request("a"), give_up=far())  # second never ready
        calls_then = list(meta.calls)
        two = await queue.commit(second, request("b"), give_up=far())
        return calls_then, meta.calls, one, two

    calls_then, calls, one, two = asyncio.run(scenario())
    assert calls_then == [["a"]]
    assert calls == [["a"], ["b"]]
    assert (one[0].base_offset, two[0].base_offset) == (0, 1)


def test_a_failed_put_is_answered_in_its_turn_and_never_sent():
    async def scenario():
        meta = Meta()
        queue = make(meta, wait_s=0.2)
        places = [queue.reserve() for _ in range(3)]
        broken = StorageUnavailable("PUT failed")
        outs = await asyncio.gather(
            queue.commit(places[0], request("a"), give_up=far()),
            queue.commit(places[1], broken),
            queue.commit(places[2], request("c"), give_up=far()),
        )
        return meta.calls, outs, broken

    calls, outs, broken = asyncio.run(scenario())
    assert calls == [["a"], ["c"]]  # the group stops before the failed flush
    assert outs[1] is broken
    assert (outs[0][0].base_offset, outs[2][0].base_offset) == (0, 1)


def test_a_group_is_resent_while_the_metadata_actor_is_away():
    async def scenario():
        meta = Meta(Unavailable("restarting"), 1)
        queue = make(meta)
        first, second = queue.reserve(), queue.reserve()
        outs = await asyncio.gather(
            queue.commit(first, request("a"), give_up=far()),
            queue.commit(second, request("b"), give_up=far()),
        )
        return meta.calls, outs, queue.stats

    calls, outs, stats = asyncio.run(scenario())
    assert calls == [["a", "b"], ["a", "b"]]
    assert [o[0].base_offset for o in outs] == [0, 1]
    assert stats.failures == {"commit": 1}


def test_only_the_refused_requests_of_a_group_are_resent():
    async def scenario():
        meta = Meta({"b": StorageUnavailable("journal PUT in doubt")}, 1)
        queue = make(meta)
        first, second = queue.reserve(), queue.reserve()
        outs = await asyncio.gather(
            queue.commit(first, request("a"), give_up=far()),
            queue.commit(second, request("b"), give_up=far()),
        )
        return meta.calls, outs

    calls, outs = asyncio.run(scenario())
    assert calls == [["a", "b"], ["b"]]
    assert [o[0].base_offset for o in outs] == [0, 1]


def test_an_answer_from_an_older_epoch_is_not_trusted():
    async def scenario():
        meta = Meta(3, 2, 3)
        queue = make(meta, wait_s=0)
        first = await queue.commit(queue.reserve(), request("a"), give_up=far())
        second = await queue.commit(queue.reserve(), request("b"), give_up=far())
        return meta.calls, first, second, queue.epoch

    calls, _, second, epoch = asyncio.run(scenario())
    assert calls == [["a"], ["b"], ["b"]]  # epoch 2 after 3: a stale incarnation, resent
    assert epoch == 3
    assert [r.base_offset for r in second] == [2]


def test_a_refusal_is_not_resent_and_giving_up_is_reported():
    async def scenario():
        refused = Meta(InvalidRequest("bad"))
        queue = make(refused)
        out = await queue.commit(queue.reserve(), request("a"), give_up=far())
        away = Meta(*[Unavailable("down")] * 50)
        gone = make(away, retry_s=0.2)
        late = await gone.commit(gone.reserve(), request("z"), give_up=far())
        return refused.calls, out, late

    calls, out, late = asyncio.run(scenario())
    assert calls == [["a"]]
    assert isinstance(out, InvalidRequest)
    assert isinstance(late, Unavailable)
    assert "gave up" in str(late)
