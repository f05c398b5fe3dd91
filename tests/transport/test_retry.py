"""RetryPolicy: back-off timings, what is retried, and what ends the retries (a fake clock, no sleeping)."""

from __future__ import annotations

import pyarrow.flight as flight
import pytest

from vfl.errors import TransportError
from vfl.transport.flight import FlightSettings, RetryPolicy
from vfl.transport.retry import Failure, RetriesExhausted


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, exc: BaseException, result: str = "ok"):
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return result

    return attempt, calls


def test_defaults_are_the_channels_timings():
    assert RetryPolicy() == FlightSettings().retry_policy()
    policy = FlightSettings().retry_policy()
    assert (policy.deadline, policy.initial_backoff, policy.max_backoff) == (30.0, 0.2, 5.0)
    assert FlightSettings().retry_policy(600.0).deadline == 600.0


def test_backoff_doubles_up_to_the_maximum_and_succeeds():
    clock = FakeClock()
    attempt, calls = failing(6, flight.FlightUnavailableError("down"))
    policy = RetryPolicy(deadline=100, initial_backoff=0.2, max_backoff=1.0)
    assert policy.run(attempt, sleep=clock.sleep, clock=clock) == "ok"
    assert calls["n"] == 7
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_deadline_ends_the_retries_and_the_last_sleep_is_cut_short():
    clock = FakeClock()
    attempt, calls = failing(1000, ConnectionRefusedError("refused"))
    seen: list[Failure] = []
    policy = RetryPolicy(deadline=2.0, initial_backoff=0.5, max_backoff=1.0)
    with pytest.raises(RetriesExhausted) as info:
        policy.run(attempt, on_failure=seen.append, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == pytest.approx([0.5, 1.0, 0.5])  # 0.5 + 1.0 + what is left of 2 s
    assert info.value.attempts == calls["n"] == 4
    assert isinstance(info.value.last.error, ConnectionRefusedError)
    assert [f.attempt for f in seen] == [1, 2, 3, 4]
    assert [f.elapsed for f in seen] == pytest.approx([0.0, 0.5, 1.5, 2.0])


def test_errors_that_are_not_transient_are_not_retried():
    clock = FakeClock()
    attempt, calls = failing(5, TransportError("refused our certificate"))
    with pytest.raises(TransportError, match="refused our certificate"):
        RetryPolicy().run(attempt, sleep=clock.sleep, clock=clock)
    assert calls["n"] == 1 and clock.sleeps == []


def test_on_failure_can_stop_the_retries():
    clock = FakeClock()
    attempt, calls = failing(5, flight.FlightUnavailableError("Socket closed"))

    def diagnose(failure: Failure) -> None:
        raise TransportError(f"permanent after attempt {failure.attempt}")

    with pytest.raises(TransportError, match="permanent after attempt 1"):
        RetryPolicy().run(attempt, on_failure=diagnose, sleep=clock.sleep, clock=clock)
    assert calls["n"] == 1


def test_which_exceptions_are_transient_is_part_of_the_policy():
    clock = FakeClock()
    attempt, calls = failing(2, KeyError("flaky"))
    assert RetryPolicy(transient=(KeyError,)).run(attempt, sleep=clock.sleep, clock=clock) == "ok"
    assert calls["n"] == 3
