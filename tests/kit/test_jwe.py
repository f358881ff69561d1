"""Tests for app.kit.jwe.

Every token is decrypted by hand with `cryptography` (RFC 7516 section 5.2 step by step), so the
checks do not trust python-jose, which builds the token; python-jose's own decrypt is used once
more as a second, widely used reader.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jose import jwe as jose_jwe

from app.kit.jwe import InvalidJwk, encrypt, parse_encryption_jwk

PLAINTEXT = json.dumps({"report_id": "r-1", "title": "hawala broker in Gaziantep"}).encode()
OAEP_256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@cache
def private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    # Key generation is slow: one key per size for the whole module.
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_jwk(key: rsa.RSAPrivateKey | None = None, **extra: Any) -> dict[str, Any]:
    numbers = (key or private_key()).public_key().public_numbers()
    return {"kty": "RSA", "n": uint(numbers.n), "e": uint(numbers.e), **extra}


def private_jwk() -> dict[str, Any]:
    numbers = private_key().private_numbers()
    return public_jwk(
        d=uint(numbers.d),
        p=uint(numbers.p),
        q=uint(numbers.q),
        dp=uint(numbers.dmp1),
        dq=uint(numbers.dmq1),
        qi=uint(numbers.iqmp),
    )


@dataclass(frozen=True)
class Opened:
    header: dict[str, Any]
    cek: bytes
    iv: bytes
    tag: bytes
    plaintext: bytes


def open_jwe(token: str, key: rsa.RSAPrivateKey | None = None) -> Opened:
    """Decrypt a compact JWE with `cryptography` only (RFC 7516 section 5.2)."""
    header_b64, encrypted_key_b64, iv_b64, ciphertext_b64, tag_b64 = token.split(".")
    cek = (key or private_key()).decrypt(b64url_decode(encrypted_key_b64), OAEP_256)
    iv, tag = b64url_decode(iv_b64), b64url_decode(tag_b64)
    # AAD is the ASCII of the encoded protected header, exactly as sent.
    plaintext = AESGCM(cek).decrypt(
        iv, b64url_decode(ciphertext_b64) + tag, header_b64.encode("ascii")
    )
    header = json.loads(b64url_decode(header_b64))
    return Opened(header=header, cek=cek, iv=iv, tag=tag, plaintext=plaintext)


class TestEncrypt:
    def test_independent_decrypt_returns_the_plaintext(self) -> None:
        assert open_jwe(encrypt(PLAINTEXT, public_jwk())).plaintext == PLAINTEXT

    def test_python_jose_decrypts_it_too(self) -> None:
        token = encrypt(PLAINTEXT, public_jwk())
        assert jose_jwe.decrypt(token, private_key()) == PLAINTEXT

    def test_empty_plaintext_round_trips(self) -> None:
        assert open_jwe(encrypt(b"", public_jwk())).plaintext == b""

    def test_token_is_compact_serialisation_of_five_base64url_parts(self) -> None:
        token = encrypt(PLAINTEXT, public_jwk())
        parts = token.split(".")
        assert len(parts) == 5
        assert all(part and b64url(b64url_decode(part)) == part for part in parts)

    def test_header_names_rsa_oaep_256_and_a256gcm_only(self) -> None:
        assert open_jwe(encrypt(PLAINTEXT, public_jwk())).header == {
            "alg": "RSA-OAEP-256",
            "enc": "A256GCM",
        }

    def test_header_carries_the_kid_of_the_jwk(self) -> None:
        opened = open_jwe(encrypt(PLAINTEXT, public_jwk(kid="subscriber-2026-01")))
        assert opened.header == {
            "alg": "RSA-OAEP-256",
            "enc": "A256GCM",
            "kid": "subscriber-2026-01",
        }

    def test_cek_is_256_bits_iv_96_bits_and_tag_128_bits(self) -> None:
        opened = open_jwe(encrypt(PLAINTEXT, public_jwk()))
        assert (len(opened.cek), len(opened.iv), len(opened.tag)) == (32, 12, 16)

    def test_each_message_has_a_fresh_cek_and_iv(self) -> None:
        opened = [open_jwe(encrypt(PLAINTEXT, public_jwk())) for _ in range(20)]
        assert len({o.cek for o in opened}) == 20
        assert len({o.iv for o in opened}) == 20

    def test_plaintext_does_not_appear_in_the_token(self) -> None:
        token = encrypt(PLAINTEXT, public_jwk())
        assert b"Gaziantep" not in b64url_decode(token.split(".")[3])

    def test_edited_header_fails_authentication(self) -> None:
        _, *rest = encrypt(PLAINTEXT, public_jwk(kid="a")).split(".")
        forged = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "b"}).encode())
        with pytest.raises(InvalidTag):
            open_jwe(".".join([forged, *rest]))

    def test_other_key_cannot_decrypt(self) -> None:
        token = encrypt(PLAINTEXT, public_jwk())
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(ValueError, match="Decryption failed"):
            open_jwe(token, other)

    def test_private_jwk_is_refused(self) -> None:
        with pytest.raises(InvalidJwk, match="public key"):
            encrypt(PLAINTEXT, private_jwk())

    def test_plaintext_that_is_not_bytes_is_refused(self) -> None:
        with pytest.raises(TypeError, match="bytes"):
            encrypt(PLAINTEXT.decode(), public_jwk())  # type: ignore[arg-type]


def odd_number_of_bits(bits: int) -> int:
    return (1 << (bits - 1)) | 1


def padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)


class TestParseEncryptionJwk:
    def test_public_rsa_key_is_returned_normalised(self) -> None:
        jwk = public_jwk()
        assert parse_encryption_jwk(jwk) == {"kty": "RSA", "n": jwk["n"], "e": "AQAB"}

    def test_kid_is_kept(self) -> None:
        assert parse_encryption_jwk(public_jwk(kid="k-1"))["kid"] == "k-1"

    def test_matching_alg_use_and_key_ops_are_accepted_and_dropped(self) -> None:
        jwk = public_jwk(alg="RSA-OAEP-256", use="enc", key_ops=["wrapKey"])
        assert set(parse_encryption_jwk(jwk)) == {"kty", "n", "e"}
        assert parse_encryption_jwk(public_jwk(key_ops=["encrypt", "wrapKey"]))

    def test_unknown_members_are_dropped(self) -> None:
        jwk = public_jwk(x5u="https://attacker.example/cert", jku="https://x", ext=True)
        assert set(parse_encryption_jwk(jwk)) == {"kty", "n", "e"}

    def test_leading_zero_octet_in_modulus_is_normalised_away(self) -> None:
        jwk = public_jwk()
        with_zero = b64url(b"\x00" + b64url_decode(jwk["n"]))
        assert parse_encryption_jwk({**jwk, "n": with_zero})["n"] == jwk["n"]

    def test_4096_bit_key_and_exponent_3_are_accepted(self) -> None:
        n = odd_number_of_bits(4096)
        assert parse_encryption_jwk({"kty": "RSA", "n": uint(n), "e": "Aw"})["e"] == "Aw"

    def test_normalised_jwk_still_encrypts_to_the_key(self) -> None:
        normalised = parse_encryption_jwk(public_jwk(kid="k-1", use="enc"))
        assert open_jwe(encrypt(PLAINTEXT, normalised)).plaintext == PLAINTEXT

    @pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth"])
    def test_private_member_is_refused_not_stripped(self, member: str) -> None:
        jwk = {**public_jwk(), member: private_jwk().get(member, [{"r": "AQ"}])}
        with pytest.raises(InvalidJwk, match="public key"):
            parse_encryption_jwk(jwk)

    def test_ec_key_is_refused(self) -> None:
        numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": uint(numbers.x), "y": uint(numbers.y)}
        with pytest.raises(InvalidJwk, match="kty"):
            parse_encryption_jwk(jwk)

    @pytest.mark.parametrize("kty", [None, "rsa", "oct", "RSA-HSM", ["RSA"]])
    def test_other_kty_is_refused(self, kty: object) -> None:
        with pytest.raises(InvalidJwk, match="kty"):
            parse_encryption_jwk({**public_jwk(), "kty": kty})

    def test_1024_bit_modulus_is_refused(self) -> None:
        with pytest.raises(InvalidJwk, match="2048 to 8192 bits"):
            parse_encryption_jwk(public_jwk(private_key(1024)))

    def test_2047_bit_modulus_is_refused(self) -> None:
        with pytest.raises(InvalidJwk, match="2048 to 8192 bits"):
            parse_encryption_jwk({"kty": "RSA", "n": uint(odd_number_of_bits(2047)), "e": "AQAB"})

    def test_modulus_over_8192_bits_is_refused(self) -> None:
        with pytest.raises(InvalidJwk, match="2048 to 8192 bits"):
            parse_encryption_jwk({"kty": "RSA", "n": uint(odd_number_of_bits(8193)), "e": "AQAB"})

    def test_huge_member_is_refused_before_decoding(self) -> None:
        with pytest.raises(InvalidJwk, match="too long"):
            parse_encryption_jwk({"kty": "RSA", "n": "A" * 100_000, "e": "AQAB"})

    def test_even_modulus_is_refused(self) -> None:
        with pytest.raises(InvalidJwk, match="modulus"):
            parse_encryption_jwk({"kty": "RSA", "n": uint(1 << 2047), "e": "AQAB"})

    @pytest.mark.parametrize(
        "e",
        [
            pytest.param(65536, id="even"),
            pytest.param(2, id="two"),
            pytest.param(1, id="one"),
            pytest.param(0, id="zero"),
            pytest.param((1 << 256) + 1, id="over-256-bits"),
        ],
    )
    def test_unfit_exponent_is_refused(self, e: int) -> None:
        jwk = {**public_jwk(), "e": b64url(e.to_bytes(max(1, (e.bit_length() + 7) // 8), "big"))}
        with pytest.raises(InvalidJwk, match=r"exponent|too long"):
            parse_encryption_jwk(jwk)

    @pytest.mark.parametrize("member", ["n", "e"])
    def test_missing_n_or_e_is_refused(self, member: str) -> None:
        jwk = public_jwk()
        del jwk[member]
        with pytest.raises(InvalidJwk, match=f"'{member}' is required"):
            parse_encryption_jwk(jwk)

    @pytest.mark.parametrize(
        "mangle",
        [
            pytest.param(padded, id="padding"),
            pytest.param(lambda n: n.replace("-", "+").replace("_", "/") + "+/", id="standard"),
            pytest.param(lambda n: n[:100] + " " + n[100:], id="space"),
            pytest.param(lambda n: n + "\n", id="newline"),
            pytest.param(lambda n: n + "AAA", id="length-1-mod-4"),
            pytest.param(lambda n: n[:-1] + "B", id="non-zero-padding-bits"),
        ],
    )
    def test_bad_base64url_is_refused(self, mangle: Any) -> None:
        jwk = public_jwk()
        assert len(jwk["n"]) % 4 == 2  # 256 bytes: the last character carries 4 spare bits
        with pytest.raises(InvalidJwk, match="base64url"):
            parse_encryption_jwk({**jwk, "n": mangle(jwk["n"])})

    @pytest.mark.parametrize("value", [65537, b"AQAB", ""])
    def test_member_that_is_not_a_string_is_refused(self, value: object) -> None:
        with pytest.raises(InvalidJwk, match="must be a string"):
            parse_encryption_jwk({**public_jwk(), "e": value})

    @pytest.mark.parametrize("alg", ["RSA-OAEP", "RSA1_5", "RS256", "rsa-oaep-256", None])
    def test_other_alg_is_refused(self, alg: object) -> None:
        with pytest.raises(InvalidJwk, match="alg"):
            parse_encryption_jwk(public_jwk(alg=alg))

    @pytest.mark.parametrize("use", ["sig", "ENC", "", None])
    def test_other_use_is_refused(self, use: object) -> None:
        with pytest.raises(InvalidJwk, match="use"):
            parse_encryption_jwk(public_jwk(use=use))

    @pytest.mark.parametrize(
        "key_ops", [["verify"], [], ["decrypt", "unwrapKey"], "encrypt", [1], None]
    )
    def test_key_ops_without_encrypt_or_wrap_key_is_refused(self, key_ops: object) -> None:
        with pytest.raises(InvalidJwk, match="key_ops"):
            parse_encryption_jwk(public_jwk(key_ops=key_ops))

    @pytest.mark.parametrize("kid", ["", "k" * 201, 7, None, "k\n1", "k\x001"])
    def test_unfit_kid_is_refused(self, kid: object) -> None:
        with pytest.raises(InvalidJwk, match="kid"):
            parse_encryption_jwk(public_jwk(kid=kid))

    def test_kid_of_200_characters_is_accepted(self) -> None:
        assert parse_encryption_jwk(public_jwk(kid="k" * 200))["kid"] == "k" * 200

    @pytest.mark.parametrize("value", [None, [], "{}", 1])
    def test_non_object_is_refused(self, value: object) -> None:
        with pytest.raises(InvalidJwk, match="JSON object"):
            parse_encryption_jwk(value)  # type: ignore[arg-type]

    def test_refusal_is_a_value_error_that_never_echoes_the_key(self) -> None:
        jwk = private_jwk()
        with pytest.raises(ValueError) as caught:  # noqa: PT011 - the subclass relation is the point
            parse_encryption_jwk(jwk)
        assert isinstance(caught.value, InvalidJwk)
        assert jwk["d"][:20] not in str(caught.value)
        assert jwk["n"][:20] not in str(caught.value)
