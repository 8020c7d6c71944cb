"""The per-address delay before a failed login is answered (core/login_failures.py)."""

from __future__ import annotations

import pytest

from ray_stream.clock import ManualClock
from ray_stream.core.login_failures import LoginFailures


def test_login_failures_delay_doubles_per_address_up_to_the_cap():
    clock = ManualClock()
    failures = LoginFailures(base_delay_s=0.1, max_delay_s=1.0)
    delays = []
    for _ in range(6):
        delays.append(failures.failed("/10.0.0.1", now_s=clock.monotonic_s()))
        clock.advance(0.5)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert failures.failed("/10.0.0.2", now_s=clock.monotonic_s()) == pytest.approx(0.1)


def test_login_failures_are_forgotten_after_a_quiet_period():
    clock = ManualClock()
    failures = LoginFailures(base_delay_s=0.1, forget_after_s=60)
    for _ in range(3):
        failures.failed("/h", now_s=clock.monotonic_s())
    clock.advance(59)
    assert failures.failures("/h", now_s=clock.monotonic_s()) == 3
    clock.advance(1)
    assert failures.failures("/h", now_s=clock.monotonic_s()) == 0
    assert failures.failed("/h", now_s=clock.monotonic_s()) == pytest.approx(0.1)


def test_login_failures_success_clears_the_address():
    failures = LoginFailures(base_delay_s=0.1)
    failures.failed("/h", now_s=0)
    failures.failed("/h", now_s=1)
    failures.succeeded("/h")
    assert failures.failed("/h", now_s=2) == pytest.approx(0.1)


def test_login_failures_memory_is_bounded_forgetting_the_oldest():
    failures = LoginFailures(max_addresses=3)
    for i in range(5):
        failures.failed(f"/10.0.0.{i}", now_s=i)
    assert failures.failures("/10.0.0.0", now_s=5) == 0
    assert failures.failures("/10.0.0.1", now_s=5) == 0
    assert failures.failures("/10.0.0.4", now_s=5) == 1
