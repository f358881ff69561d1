"""Opaque (timestamp, id) cursors."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from app.kit.pagination import decode_position, encode_position


class TestPositions:
    def test_a_position_survives_the_round_trip(self) -> None:
        stamp = datetime(2026, 11, 29, 12, 30, 1, 123456, tzinfo=UTC)
        assert decode_position(encode_position(stamp, "abc")) == (stamp, "abc")

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "not base64 !",
            base64.urlsafe_b64encode(b'["2026-11-29T12:00:00", "x"]').decode(),  # no zone
            base64.urlsafe_b64encode(b'["2026-11-29T12:00:00+00:00", 5]').decode(),
            base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        ],
    )
    def test_anything_else_is_refused_with_value_error(self, cursor: str) -> None:
        with pytest.raises(ValueError, match="not a cursor of ours"):
            decode_position(cursor)
