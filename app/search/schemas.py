"""Request and response shapes of search and access requests."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

from app.reports.schemas import EntityType, StrictModel

HitLevel = Literal["full", "tearline", "hit"]
RequestStatus = Literal["pending", "approved", "denied", "expired"]


class SearchEntity(StrictModel):
    type: EntityType
    value: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class SearchIn(StrictModel):
    """Entities to look for, and why (the purpose is audited)."""

    entities: Annotated[list[SearchEntity], Field(min_length=1, max_length=50)]
    purpose: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class SearchResult(BaseModel):
    report_id: str
    originator: str
    entity_type: str
    access: HitLevel


class SearchOut(BaseModel):
    results: list[SearchResult]


class AccessRequestIn(StrictModel):
    justification: Annotated[str, StringConstraints(min_length=1, max_length=2_000)]


class DecisionIn(StrictModel):
    approve: bool
    # Strict mode takes no strings for datetimes; JSON carries them as strings, so this one
    # field is parsed leniently (RFC 3339 with an offset).
    expires_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    note: Annotated[str, StringConstraints(max_length=2_000)] | None = None


class AccessRequestOut(BaseModel):
    id: str
    report_id: str
    originator: str
    requester: str
    status: RequestStatus
    justification: str | None = None
    created_at: datetime
    decided_at: datetime | None = None
    expires_at: datetime | None = None
    note: str | None = None


class AccessRequestPage(BaseModel):
    items: list[AccessRequestOut]
    next_cursor: str | None = None
