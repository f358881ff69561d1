"""Canonical forms of report entities, computed before they are blind-indexed.

The blind index stores a keyed HMAC of `normalize(entity_type, value)`, so two spellings of one
entity must give the same string and two entities must not. The output is stored (hashed), so the
rules here are a storage format: changing any rule, table or library version that alters an output
requires `tearline search reindex`.

Per type:

- iban: compact upper-case form, checked for its country's length and format and mod-97.
- phone: E.164, from numbers written with `+` or `00` (a national trunk `(0)` is dropped).
- email: lower-case; a non-ASCII domain is IDNA-encoded (stdlib codec, IDNA 2003).
- wallet: `eth:`, `btc:`, `trx:` or `other:` followed by the address.
- vessel: `IMO` + 7 digits when the value holds an IMO number, else `name:` + the folded name.
- account, document: upper-case letters and digits only.
- person, organization: folded tokens joined by one space (see `_fold_name`).
- address: case and diacritics folded, punctuation as spaces.

Names are folded within a script: Arabic spellings are folded among themselves and Latin
transliterations among themselves, but an Arabic-script name is not matched to its Latin
transliteration. An article standing before another word is dropped, so "Al Gore" folds to "gore".
"""

# ruff: noqa: RUF001, RUF003 -- the tables and their comments hold look-alike letters on purpose
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import imo as stdnum_imo
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError

ENTITY_TYPES: tuple[str, ...] = (
    "person",
    "organization",
    "account",
    "iban",
    "phone",
    "email",
    "wallet",
    "vessel",
    "document",
    "address",
)


class InvalidEntity(ValueError):
    """The value cannot be an entity of its type (e.g. an IBAN failing its mod-97 check).

    str(exc) is a short English reason fit for an API error message; it never repeats the value.
    """


def normalize(entity_type: str, value: str) -> str:
    """The canonical form of `value` as an entity of `entity_type`; InvalidEntity if it is none.

    An unknown `entity_type` is a programming error: plain ValueError, not InvalidEntity.
    """
    try:
        normalizer = _NORMALIZERS[entity_type]
    except KeyError:
        raise ValueError(f"unknown entity type {entity_type!r}") from None
    return normalizer(value.strip())


# --- Character folding shared by names, addresses and identifiers -------------------------------

_HYPHENS = r"\-" + "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
# Apostrophes and the ayn/hamza marks of transliteration (ʿ ʾ ʻ ʼ ` ´ ...). They are mapped to
# "'" before NFKC, which would otherwise turn "´" into a space and a combining accent.
_APOSTROPHES = re.compile("[\u2018\u2019\u201b\u02bc\u02bb\u02bf\u02be\u02b9`\u00b4\u2032\uff07]")

_ARABIC_FOLD: dict[int, str | None] = {
    **dict.fromkeys(range(0x064B, 0x0660)),  # harakat, including hamza/madda marks
    0x0670: None,  # superscript alef
    0x0640: None,  # tatweel
    **dict.fromkeys(range(0x06D6, 0x06EE)),  # Quranic annotation signs
    **{ord(alef): "\u0627" for alef in "\u0623\u0625\u0622\u0671"},  # أ إ آ ٱ → ا
    ord("\u0649"): "\u064a",  # ى → ي
    ord("\u0629"): "\u0647",  # ة → ه
    ord("\u0624"): "\u0648",  # ؤ → و
    ord("\u0626"): "\u064a",  # ئ → ي
    ord("\u06cc"): "\u064a",  # Persian ی → ي
    ord("\u06a9"): "\u0643",  # Persian ک → ك
}

# Latin letters that carry their diacritic in the letter itself, so NFKD cannot strip it.
_LATIN_LETTERS = str.maketrans(
    {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"}
)


def _ascii_digits(text: str) -> str:
    if text.isascii():  # the common case, and the only digits it can hold are ASCII already
        return text
    return "".join(str(unicodedata.decimal(char)) if char.isdecimal() else char for char in text)


def _is_mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")


def _fold_characters(text: str) -> str:
    """NFKC, ASCII digits, Arabic letter forms, case fold, and Latin diacritics removed.

    Marks on letters of other scripts (Cyrillic й, Devanagari vowel signs) are kept: there they
    are letters of their own, not spelling conventions.
    """
    if text.isascii():
        # NFKC and NFKD leave ASCII as it is, it holds no marks and neither table maps it.
        return text.casefold()
    return _fold_any_characters(text)


def _fold_any_characters(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_ARABIC_FOLD)
    text = unicodedata.normalize("NFKD", _ascii_digits(text).casefold())
    kept: list[str] = []
    marks_belong_to_base = False
    for char in text:
        if _is_mark(char):
            if marks_belong_to_base:
                kept.append(char)
            continue
        marks_belong_to_base = char.isalpha() and not unicodedata.name(char, "").startswith("LATIN")
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept).translate(_LATIN_LETTERS))


