import copy
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kit import crypto
from app.kit.crypto import CorruptionError, SecretBytes

AAD = crypto.associated_data("report_versions", "r-1", 3, "ITA", "body")
PLAINTEXT = b"hawala broker in Gaziantep, account 12345"


def flip_bit(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


class TestAead:
    def test_round_trip_returns_plaintext(self) -> None:
        key = crypto.new_key()
        blob = crypto.aead_encrypt(key, PLAINTEXT, AAD)
        assert crypto.aead_decrypt(key, blob, AAD) == PLAINTEXT

    def test_empty_plaintext_round_trips(self) -> None:
        key = crypto.new_key()
        assert crypto.aead_decrypt(key, crypto.aead_encrypt(key, b"", AAD), AAD) == b""

    def test_blob_is_nonce_ciphertext_and_tag(self) -> None:
        blob = crypto.aead_encrypt(crypto.new_key(), PLAINTEXT, AAD)
        assert len(blob) == crypto.NONCE_SIZE + len(PLAINTEXT) + crypto.TAG_SIZE
        assert PLAINTEXT not in blob

    def test_nonces_are_fresh_for_every_encryption(self) -> None:
        key = crypto.new_key()
        nonces = {crypto.aead_encrypt(key, b"x", AAD)[: crypto.NONCE_SIZE] for _ in range(1000)}
        assert len(nonces) == 1000

    def test_nonce_of_the_wrong_size_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * 8)
        with pytest.raises(RuntimeError, match="nonce"):
            crypto.aead_encrypt(SecretBytes(b"k" * 32), PLAINTEXT, AAD)

    @pytest.mark.parametrize(
        "region",
        [
            pytest.param(range(0, 12), id="nonce"),
            pytest.param(range(12, 12 + len(PLAINTEXT)), id="ciphertext"),
            pytest.param(range(12 + len(PLAINTEXT), 12 + len(PLAINTEXT) + 16), id="tag"),
        ],
    )
    def test_flipped_bit_anywhere_is_corruption(self, region: range) -> None:
        key = crypto.new_key()
        blob = crypto.aead_encrypt(key, PLAINTEXT, AAD)
        for index in (region.start, region.stop - 1):
            with pytest.raises(CorruptionError):
                crypto.aead_decrypt(key, flip_bit(blob, index), AAD)

    @pytest.mark.parametrize(
        "other_aad",
        [
            pytest.param(("report_versions", "r-2", 3, "ITA", "body"), id="other-id"),
            pytest.param(("report_versions", "r-1", 4, "ITA", "body"), id="other-version"),
            pytest.param(("report_versions", "r-1", 3, "ITA", "summary"), id="other-field"),
            pytest.param(("report_versions", "r-1", 3, "SAU", "body"), id="other-originator"),
            pytest.param(("entities", "r-1", 3, "ITA", "body"), id="other-table"),
        ],
    )
    def test_ciphertext_moved_to_another_row_is_corruption(
        self, other_aad: tuple[str | int, ...]
    ) -> None:
        key = crypto.new_key()
        blob = crypto.aead_encrypt(key, PLAINTEXT, AAD)
        with pytest.raises(CorruptionError):
            crypto.aead_decrypt(key, blob, crypto.associated_data(*other_aad))

    def test_wrong_key_is_corruption(self) -> None:
        blob = crypto.aead_encrypt(crypto.new_key(), PLAINTEXT, AAD)
        with pytest.raises(CorruptionError):
            crypto.aead_decrypt(crypto.new_key(), blob, AAD)

    @pytest.mark.parametrize("length", [0, 1, 12, 27])
    def test_blob_too_short_for_nonce_and_tag_is_corruption(self, length: int) -> None:
        with pytest.raises(CorruptionError, match="truncated"):
            crypto.aead_decrypt(crypto.new_key(), os.urandom(length), AAD)

    def test_truncated_blob_is_corruption(self) -> None:
        key = crypto.new_key()
        blob = crypto.aead_encrypt(key, PLAINTEXT, AAD)
        for cut in (1, 16, len(blob) - 28):
            with pytest.raises(CorruptionError):
                crypto.aead_decrypt(key, blob[:-cut], AAD)

    def test_corruption_message_holds_neither_key_nor_plaintext(self) -> None:
        key = crypto.new_key()
        blob = crypto.aead_encrypt(key, PLAINTEXT, AAD)
        with pytest.raises(CorruptionError) as caught:
            crypto.aead_decrypt(key, flip_bit(blob, 20), AAD)
        text = str(caught.value) + repr(caught.value)
        assert "hawala" not in text
        assert key.reveal().hex() not in text
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    @pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
    def test_key_that_is_not_256_bits_is_refused(self, size: int) -> None:
        key = SecretBytes(b"k" * size)
        with pytest.raises(ValueError, match="32 bytes"):
            crypto.aead_encrypt(key, PLAINTEXT, AAD)
        with pytest.raises(ValueError, match="32 bytes"):
            crypto.aead_decrypt(key, b"\x00" * 64, AAD)

    def test_raw_bytes_key_is_refused(self) -> None:
        with pytest.raises(TypeError):
            crypto.aead_encrypt(b"k" * 32, PLAINTEXT, AAD)  # type: ignore[arg-type]


