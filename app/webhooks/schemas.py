"""Request and response shapes of webhooks and the sync feed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.reports.schemas import Code, StrictModel

EventType = Literal[
    "report.created",
    "report.updated",
    "report.revoked",
    "report.purged",
    "report.access_changed",
    "match.found",
    "access_request.created",
    "access_request.decided",
    "audit.checkpoint",
    "webhook.disabled",
]
Format = Literal["thin", "jwe"]
MAX_OVERLAP_SECONDS = 7 * 86400


class WebhookIn(StrictModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    events: Annotated[list[EventType], Field(min_length=1, max_length=10)]
    # Topic codes of the taxonomy, leaves or branches; absent: every topic.
    topics: Annotated[list[Code], Field(min_length=1, max_length=50)] | None = None
    format: Format = "thin"
    # The subscriber's RSA public key (JWK), required for `jwe` and refused otherwise.
    encryption_jwk: dict[str, Any] | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    topics: list[str] | None
    format: Format
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    # While the secret before the last rotation still signs beside the current one.
    previous_secret_expires_at: datetime | None


class WebhookCreated(WebhookOut):
    # Shown here only: the service keeps it encrypted and never returns it again.
    secret: str


class WebhookList(BaseModel):
    items: list[WebhookOut]


class RotateIn(StrictModel):
    # How long the secret being replaced keeps signing beside the new one (default: setting).
    overlap_seconds: Annotated[int, Field(ge=0, le=MAX_OVERLAP_SECONDS)] | None = None


class SecretRotated(BaseModel):
    id: str
    secret: str
    previous_secret_expires_at: datetime | None


class Queued(BaseModel):
    delivery_id: str
    status: str


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    event_id: str | None
    event_type: str
    status: Literal["pending", "sending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    last_status: int | None
    last_error: str | None
    attempt_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class FeedEvent(BaseModel):
    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]


class FeedPage(BaseModel):
    events: list[FeedEvent]
    # Always given: pass it back to continue after the last event seen (also when none was).
    next_cursor: str