_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


def _words(text: str) -> list[str]:
    """Split on everything that is neither a letter, a digit nor a kept mark."""
    if text.isascii():  # the common case: the same split, without a call per character
        return _ASCII_WORD.findall(text)
    return _any_words(text)


def _any_words(text: str) -> list[str]:
    return "".join(char if char.isalnum() or _is_mark(char) else " " for char in text).split()


def _nonempty(text: str) -> str:
    if not text:
        raise InvalidEntity("empty after normalisation")
    return text


# --- Names ---------------------------------------------------------------------------------------

# One canonical spelling per transliteration; the inverse map is built below.
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "abu": ("abou", "abo"),
    "bin": ("ibn", "ben", "bn"),
    "bint": ("binti",),
    "abd": ("abdul", "abdel", "abdal", "abdol", "abdoul", "abdur", "abdus"),
    "abd allah": ("abdullah", "abdallah", "abdulla", "abdalla", "abdellah", "abdollah"),
    "muhammad": (
        "mohammed",
        "muhammed",
        "mohamed",
        "muhamed",
        "mohammad",
        "mohamad",
        "muhamad",
        "mohammud",
        "mohamud",
    ),
    "ahmad": ("ahmed",),
    "husayn": ("hussein", "husein", "husain", "hussain", "hossein"),
    "hasan": ("hassan",),
    "yusuf": ("youssef", "yousef", "yusef", "yousif", "yousuf", "youssouf"),
    "umar": ("omar",),
    "usama": ("osama", "oussama"),
    "ibrahim": ("ebrahim", "ibraheem"),
    "khalid": ("khaled",),
    "mustafa": ("mustapha", "moustafa", "mostafa", "moustapha"),
    "mahmud": ("mahmoud", "mahmood"),
    "salih": ("saleh",),
    "jafar": ("jaafar",),
    "qasim": ("qassem", "qasem", "kassem", "kasim"),
    "nasir": ("nasser", "naser"),
    "din": ("eddine", "eddin", "uddin"),
    "qadir": ("qader", "kader", "kadir"),
    "rahim": ("raheem",),
    "karim": ("kareem",),
    "hamid": ("hameed",),
    "majid": ("majeed",),
    "latif": ("lateef",),
    "razzaq": ("razzak", "razaq", "razak"),
    "wahhab": ("wahab",),
    # Arabic script, after letter folding (أ → ا).
    "\u0628\u0646": ("\u0627\u0628\u0646",),  # ابن → بن
}
_CANONICAL: dict[str, str] = {
    spelling: canonical for canonical, spellings in _SPELLINGS.items() for spelling in spellings
}

# Divine names that follow "abd" ("servant of"): a fused "Abdulrahman" splits like "Abd al-Rahman".
_ABD_COMPLEMENTS = frozenset(
    {
        "allah", "rahman", "rahim", "aziz", "karim", "qadir", "hamid", "majid", "latif",
        "razzaq", "salam", "wahhab", "jabbar", "ghani", "halim", "hakim", "hadi", "jalil",
        "nasir", "rauf", "rashid", "qayyum", "samad", "wadud", "khaliq", "fattah", "malik",
        "wahid", "sattar", "ghafur", "muttalib",
    }
)  # fmt: skip
# What may join "abd" to its complement when fused: a vowel, then l or an assimilated consonant.
_ABD_JOIN = re.compile(r"[aeiou]{0,2}(?:l|r|s|sh|t|th|z|d|dh|n)?")

_ARTICLES = frozenset({"al", "el", "ul", "\u0627\u0644"})
_ARABIC_ARTICLE = "\u0627\u0644"  # ال
_ALLAH = "\u0627\u0644\u0644\u0647"  # الله keeps its article: it is part of the name
_ARABIC_ABD = "\u0639\u0628\u062f"  # عبد

