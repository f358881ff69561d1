"""Tests for app.kit.standard_webhooks, checked with the independent `standardwebhooks` library."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.kit.crypto import SecretBytes
from app.kit.standard_webhooks import headers, new_secret, secret_bytes, sign

BODY = json.dumps(
    {"id": "evt_1", "type": "report.created", "timestamp": 1, "data": {"report_id": "r-1"}}
).encode()
MSG_ID = "msg_2mXb8JZ0uD4h7cS1"

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def now() -> int:
    # The library refuses timestamps more than five minutes from its own clock.
    return int(time.time())


class TestNewSecret:
    def test_secret_has_prefix_and_32_bytes_of_standard_base64(self) -> None:
        secret = new_secret()
        assert secret.startswith("whsec_")
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        assert len(raw) == 32

    def test_secrets_are_fresh_each_time(self) -> None:
        assert len({new_secret() for _ in range(100)}) == 100

    def test_secret_round_trips_through_secret_bytes(self) -> None:
        secret = new_secret()
        raw = secret_bytes(secret).reveal()
        assert "whsec_" + base64.b64encode(raw).decode() == secret


class TestSecretBytes:
    def test_spec_vector_secret_decodes_to_24_bytes(self) -> None:
        assert len(secret_bytes(VECTOR_SECRET)) == 24

    def test_result_is_secret_bytes_that_hides_its_value(self) -> None:
        key = secret_bytes(new_secret())
        assert isinstance(key, SecretBytes)
        assert "***" in repr(key)

    @pytest.mark.parametrize(
        "secret",
        [
            pytest.param("", id="empty"),
            pytest.param("whsec_", id="prefix-only"),
            pytest.param(base64.b64encode(b"k" * 32).decode(), id="no-prefix"),
            pytest.param("WHSEC_" + base64.b64encode(b"k" * 32).decode(), id="prefix-case"),
            pytest.param("whsec_" + base64.b64encode(b"k" * 23).decode(), id="23-bytes"),
            pytest.param("whsec_" + base64.b64encode(b"k" * 65).decode(), id="65-bytes"),
            pytest.param("whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(), id="url-safe"),
            pytest.param("whsec_" + base64.b64encode(b"k" * 32).decode()[:-1], id="no-padding"),
            pytest.param("whsec_ " + base64.b64encode(b"k" * 32).decode(), id="space"),
            pytest.param("whsec_" + base64.b64encode(b"k" * 32).decode() + "\n", id="newline"),
        ],
    )
    def test_malformed_or_short_secret_is_refused(self, secret: str) -> None:
        with pytest.raises(ValueError, match="webhook secret"):
            secret_bytes(secret)

    def test_24_and_64_byte_secrets_are_accepted(self) -> None:
        for size in (24, 64):
            assert len(secret_bytes("whsec_" + base64.b64encode(b"k" * size).decode())) == size


class TestSign:
    def test_spec_vector_signature_is_reproduced(self) -> None:
        key = secret_bytes(VECTOR_SECRET)
        assert sign([key], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE

    def test_one_signature_per_secret_current_first(self) -> None:
        current, old = secret_bytes(new_secret()), secret_bytes(new_secret())
        both = sign([current, old], MSG_ID, 1700000000, BODY).split(" ")
        assert both == [
            sign([current], MSG_ID, 1700000000, BODY),
            sign([old], MSG_ID, 1700000000, BODY),
        ]
        assert all(part.startswith("v1,") for part in both)

    def test_signature_changes_with_the_timestamp(self) -> None:
        key = secret_bytes(new_secret())
        assert sign([key], MSG_ID, 1700000000, BODY) != sign([key], MSG_ID, 1700000001, BODY)

    def test_empty_secret_list_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            sign([], MSG_ID, now(), BODY)

    def test_short_secret_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 24"):
            sign([SecretBytes(b"k" * 23)], MSG_ID, now(), BODY)

    def test_secret_that_is_not_secret_bytes_is_refused(self) -> None:
        with pytest.raises(TypeError):
            sign([b"k" * 32], MSG_ID, now(), BODY)  # type: ignore[list-item]

    @pytest.mark.parametrize(
        "msg_id",
        [
            pytest.param("", id="empty"),
            pytest.param("msg 1", id="space"),
            pytest.param("msg\r\nx-injected: 1", id="crlf"),
            pytest.param("msg_é", id="non-ascii"),
            pytest.param("m" * 256, id="too-long"),
        ],
    )
    def test_id_unfit_for_a_header_is_refused(self, msg_id: str) -> None:
        with pytest.raises(ValueError, match="webhook id"):
            sign([secret_bytes(new_secret())], msg_id, now(), BODY)

    @pytest.mark.parametrize("timestamp", [-1, True, 1.5, "1700000000"])
    def test_timestamp_that_is_not_unix_seconds_is_refused(self, timestamp: object) -> None:
        with pytest.raises(ValueError, match="timestamp"):
            sign([secret_bytes(new_secret())], MSG_ID, timestamp, BODY)  # type: ignore[arg-type]

    def test_body_that_is_not_bytes_is_refused(self) -> None:
        with pytest.raises(TypeError, match="bytes"):
            sign([secret_bytes(new_secret())], MSG_ID, now(), BODY.decode())  # type: ignore[arg-type]


class TestHeaders:
    def test_headers_carry_id_timestamp_signature_and_json_type(self) -> None:
        key = secret_bytes(new_secret())
        sent = headers([key], MSG_ID, 1700000000, BODY)
        assert sent == {
            "webhook-id": MSG_ID,
            "webhook-timestamp": "1700000000",
            "webhook-signature": sign([key], MSG_ID, 1700000000, BODY),
            "content-type": "application/json",
        }

    def test_library_verifies_with_the_current_secret(self) -> None:
        secret = new_secret()
        sent = headers([secret_bytes(secret)], MSG_ID, now(), BODY)
        assert Webhook(secret).verify(BODY, sent) == json.loads(BODY)

    def test_library_verifies_with_either_secret_during_a_rotation_overlap(self) -> None:
        current, old = new_secret(), new_secret()
        sent = headers([secret_bytes(current), secret_bytes(old)], MSG_ID, now(), BODY)
        assert len(sent["webhook-signature"].split(" ")) == 2
        assert Webhook(current).verify(BODY, sent) == json.loads(BODY)
        assert Webhook(old).verify(BODY, sent) == json.loads(BODY)

    def test_library_refuses_the_old_secret_once_the_overlap_ends(self) -> None:
        current, old = new_secret(), new_secret()
        sent = headers([secret_bytes(current)], MSG_ID, now(), BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(BODY, sent)

    def test_library_refuses_a_tampered_body(self) -> None:
        secret = new_secret()
        sent = headers([secret_bytes(secret)], MSG_ID, now(), BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY.replace(b"r-1", b"r-2"), sent)

    def test_library_refuses_a_changed_id(self) -> None:
        secret = new_secret()
        sent = headers([secret_bytes(secret)], MSG_ID, now(), BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, {**sent, "webhook-id": MSG_ID + "x"})

    def test_library_refuses_a_changed_timestamp(self) -> None:
        secret = new_secret()
        timestamp = now()
        sent = headers([secret_bytes(secret)], MSG_ID, timestamp, BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, {**sent, "webhook-timestamp": str(timestamp - 1)})

    def test_library_refuses_another_secret(self) -> None:
        sent = headers([secret_bytes(new_secret())], MSG_ID, now(), BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(new_secret()).verify(BODY, sent)

    def test_library_refuses_a_stale_timestamp_so_each_attempt_needs_a_fresh_one(self) -> None:
        secret = new_secret()
        sent = headers([secret_bytes(secret)], MSG_ID, now() - 6 * 60, BODY)
        with pytest.raises(WebhookVerificationError, match="too old"):
            Webhook(secret).verify(BODY, sent)

    def test_empty_secret_list_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            headers([], MSG_ID, now(), BODY)
