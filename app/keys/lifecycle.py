"""Key lifecycle: what each key version protects, rotation, re-wrapping and retirement.

The envelope has three layers (app/keys/service.py): master key versions (held by the key
provider) wrap member keys; member key versions wrap report data keys and webhook secrets. A
rotation adds a version that new writes use; a re-wrap moves what older versions protect onto the
current ones, in short batches while the service runs, without touching any report ciphertext (a
data key's associated data leaves the member key version out on purpose); a retirement destroys
a version once nothing uses it any more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar, cast

from sqlalchemy import ColumnElement, Connection, Table, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.audit import service as audit
from app.db import transaction, utcnow
from app.keys.models import MemberKey
from app.keys.provider import KeyProvider
from app.keys.service import CURRENT_VERSION_TTL, Envelope, data_key_aad, member_key_aad
from app.kit import crypto
from app.reports.models import ReportKey
from app.webhooks.delivery import secret_aad
from app.webhooks.models import Subscription

REWRAP_BATCH = 500
# Beyond the processes' cache of the current version: for a write that began just before.
RETIRE_MARGIN_SECONDS = 5

_key_table = cast(Table, ReportKey.__table__)
_sub_table = cast(Table, Subscription.__table__)
_keys = _key_table.c
_subs = _sub_table.c


@dataclass
class RewrapTotals:
    """What one `tearline keys rewrap` run moved, and what it left because it was corrupted."""

    member_keys: int = 0
    data_keys: int = 0
    secrets: int = 0
    # Keys left as they were because they failed their integrity check (report id and version,
    # or a subscription id and 0).
    refused: set[tuple[str, int]] = field(default_factory=set)

    @property
    def done(self) -> int:
        return self.member_keys + self.data_keys + self.secrets


class KeyLifecycleError(Exception):
    """A rotation or retirement that must not happen; the message says why."""


@dataclass(frozen=True)
class MemberKeyStatus:
    member: str
    version: int
    master_version: int
    current: bool
    destroyed: bool
    created_at: datetime
    # What the version protects now: data keys of report versions, and webhook secrets.
    data_keys: int
    secrets: int

    @property
    def in_use(self) -> bool:
        return self.data_keys > 0 or self.secrets > 0


@dataclass(frozen=True)
class MasterStatus:
    version: int
    current: bool
    held: bool
    member_keys: int


@dataclass(frozen=True)
class KeyStatus:
    masters: list[MasterStatus]
    member_keys: list[MemberKeyStatus]

    @property
    def stale_member_keys(self) -> int:
        """Live member keys wrapped by a master version other than the current one."""
        current = next(m.version for m in self.masters if m.current)
        return sum(1 for k in self.member_keys if not k.destroyed and k.master_version != current)

    @property
    def stale_data_keys(self) -> int:
        """Data keys wrapped by a member key version older than that member's current one."""
        return sum(k.data_keys for k in self.member_keys if not k.current)

    @property
    def stale_secrets(self) -> int:
        return sum(k.secrets for k in self.member_keys if not k.current)


def current_versions(conn: Connection) -> dict[str, int]:
    """Each member's current (highest live) key version."""
    rows = conn.execute(
        select(MemberKey.member_code, func.max(MemberKey.version))
        .where(MemberKey.wrapped_key.is_not(None))
        .group_by(MemberKey.member_code)
    )
    return {member: int(version) for member, version in rows}


def _protected_secrets(conn: Connection) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for version, sealed in (
        (_subs.secret_key_version, _subs.secret_ct),
        (_subs.previous_key_version, _subs.previous_ct),
    ):
        rows = conn.execute(
            select(_subs.member_code, version, func.count())
            .where(sealed.is_not(None), version.is_not(None))
            .group_by(_subs.member_code, version)
        )
        for member, v, n in rows:
            counts[(member, v)] = counts.get((member, v), 0) + n
    return counts


