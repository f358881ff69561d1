"""Long-lived state of one application instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.audit.writer import AuditWriter
from app.auth.limits import RouteLimits
from app.auth.service import VerifiedTokens
from app.config import Settings
from app.db import Database
from app.keys.provider import KeyProvider
from app.keys.service import Envelope
from app.keys.signing import ServiceKeys
from app.kit.jwt import SigningKey, VerificationKey
from app.kit.ratelimit import RateLimiter
from app.metrics import Metrics
from app.policy.reload import Redecider, Reloader
from app.policy.service import PolicyState
from app.search.index import BlindIndex


@dataclass
class AppState:
    settings: Settings
    db: Database
    keys: KeyProvider
    envelope: Envelope
    blind_index: BlindIndex
    policy: PolicyState
    audit_log: AuditWriter
    redecider: Redecider
    reloader: Reloader
    search_limiter: RateLimiter
    route_limits: RouteLimits
    service_keys: ServiceKeys
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def sessionmaker(self) -> sessionmaker[Session]:
        return self.db.sessionmaker

    @property
    def issuer(self) -> str:
        return self.settings.resolved_issuer

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs tokens and checkpoints now."""
        return self.service_keys.current()

    @property
    def verification_keys(self) -> dict[str, VerificationKey]:
        """Every service key that verifies, by kid (retired ones too)."""
        return self.service_keys.verifiers()
