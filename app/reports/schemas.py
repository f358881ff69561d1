"""Request and response shapes of the reports API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

if TYPE_CHECKING:
    # Only for annotations: the service imports these shapes.
    from app.reports.service import ReportView

Classification = Literal["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET"]
TearlineClassification = Literal["UNCLASSIFIED", "RESTRICTED"]
Tlp = Literal["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]
EntityType = Literal[
    "person",
    "organization",
    "account",
    "iban",
    "phone",
    "email",
    "wallet",
    "vessel",
    "document",
    "address",
]
AccessLevel = Literal["full", "tearline"]
Code = Annotated[str, StringConstraints(min_length=1, max_length=16)]


class StrictModel(BaseModel):
    # Unknown fields are refused, and "1" is not silently an int.
    model_config = ConfigDict(extra="forbid", strict=True)


class Grading(StrictModel):
    reliability: Literal["A", "B", "C", "D", "E", "F"]
    credibility: Annotated[int, Field(ge=1, le=6)]


class EntityIn(StrictModel):
    type: EntityType
    value: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    label: Annotated[str, StringConstraints(max_length=200)] | None = None


class ReportIn(StrictModel):
    """A report as its originator submits it."""

    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    body: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    summary: Annotated[str, StringConstraints(min_length=1, max_length=2_000)] | None = None
    topics: Annotated[list[Code], Field(min_length=1, max_length=10)]
    classification: Classification
    releasable_to: Annotated[list[Code], Field(min_length=1, max_length=100)]
    tearline_to: Annotated[list[Code], Field(min_length=1, max_length=100)] = ["ALL"]
    tearline_classification: TearlineClassification = "UNCLASSIFIED"
    tlp: Tlp = "AMBER"
    orcon: bool = False
    grading: Grading | None = None
    entities: Annotated[list[EntityIn], Field(max_length=200)] = []


class Audience(BaseModel):
    full: list[str]
    tearline: list[str]


class EntityOut(BaseModel):
    type: str
    value: str
    label: str | None = None


class ReportOut(BaseModel):
    """A report at the caller's level; fields a level does not show are absent."""

    id: str
    version: int
    originator: str
    status: str
    created_at: datetime
    updated_at: datetime
    classification: Classification
    tlp: Tlp
    orcon: bool
    topics: list[str]
    grading: Grading | None
    access: AccessLevel
    summary: str | None
    title: str | None = None
    body: str | None = None
    entities: list[EntityOut] | None = None
    releasable_to: list[str] | None = None
    tearline_to: list[str] | None = None
    tearline_classification: TearlineClassification | None = None
    audience: Audience | None = None


class ReportPreview(BaseModel):
    audience: Audience


class ReportPage(BaseModel):
    items: list[ReportOut]
    next_cursor: str | None


class RevokeIn(StrictModel):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Markings(BaseModel):
    classification: Classification
    tlp: Tlp
    orcon: bool
    topics: list[str]
    grading: Grading | None
    releasable_to: list[str]
    tearline_to: list[str]
    tearline_classification: TearlineClassification


class VersionOut(BaseModel):
    """One version as its originator submitted it; no content once the report is purged."""

    version: int
    created_at: datetime
    markings: Markings
    title: str | None
    body: str | None
    summary: str | None
    entities: list[EntityOut] | None


class VersionList(BaseModel):
    items: list[VersionOut]


class AccessRecordOut(BaseModel):
    time: datetime
    member: str | None
    client: str | None
    action: str
    level: str | None
    purpose: str | None


class AccessLogPage(BaseModel):
    items: list[AccessRecordOut]
    next_cursor: str | None


def report_out(view: ReportView, member: str) -> ReportOut:
    """The response shape of a view: content and markings only where the caller may see them."""
    r = view.report
    out = ReportOut(
        id=r.id,
        version=r.version,
        originator=r.originator,
        status=r.status,
        created_at=r.created_at,
        updated_at=r.updated_at,
        classification=r.classification,
        tlp=r.tlp,
        orcon=r.orcon,
        topics=list(r.topics),
        grading=Grading.model_validate(r.grading) if r.grading else None,
        access=view.level,
        summary=view.summary,
    )
    # A purged report (a tombstone) has no content left to show, at any level.
    if view.level == "full" and r.status != "purged":
        out.title = view.title
        if view.body is not None:
            out.body = view.body
        if view.entities is not None:
            out.entities = [EntityOut.model_validate(e) for e in view.entities]
    if r.originator == member:
        out.releasable_to = list(r.releasable_to)
        out.tearline_to = list(r.tearline_to)
        out.tearline_classification = r.tearline_classification  # type: ignore[assignment]
        if view.audience is not None:
            out.audience = Audience(
                full=list(view.audience.full), tearline=list(view.audience.tearline)
            )
    return out
