"""The envelope scheme: master key → one key per member → one data key per report version."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from app.db import Prepared
from app.keys.models import MemberKey
from app.keys.provider import KeyProvider
from app.kit import crypto
from app.kit.crypto import CorruptionError, SecretBytes

# Seconds a process goes by what it read of the member keys: which version is current, and
# that a version it unwrapped still exists.
CURRENT_VERSION_TTL = 10.0
# The clock of the caches, a name of its own so that tests can move it alone.
_monotonic = time.monotonic


class KeyDestroyed(CorruptionError):
    """The key needed is gone on purpose (purge or member removal): the content is unrecoverable."""


@dataclass(frozen=True)
class DataKey:
    """A report version's data key and the wrapped form stored beside its ciphertexts."""

    key: SecretBytes
    wrapped: bytes
    member: str
    member_key_version: int


def member_key_aad(member: str, version: int) -> bytes:
    return crypto.associated_data("member_keys", member, version)


def data_key_aad(report_id: str, version: int, originator: str) -> bytes:
    # The member key version is deliberately absent, so a re-wrap never touches content.
    return crypto.associated_data("report_versions.data_key", report_id, version, originator)


def field_aad(report_id: str, version: int, originator: str, field: str) -> bytes:
    """Associated data binding a field's ciphertext to its table, report, version and field."""
    return crypto.associated_data("report_versions", report_id, version, originator, field)


_HELD = Prepared(
    select(MemberKey.version)
    .where(
        MemberKey.member_code == bindparam("member"),
        MemberKey.version == bindparam("version"),
        MemberKey.wrapped_key.is_not(None),
    )
    .with_for_update(read=True)
)


class Envelope:
    """Wraps and unwraps keys; unwrapped member keys are cached per process."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self._member_keys: dict[tuple[str, int], tuple[SecretBytes, float]] = {}
        self._current: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def ensure_member_key(self, session: Session, member: str) -> int:
        """Create the member's first key if it has none; return its current version."""
        current = session.scalar(
            select(func.max(MemberKey.version)).where(MemberKey.member_code == member)
        )
        if current is not None:
            return int(current)
        kek = crypto.new_key()
        master_version = self.provider.current_master_version()
        session.add(
            MemberKey(
                member_code=member,
                version=1,
                master_version=master_version,
                wrapped_key=self.provider.wrap(master_version, kek, member_key_aad(member, 1)),
            )
        )
        return 1

    def _member_key(
        self, conn: Connection, member: str, version: int | None
    ) -> tuple[int, SecretBytes]:
        now = _monotonic()
        if version is None:
            # Which version is current is looked up at most every few seconds per process: a
            # rotation made elsewhere reaches new writes within that time (the older version
            # stays valid for reading until it is retired).
            current = self._current.get(member)
            if current is not None and current[1] > now:
                version = current[0]
        if version is not None:
            cached = self._member_keys.get((member, version))
            # An unwrapped key is used from memory for a few seconds, then its row is read
            # again: a key destroyed elsewhere (member removed, version retired) stops working
            # in every process within that time, not at its next restart.
            if cached is not None and cached[1] > now:
                return version, cached[0]
        stmt = select(MemberKey.version, MemberKey.master_version, MemberKey.wrapped_key).where(
            MemberKey.member_code == member
        )
        stmt = (
            stmt.where(MemberKey.version == version)
            if version is not None
            else stmt.order_by(MemberKey.version.desc()).limit(1)
        )
        row = conn.execute(stmt).first()
        if row is None:
            raise KeyDestroyed(f"no key for member {member}")
        if row.wrapped_key is None:
            with self._lock:
                self._member_keys.pop((member, row.version), None)
            raise KeyDestroyed(f"key of member {member} version {row.version} was destroyed")
        kek = self.provider.unwrap(
            row.master_version, row.wrapped_key, member_key_aad(member, row.version)
        )
        with self._lock:
            self._member_keys[(member, row.version)] = (kek, now + CURRENT_VERSION_TTL)
            if version is None:
                self._current[member] = (row.version, now + CURRENT_VERSION_TTL)
        return row.version, kek

    def member_key(self, conn: Connection, member: str, version: int) -> SecretBytes:
        """Member key `version` of `member`, unwrapped; KeyDestroyed if it is gone."""
        return self._member_key(conn, member, version)[1]

    def _key_for_writing(self, conn: Connection, member: str) -> tuple[int, SecretBytes]:
        """The member's current key, held for this transaction (shared row lock).

        A version taken from the per-process cache may have been retired, or the member
        removed, a moment ago: what it wraps now would be lost. The writer locks the row it
        wraps with (FOR SHARE), and retirement and removal lock it FOR UPDATE before they count
        and destroy, so either the writer waits and then finds it destroyed, or the destroyer
        waits and then counts the writer's key. On SQLite the one writer serialises them.
        """
        for attempt in range(2):
            key_version, kek = self._member_key(conn, member, None)
            if _HELD.first(conn, {"member": member, "version": key_version}) is not None:
                return key_version, kek
            # Destroyed since it was cached: forget what this process believed and look again.
            with self._lock:
                self._current.pop(member, None)
                self._member_keys.pop((member, key_version), None)
            if attempt:
                break
        raise KeyDestroyed(f"no live key for member {member}")

    def new_data_key(
        self, conn: Connection, report_id: str, version: int, originator: str
    ) -> DataKey:
        """A fresh data key for one report version, wrapped by the originator's current key."""
        key_version, kek = self._key_for_writing(conn, originator)
        key = crypto.new_key()
        wrapped = crypto.wrap_key(kek, key, data_key_aad(report_id, version, originator))
        return DataKey(key=key, wrapped=wrapped, member=originator, member_key_version=key_version)

    def open_data_key(
        self,
        conn: Connection,
        *,
        report_id: str,
        version: int,
        originator: str,
        member_key_version: int,
        wrapped: bytes | None,
    ) -> SecretBytes:
        """Unwrap a stored data key; CorruptionError if it was moved, altered or destroyed."""
        if wrapped is None:
            raise KeyDestroyed("data key destroyed")
        _, kek = self._member_key(conn, originator, member_key_version)
        return crypto.unwrap_key(kek, wrapped, data_key_aad(report_id, version, originator))

    def seal_secret(
        self, conn: Connection, member: str, secret: SecretBytes, aad: bytes
    ) -> tuple[int, bytes]:
        """Encrypt a member's own secret (a webhook signing secret) under its current key."""
        key_version, kek = self._key_for_writing(conn, member)
        return key_version, crypto.wrap_key(kek, secret, aad)

    def open_secret(
        self, conn: Connection, member: str, key_version: int, blob: bytes, aad: bytes
    ) -> SecretBytes:
        """Decrypt what seal_secret made; CorruptionError if it was moved or altered."""
        _, kek = self._member_key(conn, member, key_version)
        return crypto.unwrap_key(kek, blob, aad)
