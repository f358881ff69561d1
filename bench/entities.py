"""Entities for seeded reports: five per report, each a pure function of (type, number).

A seeded report draws one number per type from `POOL`; the search benchmark draws numbers the
same way and rebuilds the values, so it can search for entities that are stored (and for ones
that are not) without reading anything back. At 1,000,000 reports a value is held by about one
report, as an account or a phone number would be; at 10,000 most values are held by none.
"""

from __future__ import annotations

import hashlib
import random

POOL = 1_000_000
TYPES = ("person", "iban", "phone", "wallet", "vessel")


def iban(number: int) -> str:
    """A valid Iraqi IBAN (23 characters, mod-97 check digits), printed in groups of four."""
    bban = f"NBIQ{number:015d}"
    rearranged = bban + "IQ00"
    digits = "".join(str(int(c, 36)) for c in rearranged)
    check = 98 - int(digits) % 97
    text = f"IQ{check:02d}{bban}"
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def phone(number: int) -> str:
    """An Iraqi mobile number as a liaison might type it."""
    return f"+964 770 {number // 10_000:03d} {number % 10_000:04d}"


def wallet(number: int) -> str:
    """An Ethereum address."""
    return "0x" + hashlib.sha256(f"wallet {number}".encode()).hexdigest()[:40]


def vessel(number: int) -> str:
    """An IMO number with its check digit (weights 7..2 over the first six digits)."""
    base = f"{100_000 + number % 900_000:06d}"
    check = sum(int(d) * w for d, w in zip(base, range(7, 1, -1), strict=True)) % 10
    return f"IMO {base}{check}"


def person(number: int) -> str:
    return f"Person {number}"


_MAKERS = {"person": person, "iban": iban, "phone": phone, "wallet": wallet, "vessel": vessel}


def value(entity_type: str, number: int) -> str:
    return _MAKERS[entity_type](number)


def draw(rng: random.Random) -> list[dict[str, str]]:
    """The five entities of one report."""
    return [{"type": t, "value": value(t, rng.randrange(POOL))} for t in TYPES]
