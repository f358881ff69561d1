"""Removing a member for good: its keys destroyed, everything it originated unrecoverable.

Dropping a member from the roster suspends it, and that can be undone. Removal cannot: every
version of its member key is destroyed in one transaction, and with it every data key it wraps,
so no report it originated can be decrypted again by anyone, from the database, a replica or a
backup taken after the removal (see docs/operations.md on older backups). Its clients are revoked
in the same transaction. Its reports then become tombstones in batches (`shred_originated`), as a
purge makes them: ciphertexts and index entries gone, every reader's access withdrawn, a
`report.purged` event for those who could read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db import utcnow
from app.keys.models import MemberKey
from app.members.models import Client, ClientKey, Member
from app.policy.bundle import PolicyBundle
from app.policy.service import PolicyState
from app.reports import lifecycle
from app.reports.models import Report
from app.reports.service import REPORT_COLUMNS, StoredReport

SHRED_BATCH = 200


class RemovalError(Exception):
    """The member cannot be removed as asked; the message says why."""


@dataclass(frozen=True)
class Removal:
    member: str
    keys_destroyed: int
    clients_revoked: int
    already_removed: bool


def remove(session: Session, bundle: PolicyBundle, code: str) -> Removal:
    """Destroy the member's keys and revoke its clients; idempotent (a repeat changes nothing)."""
    member = session.get(Member, code, with_for_update=True)
    if member is None:
        raise RemovalError(f"no member {code}")
    listed = bundle.members.get(code)
    if listed is not None and listed.active:
        raise RemovalError(
            f"{code} is an active member of the roster in force; drop it from roster.yaml (or "
            "mark it inactive) and reload the policy first"
        )
    if member.active and member.removed_at is None:
        raise RemovalError(
            f"{code} is still active in the database: reload the policy (SIGHUP or "
            "POST /v1/policy/reload) so that the roster in force suspends it first"
        )
    # Every key version locked before it is destroyed: a submission wrapping with one holds it
    # FOR SHARE, so it commits first (and its report is made a tombstone below) or finds the
    # key gone.
    session.execute(
        select(MemberKey.version).where(MemberKey.member_code == code).with_for_update()
    ).all()
    now = utcnow()
    already = member.removed_at is not None
    member.active, member.updated_at = False, now
    member.removed_at = member.removed_at or now
    conn = session.connection()
    revoked = conn.execute(
        update(Client)
        .where(Client.member_code == code, Client.status == "active")
        .values(status="revoked", revoked_at=now)
    ).rowcount
    conn.execute(
        update(ClientKey)
        .where(
            ClientKey.client_id.in_(select(Client.id).where(Client.member_code == code)),
            ClientKey.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    destroyed = conn.execute(
        update(MemberKey)
        .where(MemberKey.member_code == code, MemberKey.wrapped_key.is_not(None))
        .values(wrapped_key=None, destroyed_at=now)
    ).rowcount
    audit.record(
        session,
        audit.OPERATOR,
        audit.Entry(
            action="member.remove",
            decision="allow",
            target=f"member:{code}",
            reasons=(f"keys_destroyed:{destroyed}", f"clients_revoked:{revoked}"),
        ),
    )
    return Removal(code, int(destroyed), int(revoked), already)


def shred_originated(session: Session, state: PolicyState, code: str, limit: int) -> int:
    """Make up to `limit` more reports of a removed member tombstones; how many were made."""
    member = session.get(Member, code)
    if member is None or member.removed_at is None:
        raise RemovalError(f"{code} has not been removed")
    rows = session.execute(
        select(*REPORT_COLUMNS)
        .where(Report.originator == code, Report.status != "purged")
        .order_by(Report.id)
        .limit(limit)
        .with_for_update()
    ).all()
    for row in rows:
        lifecycle.shred(session, state, StoredReport.from_row(row))
    return len(rows)
