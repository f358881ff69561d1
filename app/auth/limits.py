"""Rate limits per client and route family: reads, writes, audit exports and tokens.

Searches have their own limit (`search/endpoints.py`). Each family is a token bucket per client
and per process (`kit/ratelimit.py`): with several API processes behind a balancer a client
gets up to that many times the rate. The token endpoint has two: tokens issued per client
(counted after its assertion verified) and requests per source address (counted first).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.kit.ratelimit import RateLimiter

# Routes with a limiter of their own, or none per client (no verified client yet).
_OWN = frozenset({"/v1/search"})
_EXPORTS = frozenset({"/v1/audit/export"})
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class RouteLimits:
    reads: RateLimiter
    writes: RateLimiter
    exports: RateLimiter
    tokens: RateLimiter
    token_addresses: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteLimits:
        return cls(
            reads=RateLimiter(settings.read_rate_per_minute),
            writes=RateLimiter(settings.write_rate_per_minute),
            exports=RateLimiter(settings.export_rate_per_minute),
            tokens=RateLimiter(settings.token_rate_per_minute),
            token_addresses=RateLimiter(settings.token_address_rate_per_minute),
        )

    def family(self, method: str, path: str) -> tuple[str, RateLimiter] | None:
        """The family of a route (by its template) and its limiter; None for its own."""
        if path in _OWN:
            return None
        if path in _EXPORTS:
            return "export", self.exports
        if method.upper() in _READS:
            return "read", self.reads
        return "write", self.writes
