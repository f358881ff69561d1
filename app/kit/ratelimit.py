"""A token bucket per key (e.g. per client or per address), in process memory, bounded."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Allows `rate` events per `per` seconds per key, in bursts of up to `burst`."""

    def __init__(
        self,
        rate: int,
        per: float = 60.0,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate < 1 or per <= 0:
            raise ValueError("rate must be at least 1 per a positive period")
        self._per_token = per / rate
        self._burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        # Keys are caller-chosen (addresses): the table must not grow without bound.
        self._max_keys = max_keys
        self._refusals_noted: dict[str, float] = {}

    def acquire(self, key: str) -> int | None:
        """Take one token for `key`: None if allowed, else whole seconds until one is free."""
        with self._lock:
            now = self._clock()
            if key not in self._buckets and len(self._buckets) >= self._max_keys:
                self._forget_idle(now)
            tokens, stamp = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - stamp) / self._per_token)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) * self._per_token))

    def _forget_idle(self, now: float) -> None:
        # A bucket that has filled up again is the same as no bucket: drop those. If the table
        # is still full (a flood of fresh keys), start over rather than grow.
        full = self._burst * self._per_token
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()

    def first_refusal(self, key: str, window: float = 60.0) -> bool:
        """Whether a refusal of `key` is the first in `window` seconds (to record it once)."""
        with self._lock:
            now = self._clock()
            last = self._refusals_noted.get(key)
            if last is not None and now - last < window:
                return False
            if len(self._refusals_noted) >= self._max_keys:
                self._refusals_noted = {
                    k: t for k, t in self._refusals_noted.items() if now - t < window
                }
                if len(self._refusals_noted) >= self._max_keys:
                    self._refusals_noted.clear()
            self._refusals_noted[key] = now
            return True
