"""The per-key token bucket behind 429 answers."""

from __future__ import annotations

import pytest

from app.kit.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRateLimiter:
    def test_a_burst_up_to_the_rate_passes_and_the_next_waits(self) -> None:
        clock = Clock()
        limiter = RateLimiter(3, per=60.0, clock=clock)
        assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
        assert limiter.acquire("a") == 20

    def test_tokens_come_back_with_time(self) -> None:
        clock = Clock()
        limiter = RateLimiter(3, per=60.0, clock=clock)
        for _ in range(3):
            limiter.acquire("a")
        clock.now += 20.0
        assert limiter.acquire("a") is None
        assert limiter.acquire("a") == 20

    def test_keys_are_limited_apart(self) -> None:
        limiter = RateLimiter(1, per=60.0, clock=Clock())
        assert limiter.acquire("a") is None
        assert limiter.acquire("a") is not None
        assert limiter.acquire("b") is None

    def test_retry_after_is_at_least_one_second(self) -> None:
        clock = Clock()
        limiter = RateLimiter(1000, per=1.0, clock=clock)
        for _ in range(1000):
            limiter.acquire("a")
        assert limiter.acquire("a") == 1

    def test_a_nonsensical_rate_is_refused(self) -> None:
        with pytest.raises(ValueError, match="rate"):
            RateLimiter(0)