def status(conn: Connection, provider: KeyProvider, held_masters: list[int]) -> KeyStatus:
    """Every master and member key version and what it protects now."""
    data_keys = {
        (member, version): n
        for member, version, n in conn.execute(
            select(_keys.key_member, _keys.key_version, func.count())
            .where(_keys.wrapped_data_key.is_not(None))
            .group_by(_keys.key_member, _keys.key_version)
        )
    }
    secrets = _protected_secrets(conn)
    current = current_versions(conn)
    member_keys = [
        MemberKeyStatus(
            member=row.member_code,
            version=row.version,
            master_version=row.master_version,
            current=current.get(row.member_code) == row.version,
            destroyed=row.wrapped_key is None,
            created_at=row.created_at,
            data_keys=data_keys.get((row.member_code, row.version), 0),
            secrets=secrets.get((row.member_code, row.version), 0),
        )
        for row in conn.execute(
            select(
                MemberKey.member_code,
                MemberKey.version,
                MemberKey.master_version,
                MemberKey.wrapped_key,
                MemberKey.created_at,
            ).order_by(MemberKey.member_code, MemberKey.version)
        )
    ]
    current_master = provider.current_master_version()
    in_use = [k.master_version for k in member_keys if not k.destroyed]
    masters = [
        MasterStatus(
            version=v,
            current=v == current_master,
            held=v in held_masters,
            member_keys=in_use.count(v),
        )
        for v in sorted(set(held_masters) | set(in_use))
    ]
    return KeyStatus(masters=masters, member_keys=member_keys)


def _record(session: Session, action: str, target: str, *reasons: str) -> None:
    entry = audit.Entry(action=action, decision="allow", target=target, reasons=reasons)
    audit.record(session, audit.OPERATOR, entry)


def rotate_member(session: Session, envelope: Envelope, member: str) -> int:
    """A new key version for `member`, wrapped by the current master key; new writes use it.

    API processes take it up within CURRENT_VERSION_TTL seconds. Older versions stay readable
    until `rewrap` has moved everything off them and they are retired.
    """
    latest = session.execute(
        select(MemberKey.version, MemberKey.wrapped_key)
        .where(MemberKey.member_code == member)
        .order_by(MemberKey.version.desc())
        .limit(1)
    ).first()
    if latest is None:
        raise KeyLifecycleError(f"member {member} has no key")
    if latest.wrapped_key is None:
        raise KeyLifecycleError(f"member {member} was removed: its keys are destroyed")
    version = int(latest.version) + 1
    master_version = envelope.provider.current_master_version()
    kek = crypto.new_key()
    session.add(
        MemberKey(
            member_code=member,
            version=version,
            master_version=master_version,
            wrapped_key=envelope.provider.wrap(
                master_version, kek, member_key_aad(member, version)
            ),
        )
    )
    _record(session, "key.rotate", f"member_key:{member}", f"version:{version}")
    return version


def rewrap_member_keys(session: Session, provider: KeyProvider, limit: int) -> int:
    """Re-wrap up to `limit` member keys held under an older master version; the count done."""
    current = provider.current_master_version()
    rows = session.execute(
        select(MemberKey.member_code, MemberKey.version, MemberKey.master_version)
        .where(MemberKey.wrapped_key.is_not(None), MemberKey.master_version != current)
        .order_by(MemberKey.member_code, MemberKey.version)
        .limit(limit)
        .with_for_update()
    ).all()
    done = 0
    for member, version, master_version in rows:
        wrapped = session.scalar(
            select(MemberKey.wrapped_key).where(
                MemberKey.member_code == member, MemberKey.version == version
            )
        )
        if wrapped is None:
            continue  # destroyed meanwhile (member removed)
        aad = member_key_aad(member, version)
        kek = provider.unwrap(master_version, wrapped, aad)
        session.execute(
            update(MemberKey)
            .where(MemberKey.member_code == member, MemberKey.version == version)
            .values(master_version=current, wrapped_key=provider.wrap(current, kek, aad))
        )
        done += 1
    return done


def _stale(
    current: dict[str, int], member: ColumnElement[str], version: ColumnElement[int]
) -> ColumnElement[bool]:
    return or_(*(and_(member == m, version < v) for m, v in current.items()))


