"""Every table, imported in one place for Alembic and the tests."""

from app.audit.models import AuditEntry, AuditNode, AuditTree, Checkpoint
from app.auth.models import UsedAssertion
from app.db import Base
from app.keys.models import MemberKey
from app.members.models import Client, ClientKey, Member
from app.reports.models import (
    IdempotencyKey,
    Report,
    ReportAccess,
    ReportGrant,
    ReportKey,
    ReportTopic,
    ReportVersion,
)
from app.search.models import AccessRequest, EntityIndex
from app.webhooks.models import Attempt, Cursor, Delivery, Event, Subscription

__all__ = [
    "AccessRequest",
    "Attempt",
    "AuditEntry",
    "AuditNode",
    "AuditTree",
    "Base",
    "Checkpoint",
    "Client",
    "ClientKey",
    "Cursor",
    "Delivery",
    "EntityIndex",
    "Event",
    "IdempotencyKey",
    "Member",
    "MemberKey",
    "Report",
    "ReportAccess",
    "ReportGrant",
    "ReportKey",
    "ReportTopic",
    "ReportVersion",
    "Subscription",
    "UsedAssertion",
]
