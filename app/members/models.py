"""Members (mirrored from the roster) and their clients with registered public keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Member(Base):
    """A row per roster member, kept in step with `policies/roster.yaml` at start-up."""

    __tablename__ = "members"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set by `tearline members remove`: its keys are destroyed and it is never active again.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    member_code: Mapped[str] = mapped_column(ForeignKey("members.code"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ClientKey(Base):
    """A client's registered public key; the service never holds a client's private key."""

    __tablename__ = "client_keys"

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    alg: Mapped[str] = mapped_column(String(8))
    public_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