def rewrap_data_keys(
    session: Session,
    envelope: Envelope,
    current: dict[str, int],
    after: tuple[str, int] | None,
    limit: int,
) -> tuple[int, set[tuple[str, int]], tuple[str, int] | None]:
    """Re-wrap up to `limit` data keys under their member's current version, in key order
    after `after`; (done, those refused as corrupted, the last key seen or None at the end)."""
    if not current:
        return 0, set(), None
    conn = session.connection()
    query = (
        select(
            _keys.report_id,
            _keys.version,
            _keys.key_member,
            _keys.key_version,
            _keys.wrapped_data_key,
        )
        .where(
            _keys.wrapped_data_key.is_not(None),
            _stale(current, _keys.key_member, _keys.key_version),
        )
        .order_by(_keys.report_id, _keys.version)
        .limit(limit)
        .with_for_update()
    )
    if after is not None:
        query = query.where(
            or_(
                _keys.report_id > after[0],
                and_(_keys.report_id == after[0], _keys.version > after[1]),
            )
        )
    rows = conn.execute(query).all()
    done, refused = 0, set()
    for report_id, version, member, old_version, wrapped in rows:
        aad = data_key_aad(report_id, version, member)
        new_version = current[member]
        try:
            key = crypto.unwrap_key(envelope.member_key(conn, member, old_version), wrapped, aad)
            new_kek = envelope.member_key(conn, member, new_version)
        except crypto.CorruptionError:
            # Corrupted, or its member removed meanwhile: left as it is for the operator to see
            # in `keys status`; a re-wrap never loses one.
            refused.add((report_id, version))
            continue
        conn.execute(
            update(_key_table)
            .where(
                _keys.report_id == report_id,
                _keys.version == version,
                _keys.key_version == old_version,
                _keys.wrapped_data_key.is_not(None),
            )
            .values(key_version=new_version, wrapped_data_key=crypto.wrap_key(new_kek, key, aad))
        )
        done += 1
    last = (rows[-1].report_id, rows[-1].version) if len(rows) == limit else None
    return done, refused, last


def rewrap_secrets(
    session: Session,
    envelope: Envelope,
    current: dict[str, int],
    after: str | None,
    limit: int,
) -> tuple[int, set[tuple[str, int]], str | None]:
    """Re-seal up to `limit` webhook secrets (current and previous) under their member's current
    version, in id order after `after`; (done, those refused as corrupted, the last id seen or
    None at the end)."""
    if not current:
        return 0, set(), None
    conn = session.connection()
    query = (
        select(
            _subs.id,
            _subs.member_code,
            _subs.secret_serial,
            _subs.secret_key_version,
            _subs.secret_ct,
            _subs.previous_key_version,
            _subs.previous_ct,
        )
        .where(
            or_(
                _stale(current, _subs.member_code, _subs.secret_key_version),
                and_(
                    _subs.previous_ct.is_not(None),
                    _stale(current, _subs.member_code, _subs.previous_key_version),
                ),
            )
        )
        .order_by(_subs.id)
        .limit(limit)
        .with_for_update()
    )
    if after is not None:
        query = query.where(_subs.id > after)
    rows = conn.execute(query).all()
    done, refused = 0, set()
    for row in rows:
        member, target = row.member_code, current.get(row.member_code)
        if target is None:
            continue
        values: dict[str, object] = {}
        sealed = (
            ("secret", row.secret_key_version, row.secret_ct, row.secret_serial),
            ("previous", row.previous_key_version, row.previous_ct, row.secret_serial - 1),
        )
        try:
            for name, version, blob, serial in sealed:
                if blob is None or version is None or version >= target:
                    continue
                aad = secret_aad(row.id, serial)
                secret = envelope.open_secret(conn, member, version, blob, aad)
                values[f"{name}_key_version"] = target
                values[f"{name}_ct"] = crypto.wrap_key(
                    envelope.member_key(conn, member, target), secret, aad
                )
        except crypto.CorruptionError:
            refused.add((row.id, 0))
            continue
        if values:
            conn.execute(
                update(_sub_table)
                .where(
                    _subs.id == row.id,
                    _subs.secret_serial == row.secret_serial,
                    _subs.secret_key_version == row.secret_key_version,
                )
                .values(**values)
            )
            done += 1
    return done, refused, rows[-1].id if len(rows) == limit else None


