"""Events, stored in the transaction of the change they describe (the transactional outbox)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Event(Base):
    """One event, in commit order of its id.

    `recipient` names the one member an event is for (a match alert, an access request); for
    events about a report that every entitled member may see, it is None and who receives it is
    decided at delivery time. `data` holds only ids and codes, never report content.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    recipient: Mapped[str | None] = mapped_column(ForeignKey("members.code"))
    report_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_events_recipient", "recipient", "id"),
        Index("ix_events_report", "report_id", "id"),
    )