# The article assimilated to a sun letter is only dropped in its hyphenated form ("az-Zarqawi",
# "ash-Shami", "ad-Din"): a bare "An" or "As" before a word is too often a name of its own.
_ASSIMILATED_ARTICLE = re.compile(rf"(?<![^\W\d_])[au](dh|th|sh|[dnrstz])[{_HYPHENS}](?=\1)")
# "O'Brien", "Ja'far", "Saʿid": an apostrophe between two letters joins them.
_INNER_APOSTROPHE = re.compile(r"(?<=[^\W\d_])'+(?=[^\W\d_])")


def _strip_arabic_article(token: str) -> str:
    while token.startswith(_ARABIC_ARTICLE) and len(token) >= 4 and token != _ALLAH:
        token = token[len(_ARABIC_ARTICLE) :]
    return token


def _split_fused_abd(token: str) -> list[str] | None:
    """["abd", complement] for "abdulrahman", "abdelkader", "عبدالرحمن"; None otherwise."""
    if token.startswith(_ARABIC_ABD + _ARABIC_ARTICLE) and len(token) >= 7:
        return [_ARABIC_ABD, _strip_arabic_article(token[len(_ARABIC_ABD) :])]
    if not token.startswith("abd"):
        return None
    for end in range(3, len(token) - 2):
        complement = _CANONICAL.get(token[end:], token[end:])
        if complement in _ABD_COMPLEMENTS and _ABD_JOIN.fullmatch(token[3:end]):
            return ["abd", complement]
    return None


def _canonical_tokens(token: str) -> list[str]:
    token = _strip_arabic_article(token)
    if token in _CANONICAL:
        return _CANONICAL[token].split()
    return _split_fused_abd(token) or [token]


def _drop_articles(tokens: list[str]) -> list[str]:
    last = len(tokens) - 1
    return [token for i, token in enumerate(tokens) if token not in _ARTICLES or i == last]


def _fold_name(value: str) -> str:
    """Fold a person, organization or vessel name to lower-case tokens joined by one space."""
    text = _fold_characters(_APOSTROPHES.sub("'", value))
    text = _ASSIMILATED_ARTICLE.sub("", text)
    text = _INNER_APOSTROPHE.sub("", text)
    tokens = [part for word in _words(text) for part in _canonical_tokens(word)]
    return _nonempty(" ".join(_drop_articles(tokens)))


# --- Identifiers and addresses -------------------------------------------------------------------


def _identifier(value: str) -> str:
    """Account and document numbers: upper-case letters and digits, nothing else."""
    folded = _fold_characters(value).upper()
    return _nonempty("".join(char for char in folded if char.isalpha() or char.isdecimal()))


def _address(value: str) -> str:
    return _nonempty(" ".join(_words(_fold_characters(value))))


# --- IBAN ----------------------------------------------------------------------------------------

_IBAN_SEPARATORS = re.compile(rf"[\s.{_HYPHENS}]")
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}", re.ASCII)
# ISO 13616 check digits run from 02 to 98; 00, 01 and 99 pass mod-97 as aliases of 97, 98 and 02
# and would give one account two index entries.
_IBAN_CHECK_DIGITS = range(2, 99)


def _iban(value: str) -> str:
    compact = _IBAN_SEPARATORS.sub("", _ascii_digits(unicodedata.normalize("NFKC", value)))
    compact = _nonempty(compact)
    # ASCII first: upper() would turn "ı" or "ß" into letters an IBAN may hold.
    if not compact.isascii() or not _IBAN_SHAPE.fullmatch(compact.upper()):
        raise InvalidEntity(
            "not a valid IBAN (expected a country code, two check digits, then letters or digits)"
        )
    compact = compact.upper()
    if int(compact[2:4]) not in _IBAN_CHECK_DIGITS:
        raise InvalidEntity("not a valid IBAN (check digits do not match)")
    try:
        return stdnum_iban.validate(compact)
    except InvalidChecksum:
        reason = _iban_checksum_reason(compact)
    except InvalidComponent:
        reason = "unknown country code"
    except ValidationError:
        reason = "wrong length or format for its country"
    raise InvalidEntity(f"not a valid IBAN ({reason})")


def _iban_checksum_reason(compact: str) -> str:
    """Tell a mistyped character from a wrong length: would correct check digits make it valid?"""
    repaired = compact[:2] + stdnum_iban.calc_check_digits(compact) + compact[4:]
    if stdnum_iban.is_valid(repaired):
        return "check digits do not match"
    return "wrong length or format for its country"


# --- Phone ---------------------------------------------------------------------------------------