def retire_member_version(session: Session, member: str, version: int) -> None:
    """Destroy an old member key version once nothing is wrapped by it any more."""
    conn = session.connection()
    # Locked before anything is counted: a writer wrapping with this version holds it FOR
    # SHARE (Envelope._key_for_writing), so its key is either counted here or never written.
    row = session.get(MemberKey, (member, version), with_for_update=True)
    current = current_versions(conn).get(member)
    if row is None:
        raise KeyLifecycleError(f"member {member} has no key version {version}")
    if row.wrapped_key is None:
        raise KeyLifecycleError(f"key version {version} of {member} is already destroyed")
    if current == version:
        raise KeyLifecycleError(f"key version {version} of {member} is current; rotate first")
    # A process may go on wrapping new data keys with the version it read as current for up to
    # CURRENT_VERSION_TTL seconds after a rotation; destroying it before that could lose them.
    successor = session.get(MemberKey, (member, version + 1))
    if successor is not None:
        superseded = successor.created_at
        settled = superseded + timedelta(seconds=CURRENT_VERSION_TTL + RETIRE_MARGIN_SECONDS)
        if settled > utcnow():
            raise KeyLifecycleError(
                f"key version {version} of {member} was current until {superseded.isoformat()}; "
                f"writes may still use it: retire it after {settled.isoformat()}, once "
                "`tearline keys rewrap` has run"
            )
    data_keys = conn.scalar(
        select(func.count()).where(
            _keys.key_member == member,
            _keys.key_version == version,
            _keys.wrapped_data_key.is_not(None),
        )
    )
    secrets = _protected_secrets(conn).get((member, version), 0)
    if data_keys or secrets:
        raise KeyLifecycleError(
            f"key version {version} of {member} still wraps {data_keys} data key(s) and "
            f"{secrets} webhook secret(s); run `tearline keys rewrap` first"
        )
    row.wrapped_key, row.destroyed_at = None, utcnow()
    _record(session, "key.retire", f"member_key:{member}", f"version:{version}")


def master_in_use(conn: Connection, version: int) -> int:
    """How many live member keys the master version still wraps."""
    return int(
        conn.scalar(
            select(func.count()).where(
                MemberKey.master_version == version, MemberKey.wrapped_key.is_not(None)
            )
        )
        or 0
    )


def rewrap_pass(
    factory: sessionmaker[Session],
    provider: KeyProvider,
    envelope: Envelope,
    batch: int,
    totals: RewrapTotals,
    advance: Callable[[int], object] = lambda _: None,
) -> int:
    """One sweep: member keys, then data keys, then webhook secrets, one transaction per batch
    of `batch`; adds to `totals`, reports progress to `advance`; how many it moved."""
    done_before = totals.done
    while True:
        with transaction(factory) as session:
            moved = rewrap_member_keys(session, provider, batch)
        totals.member_keys += moved
        advance(moved)
        if moved < batch:
            break
    totals.data_keys += _sweep(factory, envelope, rewrap_data_keys, batch, totals, advance)
    totals.secrets += _sweep(factory, envelope, rewrap_secrets, batch, totals, advance)
    return totals.done - done_before


_Cursor = TypeVar("_Cursor")
_Rewrap = Callable[
    [Session, Envelope, dict[str, int], _Cursor | None, int],
    tuple[int, set[tuple[str, int]], _Cursor | None],
]


def _sweep(
    factory: sessionmaker[Session],
    envelope: Envelope,
    rewrap: _Rewrap[_Cursor],
    batch: int,
    totals: RewrapTotals,
    advance: Callable[[int], object],
) -> int:
    """Run `rewrap` batch after batch, each against the versions then current, from its cursor
    to the end; adds what it refused to `totals`; how many it moved."""
    cursor: _Cursor | None = None
    moved_in_all = 0
    while True:
        with transaction(factory) as session:
            current = current_versions(session.connection())
            moved, refused, cursor = rewrap(session, envelope, current, cursor, batch)
        moved_in_all += moved
        advance(moved + len(refused - totals.refused))
        totals.refused |= refused
        if cursor is None:
            return moved_in_all
