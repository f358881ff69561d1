"""Single-use record of client assertion ids."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class UsedAssertion(Base):
    """A client assertion `jti` already exchanged; the primary key makes reuse fail atomically."""

    __tablename__ = "used_assertions"

    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
