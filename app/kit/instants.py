"""Points in time taken from requests: with a zone, and representable once in UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _written_as_a_date_time(value: object) -> object:
    # pydantic also reads a number ("0.5", "1700000000") as Unix seconds in UTC: a time without
    # a zone, which the document's `date-time` (RFC 3339) does not allow either.
    if isinstance(value, datetime) or (isinstance(value, str) and _DATE.match(value)):
        return value
    raise ValueError("expected an RFC 3339 date-time")


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        # 0001-01-01T00:00+01:00 is a valid time that UTC cannot hold: a 422, never a 500.
        raise ValueError("the time is out of range once converted to UTC") from exc


# A query or body time: a zone is required, and it is converted to UTC on the way in.
UTCInstant = Annotated[
    AwareDatetime, BeforeValidator(_written_as_a_date_time), AfterValidator(_to_utc)
]