class TestWrapKey:
    def test_round_trip_returns_the_key(self) -> None:
        kek, key = crypto.new_key(), crypto.new_key()
        aad = crypto.associated_data("member_keys", "ITA", 1)
        assert crypto.unwrap_key(kek, crypto.wrap_key(kek, key, aad), aad) == key

    def test_wrapped_key_under_other_aad_is_corruption(self) -> None:
        kek, key = crypto.new_key(), crypto.new_key()
        wrapped = crypto.wrap_key(kek, key, crypto.associated_data("member_keys", "ITA", 1))
        for other in (
            ("member_keys", "SAU", 1),
            ("member_keys", "ITA", 2),
            ("data_keys", "ITA", 1),
        ):
            with pytest.raises(CorruptionError):
                crypto.unwrap_key(kek, wrapped, crypto.associated_data(*other))

    def test_wrong_kek_is_corruption(self) -> None:
        key = crypto.new_key()
        wrapped = crypto.wrap_key(crypto.new_key(), key, AAD)
        with pytest.raises(CorruptionError):
            crypto.unwrap_key(crypto.new_key(), wrapped, AAD)

    def test_wrapped_key_is_not_a_data_ciphertext_under_the_same_aad(self) -> None:
        kek, key = crypto.new_key(), crypto.new_key()
        with pytest.raises(CorruptionError):
            crypto.aead_decrypt(kek, crypto.wrap_key(kek, key, AAD), AAD)

    def test_data_ciphertext_of_key_length_does_not_unwrap(self) -> None:
        kek = crypto.new_key()
        with pytest.raises(CorruptionError):
            crypto.unwrap_key(kek, crypto.aead_encrypt(kek, b"x" * 32, AAD), AAD)

    def test_wrapped_key_does_not_contain_the_key(self) -> None:
        kek, key = crypto.new_key(), crypto.new_key()
        assert key.reveal() not in crypto.wrap_key(kek, key, AAD)


class TestAssociatedData:
    def test_boundaries_between_parts_are_unambiguous(self) -> None:
        assert crypto.associated_data("ab", "c") != crypto.associated_data("a", "bc")
        assert crypto.associated_data("a", "") != crypto.associated_data("a")

    def test_int_and_string_with_same_digits_differ(self) -> None:
        assert crypto.associated_data(1) != crypto.associated_data("1")

    def test_encoding_is_stable(self) -> None:
        # Stored ciphertexts depend on these exact bytes; changing them makes data unreadable.
        assert crypto.associated_data("t", 12) == b"s\x00\x00\x00\x01ti\x00\x00\x00\x0212"

    @settings(database=None, max_examples=300)
    @given(
        st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=6),
        st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=6),
    )
    def test_distinct_part_lists_never_encode_alike(
        self, left: list[str | int], right: list[str | int]
    ) -> None:
        same_parts = [(type(p), p) for p in left] == [(type(p), p) for p in right]
        assert (crypto.associated_data(*left) == crypto.associated_data(*right)) == same_parts

    @pytest.mark.parametrize("part", [True, 1.0, b"bytes", None])
    def test_other_types_are_refused(self, part: object) -> None:
        with pytest.raises(TypeError):
            crypto.associated_data("t", part)  # type: ignore[arg-type]

    def test_no_parts_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            crypto.associated_data()


class TestSecretBytes:
    def test_repr_and_str_hide_the_value(self) -> None:
        secret = SecretBytes(b"top secret key material")
        for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
            assert "top secret" not in text
            assert "SecretBytes('***')" in text

    def test_reveal_returns_the_bytes(self) -> None:
        assert SecretBytes(bytearray(b"abc")).reveal() == b"abc"

    def test_equality_compares_values(self) -> None:
        assert SecretBytes(b"a" * 32) == SecretBytes(b"a" * 32)
        assert SecretBytes(b"a" * 32) != SecretBytes(b"b" * 32)
        assert SecretBytes(b"a" * 32) != b"a" * 32

    def test_cannot_be_pickled_or_copied(self) -> None:
        secret = SecretBytes(b"k" * 32)
        with pytest.raises(TypeError):
            pickle.dumps(secret)
        with pytest.raises(TypeError):
            copy.deepcopy(secret)

    def test_is_not_hashable(self) -> None:
        with pytest.raises(TypeError):
            hash(SecretBytes(b"k"))

    def test_str_is_refused(self) -> None:
        with pytest.raises(TypeError):
            SecretBytes("c2VjcmV0")  # type: ignore[arg-type]


class TestHashingAndDerivation:
    def test_hmac_sha256_matches_rfc_4231_case_2(self) -> None:
        mac = crypto.hmac_sha256(SecretBytes(b"Jefe"), b"what do ya want for nothing?")
        assert mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"

    def test_derived_keys_are_deterministic_and_separated_by_label(self) -> None:
        master = crypto.new_key()
        iban = crypto.derive_key(master, "blind-index/iban")
        assert iban == crypto.derive_key(master, "blind-index/iban")
        assert iban != crypto.derive_key(master, "blind-index/phone")
        assert iban != master
        assert len(iban) == crypto.KEY_SIZE

    def test_derived_key_depends_on_master(self) -> None:
        label = "blind-index/iban"
        assert crypto.derive_key(crypto.new_key(), label) != crypto.derive_key(
            crypto.new_key(), label
        )

    def test_empty_label_is_refused(self) -> None:
        with pytest.raises(ValueError, match="label"):
            crypto.derive_key(crypto.new_key(), "")

    def test_constant_time_equal(self) -> None:
        assert crypto.constant_time_equal(b"abc", b"abc")
        assert not crypto.constant_time_equal(b"abc", b"abd")
        assert not crypto.constant_time_equal(b"abc", b"abcd")

    def test_new_keys_are_random_and_256_bits(self) -> None:
        first, second = crypto.new_key(), crypto.new_key()
        assert len(first) == crypto.KEY_SIZE
        assert first != second
