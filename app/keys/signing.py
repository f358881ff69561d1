"""The service's signing keys as one process uses them.

A new signing key is published in the JWKS as soon as it is added, but signs only from its
activation time on (`tearline keys rotate --signing`), so that everyone who verifies (this
service's other processes, partners checking audit checkpoints) has it before the first token or
checkpoint it signs. A retired key keeps its public half in the JWKS for good: checkpoints it
signed stay verifiable. Each process re-reads the local keyring when the file changes (checked at
most every few seconds), and at once when a token names a kid it does not know yet.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from app.db import utcnow
from app.keys.provider import KeyProvider, KeyringError, LocalKeyring
from app.kit import jwt
from app.kit.jwt import SigningKey, VerificationKey

RECHECK_SECONDS = 5.0
# The clock of the caches, a name of its own so that tests can move it alone.
_monotonic = time.monotonic

log = logging.getLogger("tearline.keys")


class ServiceKeys:
    """The key that signs now, every key that verifies, and the JWKS publishing them."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._lock = threading.Lock()
        self._next_check = _monotonic() + RECHECK_SECONDS
        self._load()

    def _load(self) -> None:
        entries = self._provider.signing_entries()
        self._entries = entries
        signers = [
            (SigningKey.from_pem(e.kid, e.private_pem), e.activates_at)
            for e in entries
            if e.private_pem is not None
        ]
        if not signers:
            raise ValueError("the key provider holds no service signing key")
        verifiers = {e.kid: VerificationKey.from_pem(e.kid, "ES256", e.public_pem) for e in entries}
        # A retired key verifies what it signed before (checkpoints), never a token: deleting
        # its private half must also end whatever a stolen copy of it could still sign.
        usable = {e.kid: verifiers[e.kid] for e in entries if e.private_pem is not None}
        # Swapped in whole: a request on another thread sees the old set or the new one.
        self._signers, self._verifiers, self._token_verifiers = signers, verifiers, usable

    def _refresh(self, *, now: bool = False) -> None:
        moment = _monotonic()
        if not now and moment < self._next_check:
            return
        self._next_check = moment + RECHECK_SECONDS
        provider = self._provider
        with self._lock:
            try:
                if isinstance(provider, LocalKeyring) and provider.changed_on_disk():
                    provider.reload()
                # Changed on disk by another process, or through this very provider object.
                if provider.signing_entries() != self._entries:
                    self._load()
            except (KeyringError, ValueError) as exc:
                # A keyring being edited, or left unreadable: keep serving with the keys held
                # (the message names the file and the problem, never key material).
                log.error("keyring not reloaded: %s", exc)

    def current(self, at: datetime | None = None) -> SigningKey:
        """The newest key whose activation time has come."""
        self._refresh()
        moment = at or utcnow()
        for key, activates_at in self._signers:
            if activates_at is None or activates_at <= moment:
                return key
        # Every key is still pending (a keyring edited by hand): the oldest one signs.
        return self._signers[-1][0]

    def resolve(self, kid: str) -> VerificationKey | None:
        """The key that verifies an access token signed as `kid` (pending or active; never a
        retired one), or None."""
        self._refresh()
        found = self._token_verifiers.get(kid)
        if found is None:
            self._refresh(now=True)
            found = self._token_verifiers.get(kid)
        return found

    def verifiers(self) -> dict[str, VerificationKey]:
        """Every verification key by kid, retired ones too (for checkpoints)."""
        self._refresh()
        return dict(self._verifiers)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set: every published key, the one signing now first."""
        current = self.current().kid
        keys = sorted(self._verifiers.values(), key=lambda k: k.kid != current)
        return jwt.jwks(keys)
