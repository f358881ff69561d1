"""A token bucket per key (e.g. per client), in process memory."""

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
    ) -> None:
        if rate < 1 or per <= 0:
            raise ValueError("rate must be at least 1 per a positive period")
        self._per_token = per / rate
        self._burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int | None:
        """Take one token for `key`: None if allowed, else whole seconds until one is free."""
        with self._lock:
            now = self._clock()
            tokens, stamp = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - stamp) / self._per_token)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) * self._per_token))
