"""``ray-stream bench``'s reporting: progress lines and latency percentiles."""

from __future__ import annotations

from ray_stream.bench_cli import _percentiles, _Progress


def test_bench_progress_line_shows_a_bar_the_share_done_and_the_rate():
    lines: list[str] = []
    now = [100.0]
    progress = _Progress("produce", 200, lines.append, clock=lambda: now[0])
    progress.add(50, 5000)
    now[0] += 0.5
    progress.tick()  # less than a second since the start: nothing printed
    assert lines == []
    now[0] += 1.5
    progress.tick(", 40 acknowledged")
    assert lines == [
        "produce [#####...............]  25% 50/200 records, 25 records/s, 40 acknowledged"
    ]
    now[0] += 2.0
    assert progress.summary("p99 1 ms") == (
        "produce: 50 records in 4.00 s: 12 records/s, 0.00 MB/s; p99 1 ms"
    )


def test_bench_percentiles_of_latencies_in_milliseconds():
    latencies = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    assert _percentiles(latencies) == "p50 51.0 ms, p95 96.0 ms, p99 100.0 ms, max 100.0 ms"
    assert _percentiles([]) == "no samples"
