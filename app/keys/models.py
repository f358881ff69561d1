"""Per-member key-encryption keys, wrapped by the master key of the key provider."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class MemberKey(Base):
    __tablename__ = "member_keys"

    member_code: Mapped[str] = mapped_column(ForeignKey("members.code"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    master_version: Mapped[int] = mapped_column(Integer)
    # None once destroyed (member removed): everything it wrapped is then unrecoverable.
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
