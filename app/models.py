"""Every table, imported in one place for Alembic and the tests."""

from app.audit.models import AuditEntry
from app.auth.models import UsedAssertion
from app.db import Base
from app.keys.models import MemberKey
from app.members.models import Client, ClientKey, Member
from app.reports.models import (
    IdempotencyKey,
    Report,
    ReportAccess,
    ReportKey,
    ReportTopic,
    ReportVersion,
)

__all__ = [
    "AuditEntry",
    "Base",
    "Client",
    "ClientKey",
    "IdempotencyKey",
    "Member",
    "MemberKey",
    "Report",
    "ReportAccess",
    "ReportKey",
    "ReportTopic",
    "ReportVersion",
    "UsedAssertion",
]
