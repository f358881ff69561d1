"""Deliveries end to end: real receivers on loopback, verified with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwe as jose_jwe
from jose.utils import long_to_base64
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import bootstrap
from app.webhooks.dispatcher import Dispatcher
from app.webhooks.models import Subscription
from tests.conftest import World, drop_database, make_world, report_body
from tests.policy import test_reload as reloading
from tests.webhooks.conftest import (
    Receiver,
    _handler,
    dispatch,
    dispatch_until,
    subscribe,
)


def deliveries(world: World, code: str, webhook_id: str) -> list[dict[str, Any]]:
    response = world.http.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=world.headers(code))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def status_of(world: World, code: str, webhook_id: str) -> str | None:
    """The status of the subscription's newest delivery, if it has one."""
    items = deliveries(world, code, webhook_id)
    return items[0]["status"] if items else None


def feed(world: World, code: str) -> list[dict[str, Any]]:
    response = world.http.get("/v1/sync", params={"limit": 500}, headers=world.headers(code))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def subscription_status(world: World, webhook_id: str) -> str:
    with world.state.engine.connect() as conn:
        return str(conn.scalar(select(Subscription.status).where(Subscription.id == webhook_id)))


class TestSigning:
    def test_delivery_verifies_with_the_standard_webhooks_library(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(fresh_world, "DEU", receiver.url())
        report = fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        verified = Webhook(sub["secret"]).verify(got.body, got.headers)
        assert verified["type"] == "report.created"
        assert verified["data"] == {
            "report_id": report["id"],
            "originator": "USA",
            "version": 1,
            "topics": ["MOV.HAW", "REV.OIL"],
            "access": "full",
        }
        assert got.headers["webhook-id"] == verified["id"]
        assert got.headers["content-type"] == "application/json"

    def test_a_tampered_body_or_another_secret_fails_verification(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(fresh_world, "DEU", receiver.url())
        other = subscribe(fresh_world, "FRA", receiver.url("/other"))
        fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        with pytest.raises(WebhookVerificationError):
            Webhook(sub["secret"]).verify(got.body.replace(b"USA", b"GBR"), got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(other["secret"]).verify(got.body, got.headers)

    def test_retries_keep_the_webhook_id_and_sign_a_fresh_timestamp(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", (503, {"Retry-After": "1"}, b"busy"))
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch_until(quick_world, lambda: len(receiver.at("/hook")) == 2)
        first, second = receiver.at("/hook")
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
        for got in (first, second):
            Webhook(sub["secret"]).verify(got.body, got.headers)

    def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(fresh_world, "DEU", receiver.url())
        url = f"/v1/webhooks/{sub['id']}/rotate-secret"
        rotated = fresh_world.http.post(
            url, json={"overlap_seconds": 3600}, headers=fresh_world.headers("DEU")
        ).json()
        fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        [during] = receiver.at("/hook")
        Webhook(sub["secret"]).verify(during.body, during.headers)
        Webhook(rotated["secret"]).verify(during.body, during.headers)

        # A second rotation without overlap: only the newest secret signs from now on.
        newest = fresh_world.http.post(
            url, json={"overlap_seconds": 0}, headers=fresh_world.headers("DEU")
        ).json()
        assert newest["previous_secret_expires_at"] is None
        fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        after = receiver.at("/hook")[1]
        Webhook(newest["secret"]).verify(after.body, after.headers)
        for old in (sub["secret"], rotated["secret"]):
            with pytest.raises(WebhookVerificationError):
                Webhook(old).verify(after.body, after.headers)


class TestRotationOverlap:
    def test_the_old_secret_stops_signing_when_its_overlap_ends(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(fresh_world, "DEU", receiver.url())
        rotated = fresh_world.http.post(
            f"/v1/webhooks/{sub['id']}/rotate-secret",
            json={"overlap_seconds": 1},
            headers=fresh_world.headers("DEU"),
        ).json()
        time.sleep(1.2)
        fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        Webhook(rotated["secret"]).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(sub["secret"]).verify(got.body, got.headers)
        assert got.headers["webhook-signature"].count("v1,") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def late_receiver() -> Iterator[tuple[int, list[Receiver]]]:
    """A port where nothing listens yet; `start()` puts a receiver there later."""
    port = _free_port()
    started: list[Receiver] = []
    yield port, started
    for rec in started:
        rec.server.shutdown()
        rec.server.server_close()


def _start_on(port: int, started: list[Receiver]) -> Receiver:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(Receiver.__new__(Receiver)))
    rec = Receiver(server=server)
    server.RequestHandlerClass = _handler(rec)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started.append(rec)
    return rec


class TestFailures:
    def test_a_receiver_that_was_down_gets_the_event_once_it_is_up(
        self, tmp_path: Path, late_receiver: tuple[int, list[Receiver]]
    ) -> None:
        # Retries enough that a loaded machine cannot exhaust them before the receiver is up.
        world = make_world(tmp_path, webhook_retry_schedule=(0.2,) * 50)
        try:
            self._down_then_up(world, late_receiver)
        finally:
            world.close()
            drop_database(world.settings.resolved_database_url)

    def _down_then_up(self, quick_world: World, late_receiver: tuple[int, list[Receiver]]) -> None:
        port, started = late_receiver
        sub = subscribe(quick_world, "DEU", f"http://127.0.0.1:{port}/hook")
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch(quick_world)
        [pending] = deliveries(quick_world, "DEU", sub["id"])
        assert pending["status"] == "pending"
        assert pending["attempt_log"][0]["status_code"] is None
        assert pending["attempt_log"][0]["error"]

        rec = _start_on(port, started)
        dispatch_until(quick_world, lambda: len(rec.at("/hook")) == 1)
        Webhook(sub["secret"]).verify(rec.at("/hook")[0].body, rec.at("/hook")[0].headers)
        [done] = deliveries(quick_world, "DEU", sub["id"])
        assert done["status"] == "succeeded"
        assert done["attempt_log"][-1]["status_code"] == 200
        assert all(a["status_code"] is None for a in done["attempt_log"][:-1])

    def test_server_errors_are_retried_and_every_attempt_is_recorded(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", (500, {}, b"secret internal detail"), (502, {}, b""))
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch_until(
            quick_world,
            lambda: status_of(quick_world, "DEU", sub["id"]) == "succeeded",
        )
        [done] = deliveries(quick_world, "DEU", sub["id"])
        assert [a["status_code"] for a in done["attempt_log"]] == [500, 502, 200]
        assert all(a["duration_ms"] >= 0 for a in done["attempt_log"])
        # The receiver's answers are never shown to the subscriber.
        listing = quick_world.http.get(
            f"/v1/webhooks/{sub['id']}/deliveries", headers=quick_world.headers("DEU")
        ).text
        assert "secret internal detail" not in listing
        assert len({r.headers["webhook-id"] for r in receiver.at("/hook")}) == 1

    def test_a_redirect_is_a_failure_and_is_never_followed(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", (307, {"Location": receiver.url("/elsewhere")}, b""))
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch_until(quick_world, lambda: len(receiver.at("/hook")) == 2)
        assert receiver.at("/elsewhere") == []
        [done] = deliveries(quick_world, "DEU", sub["id"])
        assert [a["status_code"] for a in done["attempt_log"]] == [307, 200]

    def test_gone_disables_the_subscription_and_tells_its_owner(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", (410, {}, b""))
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch(quick_world)
        assert subscription_status(quick_world, sub["id"]) == "disabled"
        shown = quick_world.http.get(
            f"/v1/webhooks/{sub['id']}", headers=quick_world.headers("DEU")
        ).json()
        assert (shown["status"], shown["disabled_reason"]) == ("disabled", "gone")
        told = [e for e in feed(quick_world, "DEU") if e["type"] == "webhook.disabled"]
        assert [e["data"] for e in told] == [{"webhook_id": sub["id"], "reason": "gone"}]
        assert not any(e["type"] == "webhook.disabled" for e in feed(quick_world, "FRA"))
        # Nothing more is sent to it.
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch(quick_world)
        assert len(receiver.at("/hook")) == 1

    def test_retry_after_is_honoured(self, quick_world: World, receiver: Receiver) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", (429, {"Retry-After": "2"}, b""))
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch(quick_world)
        [waiting] = deliveries(quick_world, "DEU", sub["id"])
        tried = datetime.fromisoformat(waiting["attempt_log"][0]["started_at"])
        due = datetime.fromisoformat(waiting["next_attempt_at"])
        assert (due - tried).total_seconds() >= 2
        dispatch(quick_world)
        assert len(receiver.at("/hook")) == 1

    def test_a_slow_receiver_times_out_and_the_delivery_is_retried(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", 2.5)
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch_until(
            quick_world,
            lambda: status_of(quick_world, "DEU", sub["id"]) == "succeeded",
        )
        [done] = deliveries(quick_world, "DEU", sub["id"])
        first = done["attempt_log"][0]
        assert first["error"] == "timeout"
        assert first["duration_ms"] < 2400

    def test_exhausted_retries_fail_and_a_manual_retry_sends_again_with_the_same_id(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(quick_world, "DEU", receiver.url())
        receiver.answer("/hook", *[(500, {}, b"")] * 4)
        quick_world.submit("USA", releasable_to=["ALL"])
        dispatch_until(quick_world, lambda: status_of(quick_world, "DEU", sub["id"]) == "failed")
        [failed] = deliveries(quick_world, "DEU", sub["id"])
        # The first attempt and one per step of the schedule.
        assert failed["attempts"] == 4
        retried = quick_world.http.post(
            f"/v1/webhooks/{sub['id']}/deliveries/{failed['id']}/retry",
            headers=quick_world.headers("DEU"),
        )
        assert retried.status_code == 202, retried.text
        dispatch(quick_world)
        [done] = deliveries(quick_world, "DEU", sub["id"])
        assert done["status"] == "succeeded"
        ids = {r.headers["webhook-id"] for r in receiver.at("/hook")}
        assert len(receiver.at("/hook")) == 5
        assert len(ids) == 1

    def test_a_subscription_failing_for_the_configured_period_is_disabled(
        self, tmp_path: Path, receiver: Receiver
    ) -> None:
        world = make_world(
            tmp_path,
            webhook_retry_schedule=(0.05,) * 20,
            webhook_disable_after_seconds=0.3,
        )
        try:
            sub = subscribe(world, "DEU", receiver.url())
            receiver.default = (500, {}, b"")
            world.submit("USA", releasable_to=["ALL"])
            dispatch_until(world, lambda: subscription_status(world, sub["id"]) == "disabled")
            shown = world.http.get(f"/v1/webhooks/{sub['id']}", headers=world.headers("DEU"))
            assert shown.json()["disabled_reason"] == "failing"
            [failed] = deliveries(world, "DEU", sub["id"])
            assert failed["status"] == "failed"
            told = [e for e in feed(world, "DEU") if e["type"] == "webhook.disabled"]
            assert told[0]["data"] == {"webhook_id": sub["id"], "reason": "failing"}
        finally:
            world.close()
            drop_database(world.settings.resolved_database_url)


class TestWorkers:
    def test_two_workers_never_send_a_delivery_twice(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        codes = ["DEU", "FRA", "GBR", "JPN"]
        subs = {code: subscribe(fresh_world, code, receiver.url(f"/{code}")) for code in codes}
        for _ in range(15):
            fresh_world.submit("USA", releasable_to=["ALL"])
        # Two workers as two processes would be: each with its own state and connections.
        states = [bootstrap.build_state(fresh_world.settings) for _ in range(2)]
        workers = [Dispatcher(s, concurrency=4) for s in states]
        errors: list[BaseException] = []

        def work(d: Dispatcher) -> None:
            try:
                asyncio.run(d.run_until_idle())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(d,)) for d in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in states:
            s.db.dispose()
        assert errors == []
        for code in codes:
            got = receiver.at(f"/{code}")
            counts = Counter(r.headers["webhook-id"] for r in got)
            assert len(counts) == 15, code
            assert set(counts.values()) == {1}, code
            for r in got:
                Webhook(subs[code]["secret"]).verify(r.body, r.headers)
        assert sum(d.tally.sent for d in workers) == 60


class TestNeedToKnow:
    def test_a_subscriber_never_receives_events_of_reports_it_may_not_read(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        subscribe(
            fresh_world,
            "NZL",
            receiver.url(),
            events=["report.created", "report.updated", "report.revoked", "match.found"],
        )
        hidden = fresh_world.submit("USA", releasable_to=["CHAIRS"], summary=None)
        shared = fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        seen = {r.json["data"]["report_id"] for r in receiver.at("/hook")}
        assert shared["id"] in seen
        assert hidden["id"] not in seen
        assert hidden["id"].encode() not in b"".join(r.body for r in receiver.at("/hook"))

    def test_lost_access_withholds_the_event_and_the_withdrawal_reaches_former_readers(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        sub = subscribe(
            fresh_world, "DEU", receiver.url(), events=["report.created", "report.revoked"]
        )
        report = fresh_world.submit("USA", releasable_to=["ALL"])
        revoked = fresh_world.http.post(
            f"/v1/reports/{report['id']}/revoke",
            json={"reason": "source burnt"},
            headers=fresh_world.headers("USA"),
        )
        assert revoked.status_code == 200, revoked.text
        dispatch(fresh_world)
        got = [r.json for r in receiver.at("/hook")]
        assert [e["type"] for e in got] == ["report.revoked"]
        assert got[0]["data"] == {
            "report_id": report["id"],
            "originator": "USA",
            "version": 1,
            "access": "none",
        }
        # The withheld delivery is not even listed.
        assert [d["event_type"] for d in deliveries(fresh_world, "DEU", sub["id"])] == [
            "report.revoked"
        ]

    def test_a_revocation_reaches_no_member_that_could_not_read_the_report(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        subscribe(fresh_world, "NZL", receiver.url(), events=["report.revoked"])
        report = fresh_world.submit("USA", releasable_to=["CHAIRS"], summary=None)
        fresh_world.http.post(
            f"/v1/reports/{report['id']}/revoke",
            json={"reason": "x"},
            headers=fresh_world.headers("USA"),
        )
        dispatch(fresh_world)
        assert receiver.at("/hook") == []

    def test_topic_filters_take_branches_and_leaves(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        subscribe(fresh_world, "DEU", receiver.url("/rev"), topics=["REV"])
        subscribe(fresh_world, "DEU", receiver.url("/haw"), topics=["MOV.HAW"])
        oil = fresh_world.submit("USA", topics=["REV.OIL"])
        hawala = fresh_world.submit("USA", topics=["MOV.HAW"])
        dispatch(fresh_world)
        assert [r.json["data"]["report_id"] for r in receiver.at("/rev")] == [oil["id"]]
        assert [r.json["data"]["report_id"] for r in receiver.at("/haw")] == [hawala["id"]]

    def test_a_member_losing_access_learns_nothing_of_the_new_topics_through_its_filters(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        events = ["report.updated"]
        subscribe(fresh_world, "DEU", receiver.url("/old"), events=events, topics=["REV"])
        subscribe(fresh_world, "DEU", receiver.url("/new"), events=events, topics=["MOV"])
        subscribe(fresh_world, "DEU", receiver.url("/other"), events=events, topics=["CTR"])
        report = fresh_world.submit("USA", topics=["REV.OIL"], releasable_to=["ALL"])
        changed = fresh_world.http.put(
            f"/v1/reports/{report['id']}",
            json=report_body(topics=["MOV.HAW"], releasable_to=["CHAIRS"], summary=None),
            headers=fresh_world.headers("USA", **{"If-Match": '"1"'}),
        )
        assert changed.status_code == 200, changed.text
        dispatch(fresh_world)
        got = {
            path: [r.json["data"] for r in receiver.at(path)] for path in ("/old", "/new", "/other")
        }
        # Every filter alike: which one matches would tell DEU the report's topics now.
        assert got["/old"] == got["/new"] == got["/other"]
        assert len(got["/old"]) == 1
        assert "topics" not in got["/old"][0]
        assert got["/old"][0]["access"] not in ("full", "tearline")

    def test_events_before_a_subscription_existed_are_not_delivered(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        fresh_world.submit("USA", releasable_to=["ALL"])
        subscribe(fresh_world, "DEU", receiver.url())
        later = fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        assert [r.json["data"]["report_id"] for r in receiver.at("/hook")] == [later["id"]]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": long_to_base64(numbers.n).decode(),
        "e": long_to_base64(numbers.e).decode(),
        "kid": "deu-sync-1",
    }


def _open(token: str, key: rsa.RSAPrivateKey) -> Any:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return json.loads(jose_jwe.decrypt(token, pem))


class TestJweFormat:
    def test_content_is_the_report_at_the_subscribers_level_encrypted_to_its_key(
        self, fresh_world: World, receiver: Receiver, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        subscribe(
            fresh_world,
            "DEU",
            receiver.url(),
            format="jwe",
            encryption_jwk=_public_jwk(rsa_key),
        )
        report = fresh_world.submit("USA", releasable_to=["ALL"])
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        token = got.json["data"]["content"]
        assert report["title"].encode() not in got.body
        header = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[0] + "=="))
        assert (header["alg"], header["enc"], header["kid"]) == (
            "RSA-OAEP-256",
            "A256GCM",
            "deu-sync-1",
        )
        as_read = fresh_world.get("DEU", report["id"]).json()
        assert _open(token, rsa_key) == as_read

    def test_tearline_readers_get_only_the_tearline(
        self, fresh_world: World, receiver: Receiver, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        subscribe(
            fresh_world, "NZL", receiver.url(), format="jwe", encryption_jwk=_public_jwk(rsa_key)
        )
        report = fresh_world.submit("USA", releasable_to=["CHAIRS"])
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        assert got.json["data"]["access"] == "tearline"
        content = _open(got.json["data"]["content"], rsa_key)
        assert content["summary"] == report["summary"]
        assert "title" not in content
        assert "body" not in content

    def test_tlp_red_content_never_leaves(
        self, fresh_world: World, receiver: Receiver, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        subscribe(
            fresh_world, "DEU", receiver.url(), format="jwe", encryption_jwk=_public_jwk(rsa_key)
        )
        report = fresh_world.submit("USA", releasable_to=["DEU"], tlp="RED")
        dispatch(fresh_world)
        [got] = receiver.at("/hook")
        assert got.json["data"]["report_id"] == report["id"]
        assert "content" not in got.json["data"]
        assert report["summary"].encode() not in got.body


class TestPolicyReload:
    def test_an_event_waits_for_re_decision_rather_than_being_passed_over(
        self,
        reloadable: World,
        policies: Path,
        receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        world = reloadable
        subscribe(world, "DEU", receiver.url())
        report = world.submit("USA", releasable_to=["ALL"])
        # A bundle change that does not concern DEU; its re-decision is held back.
        reloading.lower_clearance(policies, "NLD", "RESTRICTED")
        monkeypatch.setattr(world.state.redecider, "kick", lambda: None)
        assert reloading.reload(world).status_code == 200
        dispatch(world)
        assert receiver.at("/hook") == []
        monkeypatch.undo()

        async def redecide() -> None:
            world.state.redecider.kick()
            await world.state.redecider.wait()

        world.http.portal.call(redecide)  # type: ignore[union-attr]
        dispatch(world)
        assert [r.json["data"]["report_id"] for r in receiver.at("/hook")] == [report["id"]]
