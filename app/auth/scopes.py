"""The scopes a client may hold."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    reports_read = "reports:read"
    reports_write = "reports:write"
    search = "search"
    webhooks = "webhooks"
    audit = "audit"
    policy_read = "policy:read"


ALL_SCOPES: tuple[str, ...] = tuple(s.value for s in Scope)
# Auditing is the chairs' duty alone; no other member's client may ever hold it.
CHAIR_ONLY_SCOPES = frozenset({Scope.audit.value})


def scopes_for_member(is_chair: bool) -> tuple[str, ...]:
    """Every scope a member of this kind may hold."""
    return tuple(s for s in ALL_SCOPES if is_chair or s not in CHAIR_ONLY_SCOPES)
