"""The ray-stream CLI against a real `ray-stream start` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _cli(env, *args, stdin=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ray_stream.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, RAY_STREAM_STATE_DIR=str(tmp / "state"), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray_stream.cli",
            "start",
            "--data-dir",
            str(tmp / "data"),
            "--kafka-port",
            "-1",
            "--linger-ms",
            "20",
            "--namespace",
            "cli-test",
            "--agents",
            "2",
            "--zones",
            "a,b",
            "--group",
            "analytics:agents=1,roles=consume",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 180
    ready = None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready"):
            ready = line
        if line.startswith("group analytics"):
            break
    assert ready is not None, "".join(lines)
    yield env, proc, ready
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_start_prints_ready_with_addresses(started):
    _, _, ready = started
    assert "kafka=127.0.0.1:" in ready and "data_dir=" in ready


def test_topics_produce_consume_round_trip(started):
    env, _, _ = started
    r = _cli(env, "topics", "create", "clitopic", "--partitions", "2")
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(env, "produce", "clitopic", stdin=b"".join(f"line-{i}\n".encode() for i in range(50)))
    assert r.returncode == 0, r.stderr.decode()
    assert b"produced 50 records" in r.stderr
    r = _cli(
        env, "consume", "clitopic", "--from-beginning", "--max-records", "50", "--timeout", "5"
    )
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(r.stdout.decode().split()) == sorted(f"line-{i}" for i in range(50))
    r = _cli(env, "topics", "describe", "clitopic")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "partitions=2" in out and out.count("high_watermark=") == 2
    r = _cli(env, "topics", "list")
    assert "clitopic" in r.stdout.decode()


def test_cli_errors_say_what_to_do(started, tmp_path):
    env, _, _ = started
    r = _cli(env, "topics", "create", "bad name")
    assert r.returncode == 2
    assert b"error:" in r.stderr and b"topic" in r.stderr.lower()
    r = _cli(env, "topics", "delete", "missing-topic")
    assert r.returncode == 2 and b"missing-topic" in r.stderr
    lonely = dict(env, RAY_STREAM_STATE_DIR=str(tmp_path / "nothing"))
    r = _cli(lonely, "topics", "list")
    assert r.returncode == 1
    assert b"ray-stream start" in r.stderr


def _status_rows(env):
    r = _cli(env, "status")
    assert r.returncode == 0, r.stderr.decode()
    rows = [line.split() for line in r.stdout.decode().splitlines()]
    agents = [row for row in rows if row and row[0].isdigit()]
    zones = {row[2]: row for row in rows if row[:2] == ["zone", "total"]}
    return agents, zones


def test_status_shows_rates_and_consumer_group_lag(started):
    env, _, _ = started
    r = _cli(env, "topics", "create", "lagtopic", "--partitions", "1")
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(env, "produce", "lagtopic", stdin=b"".join(b"x\n" for _ in range(30)))
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(env, "consume", "lagtopic", "--group", "g1", "--from-beginning", "--max-records", "30")
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(env, "produce", "lagtopic", stdin=b"".join(b"y\n" for _ in range(12)))
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(env, "status")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "lag group=g1 topic=lagtopic records=12" in out.splitlines()
    assert any(line.startswith("rates over ") and "MB/s" in line for line in out.splitlines())


def test_status_shows_agents_and_zones_and_scale_resizes(started):
    env, _, _ = started
    agents, zones = _status_rows(env)
    # agent, listener, zone, group: the default group's agents 0, 1 in zones a, b
    assert [(row[0], row[2], row[3]) for row in agents] == [
        ("0", "a", "default"),
        ("1", "b", "default"),
        ("2", "a", "analytics"),
    ]
    assert set(zones) == {"a", "b"}
    r = _cli(env, "scale", "--agents", "3")
    assert r.returncode == 0, r.stderr.decode()
    assert "group default: 3 agent(s)" in r.stdout.decode()
    agents, _ = _status_rows(env)
    assert [(row[0], row[3]) for row in agents if row[3] == "default"] == [
        ("0", "default"),
        ("1", "default"),
        ("3", "default"),
    ]
    r = _cli(env, "scale", "--agents", "1")
    assert r.returncode == 0, r.stderr.decode()
    agents, _ = _status_rows(env)
    assert [row[0] for row in agents if row[3] == "default"] == ["0"]
    r = _cli(env, "scale", "--agents", "2", "--group", "nope")
    assert r.returncode == 2
    assert b"nope" in r.stderr


def test_bench_produces_and_reads_back_with_latency_percentiles(started):
    env, _, _ = started
    r = _cli(env, "bench", "--records", "3000", "--record-size", "100", "--partitions", "2")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "created topic bench-" in out
    produce = next(line for line in out.splitlines() if line.startswith("produce: 3000 records in"))
    assert "MB/s" in produce and "p99" in produce
    assert any(line.startswith("consume: 3000 records in") for line in out.splitlines())


def test_users_add_list_delete_keep_the_password_out_of_sight(started):
    env, _, _ = started
    added = _cli(env, "users", "add", "alice", stdin=b"alice-secret-pw\n")
    assert added.returncode == 0, added.stderr.decode()
    listed = _cli(env, "users", "list")
    out = listed.stdout.decode()
    assert "alice\tSCRAM-SHA-256(i=8192) SCRAM-SHA-512(i=8192)" in out
    assert "alice-secret-pw" not in out + added.stdout.decode() + added.stderr.decode()
    empty = _cli(env, "users", "add", "bob", stdin=b"")
    assert empty.returncode == 2
    assert b"no password" in empty.stderr
    assert _cli(env, "users", "delete", "alice").returncode == 0
    again = _cli(env, "users", "delete", "alice")
    assert again.returncode == 2
    assert b"no user 'alice'" in again.stderr
    assert "alice" not in _cli(env, "users", "list").stdout.decode()


def test_stop_from_another_shell_stops_cleanly(started):
    env, proc, _ = started
    stopper = subprocess.Popen(
        [sys.executable, "-m", "ray_stream.cli", "stop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    out, _ = proc.communicate(timeout=90)  # `ray-stream stop` sent SIGTERM
    assert proc.returncode == 0, out
    assert "stopped" in out
    stop_out, stop_err = stopper.communicate(timeout=60)
    assert stopper.returncode == 0, stop_err
    assert "stopped" in stop_out
    assert not (os.path.exists(os.path.join(env["RAY_STREAM_STATE_DIR"], "cluster.json")))
    again = _cli(env, "stop")
    assert again.returncode == 1
    assert b"nothing to stop" in again.stderr


def test_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, RAY_STREAM_STATE_DIR=str(tmp_path / "state"))
    r = _cli(env, "demo", "--records", "2000", "--data-dir", str(tmp_path / "demo"), timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "produced 2000 records" in out and "consumed 2000 records" in out
    assert "demo ok" in out
