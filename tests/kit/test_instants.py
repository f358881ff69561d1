"""Times taken from requests: RFC 3339 with a zone, held in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from app.kit.instants import UTCInstant

INSTANT: TypeAdapter[datetime] = TypeAdapter(UTCInstant)


class TestUTCInstant:
    def test_a_time_with_a_zone_is_held_in_utc(self) -> None:
        assert INSTANT.validate_python("2026-11-29T13:30:00+01:00") == datetime(
            2026, 11, 29, 12, 30, tzinfo=UTC
        )

    @pytest.mark.parametrize(
        "value",
        # Found by tests/test_fuzz.py: pydantic read these as Unix seconds, the document says
        # `date-time`.
        ["0.12619813615664333", "1.1326152113972419e-20", "1700000000", 1700000000, 0.5],
    )
    def test_a_number_is_not_a_time(self, value: object) -> None:
        with pytest.raises(ValidationError, match="expected an RFC 3339 date-time"):
            INSTANT.validate_python(value)

    @pytest.mark.parametrize("value", ["2026-11-29T12:00:00", "2026-11-29", "yesterday"])
    def test_a_time_without_a_zone_is_refused(self, value: str) -> None:
        with pytest.raises(ValidationError):
            INSTANT.validate_python(value)
