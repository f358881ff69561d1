"""Points in time taken from requests: with a zone, and representable once in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        # 0001-01-01T00:00+01:00 is a valid time that UTC cannot hold: a 422, never a 500.
        raise ValueError("the time is out of range once converted to UTC") from exc


# A query or body time: a zone is required, and it is converted to UTC on the way in.
UTCInstant = Annotated[AwareDatetime, AfterValidator(_to_utc)]
