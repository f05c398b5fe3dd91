"""How a send retries a peer it cannot reach: one small policy object (DESIGN.md §10).

Modelled on Flower's ``RetryInvoker``: the policy says *how long* (``deadline``), *how often*
(exponential back-off from ``initial_backoff`` doubling up to ``max_backoff``) and *what* is worth
retrying (``transient`` exception types); ``run`` calls an attempt function until it returns, raises
something that is not transient, or the deadline passes (``RetriesExhausted``). The caller decides
what the error says; ``on_failure`` sees every transient failure (to log, reset a connection, or
raise at once when a closer look shows that retrying cannot help).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import pyarrow.flight as flight

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    flight.FlightUnavailableError,
    flight.FlightTimedOutError,
    flight.FlightInternalError,
    OSError,  # pyarrow's ArrowIOError: the stream broke (server went away mid-transfer)
)


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as ``on_failure`` sees it."""

    attempt: int  # 1 for the first attempt
    error: BaseException
    elapsed: float  # seconds since the first attempt started
    deadline: float


class RetriesExhausted(Exception):
    """The deadline passed with every attempt failing transiently; ``last`` is the final failure."""

    def __init__(self, last: Failure) -> None:
        super().__init__(f"gave up after {last.attempt} attempts in {last.elapsed:.1f} s: {last.error}")
        self.last = last
        self.attempts = last.attempt


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures with exponential back-off until ``deadline`` seconds have passed."""

    deadline: float = 30.0
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    transient: tuple[type[BaseException], ...] = TRANSIENT

    def with_deadline(self, deadline: float) -> RetryPolicy:
        return replace(self, deadline=deadline)

    def delays(self) -> Callable[[], float]:
        """The back-off generator: ``initial_backoff``, doubled after each use, at most ``max_backoff``."""
        delay = self.initial_backoff

        def step() -> float:
            nonlocal delay
            current, delay = delay, min(delay * 2, self.max_backoff)
            return current

        return step

    def run(
        self,
        attempt: Callable[[], T],
        *,
        on_failure: Callable[[Failure], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``attempt()``'s result; non-transient errors propagate; ``RetriesExhausted`` after the deadline."""
        start = clock()
        next_delay = self.delays()
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt()
            except self.transient as exc:
                failure = Failure(attempts, exc, clock() - start, self.deadline)
                if on_failure is not None:
                    on_failure(failure)  # may raise: a failure that retrying cannot fix
            elapsed = clock() - start
            if elapsed >= self.deadline:
                raise RetriesExhausted(Failure(attempts, failure.error, elapsed, self.deadline))
            sleep(min(next_delay(), self.deadline - elapsed))