_PHONE_SEPARATORS = re.compile(rf"[\s.{_HYPHENS}()/]")


def _phone(value: str) -> str:
    compact = _PHONE_SEPARATORS.sub("", _ascii_digits(unicodedata.normalize("NFKC", value)))
    compact = _nonempty(compact)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not compact.startswith("+"):
        if not compact.isdigit() or compact.startswith("0"):
            # A national number means different lines in different countries: no canonical form.
            raise InvalidEntity("phone numbers need a country code (+, 00 or its digits first)")
        # Digits that start with a country code ("964 770 123 4567"), as often written.
        compact = "+" + compact
    try:
        number = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException:
        raise InvalidEntity("not a possible phone number") from None
    # Not is_valid_number: operators open new ranges before the library's metadata knows them.
    if not phonenumbers.is_possible_number(number):
        raise InvalidEntity("not a possible phone number (wrong length for its country)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- Email ---------------------------------------------------------------------------------------

_EMAIL_LOCAL_FORBIDDEN = re.compile(r'[\s"(),:;<>\[\\\]]')
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*", re.ASCII)
_DOMAIN_MAX_LENGTH = 253


def _email(value: str) -> str:
    address = _nonempty(unicodedata.normalize("NFC", value).lower())
    local, _, domain = address.partition("@")
    if not local or not domain or "@" in domain:
        raise InvalidEntity("not a valid email address (expected one @ between two parts)")
    if _EMAIL_LOCAL_FORBIDDEN.search(local) or any(
        unicodedata.category(char).startswith("C") for char in local
    ):
        raise InvalidEntity("not a valid email address (unexpected characters before the @)")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidEntity("not a valid email address (invalid domain)") from None
    if len(domain) > _DOMAIN_MAX_LENGTH or not _DOMAIN.fullmatch(domain):
        raise InvalidEntity("not a valid email address (invalid domain)")
    return f"{local}@{domain}"


# --- Wallet --------------------------------------------------------------------------------------

_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
_ETHEREUM = re.compile(r"0x[0-9a-f]{40}", re.ASCII | re.IGNORECASE)
_BITCOIN_BECH32 = re.compile(r"bc1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{8,87}", re.A | re.I)
_BITCOIN_BASE58 = re.compile(rf"[13]{_BASE58}{{25,34}}", re.ASCII)
_TRON = re.compile(rf"T{_BASE58}{{33}}", re.ASCII)
_WHITESPACE = re.compile(r"\s+")


def _wallet(value: str) -> str:
    address = _nonempty(_WHITESPACE.sub("", value))
    if _ETHEREUM.fullmatch(address):
        return "eth:" + address.lower()
    if _BITCOIN_BECH32.fullmatch(address):
        return "btc:" + address.lower()
    # Base58 is case-sensitive: these two keep the case they were written in.
    if _BITCOIN_BASE58.fullmatch(address):
        return "btc:" + address
    if _TRON.fullmatch(address):
        return "trx:" + address
    return "other:" + address


# --- Vessel --------------------------------------------------------------------------------------

_IMO_PREFIXED = re.compile(r"(?<![a-z])imo[^a-z0-9]*([0-9]+)", re.ASCII | re.IGNORECASE)
_SEVEN_DIGITS = re.compile(r"(?<![0-9])[0-9]{7}(?![0-9])")


def _vessel(value: str) -> str:
    text = _ascii_digits(unicodedata.normalize("NFKC", value))
    prefixed: list[str] = _IMO_PREFIXED.findall(text)
    if any(len(digits) != 7 for digits in prefixed):
        raise InvalidEntity("IMO numbers have 7 digits")
    numbers: set[str] = set(prefixed) | set(_SEVEN_DIGITS.findall(text))
    if len(numbers) > 1:
        raise InvalidEntity("more than one IMO number")
    if not numbers:
        return "name:" + _fold_name(value)
    (number,) = numbers
    try:
        stdnum_imo.validate(number)
    except ValidationError:
        raise InvalidEntity("not a valid IMO number (check digit does not match)") from None
    return "IMO" + number


_NORMALIZERS: dict[str, Callable[[str], str]] = {
    "person": _fold_name,
    "organization": _fold_name,
    "account": _identifier,
    "iban": _iban,
    "phone": _phone,
    "email": _email,
    "wallet": _wallet,
    "vessel": _vessel,
    "document": _identifier,
    "address": _address,
}
