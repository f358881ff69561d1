"""Tests for app.search.normalize: one spelling per entity, distinct entities stay distinct."""

# ruff: noqa: RUF001 -- the cases are look-alike spellings (full-width digits, curly quotes) on purpose
from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.reports.schemas import EntityType
from app.search import normalize as normalize_module
from app.search.normalize import ENTITY_TYPES, InvalidEntity, normalize

IRAQ_IBAN = "IQ98NBIQ850123456789012"


def assert_all_fold_to(entity_type: str, spellings: list[str], expected: str) -> None:
    assert {spelling: normalize(entity_type, spelling) for spelling in spellings} == dict.fromkeys(
        spellings, expected
    )


def assert_rejected_without_echo(entity_type: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidEntity, match=reason) as caught:
        normalize(entity_type, value)
    message = str(caught.value)
    assert value.strip() not in message
    assert all(len(part) < 4 or part not in message for part in value.split())


class TestInterface:
    def test_every_entity_type_has_a_normalizer(self) -> None:
        for entity_type in ENTITY_TYPES:
            with pytest.raises(InvalidEntity):
                normalize(entity_type, "")

    def test_unknown_type_is_a_plain_value_error_not_an_invalid_entity(self) -> None:
        with pytest.raises(ValueError, match="unknown entity type") as caught:
            normalize("vehicle", "x")
        assert not isinstance(caught.value, InvalidEntity)

    @pytest.mark.parametrize("entity_type", ENTITY_TYPES)
    @pytest.mark.parametrize("value", ["", "   ", "\t\n"])
    def test_blank_value_is_empty_after_normalisation(self, entity_type: str, value: str) -> None:
        with pytest.raises(InvalidEntity, match="empty after normalisation"):
            normalize(entity_type, value)

    @pytest.mark.parametrize(
        "entity_type", ["person", "organization", "account", "document", "address", "vessel"]
    )
    @pytest.mark.parametrize("value", ["-", "'", "...", "- _ /", "،؛"])
    def test_punctuation_only_is_empty_after_normalisation(
        self, entity_type: str, value: str
    ) -> None:
        with pytest.raises(InvalidEntity, match="empty after normalisation"):
            normalize(entity_type, value)


class TestIban:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                [
                    IRAQ_IBAN,
                    "iq98nbiq850123456789012",
                    "IQ98 NBIQ 8501 2345 6789 012",
                    " iq98-nbiq-8501-2345-6789-012 ",
                    "IQ98.NBIQ.8501.2345.6789.012",
                    "IQ98\u00a0NBIQ\u00a08501\u00a02345\u00a06789\u00a0012",
                ],
                IRAQ_IBAN,
            ),
            (["IQ51 NBIQ 0000 0000 0000 005"], "IQ51NBIQ000000000000005"),
            (["jo94 cbjo 0010 0000 0000 0131 0003 02"], "JO94CBJO0010000000000131000302"),
            (["SA03 8000 0000 6080 1016 7519"], "SA0380000000608010167519"),
            (["ae07 0331 2345 6789 0123 456"], "AE070331234567890123456"),
            (["KW81 CBKU 0000 0000 0000 1234 5601 01"], "KW81CBKU0000000000001234560101"),
            (["QA58 DOHB 0000 1234 5678 90AB CDEF G"], "QA58DOHB00001234567890ABCDEFG"),
            (["BH67 BMAG 0000 1299 1234 56"], "BH67BMAG00001299123456"),
            (["LB62 0999 0000 0001 0019 0122 9114"], "LB62099900000001001901229114"),
            (["TR33 0006 1005 1978 6457 8413 26"], "TR330006100519786457841326"),
        ],
    )
    def test_iban_spacing_and_case_fold_to_one_form(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("iban", spellings, expected)

    def test_two_different_ibans_stay_distinct(self) -> None:
        assert normalize("iban", IRAQ_IBAN) != normalize("iban", "IQ51NBIQ000000000000005")

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("IQ98NBIQ850123456789013", "check digits do not match"),
            ("IQ89NBIQ850123456789012", "check digits do not match"),
            ("IQ98 NBIQ 8501 2345 6789 01", r"wrong length or format"),
            ("IQ62NBIQ85012345678901", r"wrong length or format"),  # mod-97 holds, one short
            ("IQ43NBIQ8501234567890123", r"wrong length or format"),  # mod-97 holds, one long
            ("XX98NBIQ850123456789012", "unknown country code|wrong length"),
            ("IQ98NBIQ85012345678901Ä", "expected a country code"),
            ("NBIQ850123456789012", "expected a country code"),
            ("98NBIQ850123456789012", "expected a country code"),
        ],
    )
    def test_invalid_iban_is_rejected_without_echoing_it(self, value: str, reason: str) -> None:
        assert_rejected_without_echo("iban", value, reason)

    def test_out_of_range_check_digits_that_pass_mod_97_are_rejected(self) -> None:
        # "01" is 98 - 97: mod-97 accepts both, and one account must not get two index entries.
        assert normalize("iban", "IQ98NBIQ850123456789012") == IRAQ_IBAN
        with pytest.raises(InvalidEntity, match="check digits do not match"):
            normalize("iban", "IQ01NBIQ850123456789012")


class TestPhone:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                [
                    "+9647701234567",
                    "+964 770 123 4567",
                    "+964 (0)770 123 4567",
                    "00964 0770 1234567",
                    "00964-770-123-4567",
                    "+964.770.123.4567",
                    "(+964) 770/123/4567",
                    "٠٠٩٦٤٧٧٠١٢٣٤٥٦٧",
                    "۰۰۹۶۴۷۷۰۱۲۳۴۵۶۷",
                    "＋９６４７７０１２３４５６７",
                ],
                "+9647701234567",
            ),
            (["+963 944 123 456", "00963944123456"], "+963944123456"),
            (["+90 532 123 45 67", "+90 (0)532 123 45 67", "0090 532 1234567"], "+905321234567"),
            (["+962 7 9123 4567", "00962 (0)7 9123 4567"], "+962791234567"),
            (["+961 3 123 456"], "+9613123456"),
            (["+966 50 123 4567", "00966 050 123 4567"], "+966501234567"),
            (["+965 5012 3456"], "+96550123456"),
            (["+974 3312 3456"], "+97433123456"),
            (["+971 50 123 4567", "+971 (0)50 123 4567"], "+971501234567"),
            (["+973 3600 1234"], "+97336001234"),
        ],
    )
    def test_phone_prefixes_and_separators_fold_to_e164(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("phone", spellings, expected)

    def test_italian_leading_zero_is_kept_because_it_is_part_of_the_number(self) -> None:
        assert normalize("phone", "+39 06 1234 5678") == "+390612345678"

    def test_numbers_differing_in_one_digit_stay_distinct(self) -> None:
        assert normalize("phone", "+964 770 123 4567") != normalize("phone", "+964 770 123 4568")

    @pytest.mark.parametrize("value", ["0770 123 4567", "(0770) 123-4567", "0 770 123 4567"])
    def test_national_number_with_trunk_prefix_is_rejected(self, value: str) -> None:
        assert_rejected_without_echo("phone", value, r"need a country code \(\+, 00 or its")

    def test_digits_that_start_with_the_country_code_fold_like_the_plus_form(self) -> None:
        # domain.md: "a phone number with or without 00/+ and separators" folds to one form.
        assert_all_fold_to(
            "phone", ["964 770 123 4567", "9647701234567", "+964 770 123 4567"], "+9647701234567"
        )

    @pytest.mark.parametrize("value", ["+964 770", "+964 770 123 4567 8901", "+999 123 456", "+"])
    def test_impossible_phone_number_is_rejected(self, value: str) -> None:
        assert_rejected_without_echo("phone", value, "not a possible phone number")


class TestEmail:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                ["broker@example.com", "  Broker@Example.COM ", "BROKER@EXAMPLE.COM"],
                "broker@example.com",
            ),
            (
                ["info@bücher.de", "INFO@BÜCHER.DE", "info@xn--bcher-kva.de"],
                "info@xn--bcher-kva.de",
            ),
            (["x@مثال.com"], "x@xn--mgbh0fb.com"),
            (["root@localhost"], "root@localhost"),
        ],
    )
    def test_email_case_and_unicode_domain_fold_to_one_form(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("email", spellings, expected)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("broker.example.com", "one @"),
            ("broker@@example.com", "one @"),
            ("broker@example@com", "one @"),
            ("@example.com", "one @"),
            ("broker@", "one @"),
            ("john doe@example.com", "unexpected characters"),
            ("Broker <broker@example.com>", "unexpected characters|invalid domain"),
            ("broker@exa_mple.com", "invalid domain"),
            ("broker@example..com", "invalid domain"),
            ("broker@-example.com", "invalid domain"),
            ("broker@example.com.", "invalid domain"),
        ],
    )
    def test_malformed_email_is_rejected(self, value: str, reason: str) -> None:
        assert_rejected_without_echo("email", value, reason)


class TestWallet:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                [
                    "0x52908400098527886E0F7030069857D2E4169EE7",
                    "0x52908400098527886e0f7030069857d2e4169ee7",
                    "0X52908400098527886E0F7030069857D2E4169EE7",
                    " 0x5290 8400 0985 2788 6E0F 7030 0698 57D2 E416 9EE7 ",
                ],
                "eth:0x52908400098527886e0f7030069857d2e4169ee7",
            ),
            (
                [
                    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
                    "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
                ],
                "btc:bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
            ),
            (["1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"], "btc:1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
            (["3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"], "btc:3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"),
            (
                ["TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7", " TLa2f6VPqDgRE67v 1736s7bJ8Ray5wYjU7"],
                "trx:TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7",
            ),
            (["  LTC Wallet Xy12 "], "other:LTCWalletXy12"),
        ],
    )
    def test_wallet_is_tagged_by_chain_and_folded_where_case_is_free(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("wallet", spellings, expected)

    def test_base58_address_keeps_case_because_case_is_significant(self) -> None:
        address = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
        assert normalize("wallet", address) != normalize("wallet", address.lower())

    def test_ethereum_address_without_prefix_is_not_taken_for_ethereum(self) -> None:
        assert normalize("wallet", "52908400098527886E0F7030069857D2E4169EE7").startswith("other:")


class TestVessel:
    @pytest.mark.parametrize(
        "spelling",
        ["IMO 9319466", "imo9319466", "IMO-9319466", "IMO: 9319466", "9319466", "IMO ٩٣١٩٤٦٦"],
    )
    def test_imo_number_folds_to_prefixed_seven_digits(self, spelling: str) -> None:
        assert normalize("vessel", spelling) == "IMO9319466"

    def test_imo_number_wins_over_the_vessel_name_around_it(self) -> None:
        assert normalize("vessel", "MV Sea Star (IMO 9319466)") == "IMO9319466"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("IMO 9319467", "check digit does not match"),
            ("8814274", "check digit does not match"),
            ("IMO 931946", "IMO numbers have 7 digits"),
            ("IMO 9319466 or IMO 8814275", "more than one IMO number"),
        ],
    )
    def test_invalid_imo_number_is_rejected(self, value: str, reason: str) -> None:
        assert_rejected_without_echo("vessel", value, reason)

    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (["Sea Star", "SEA-STAR", "  sea   star "], "name:sea star"),
            (["Al-Noor", "El Noor"], "name:noor"),
        ],
    )
    def test_value_without_seven_digits_is_a_folded_vessel_name(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("vessel", spellings, expected)


class TestIdentifiers:
    @pytest.mark.parametrize("entity_type", ["account", "document"])
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (["AB-1234/56", "ab 1234 56", "Ab.1234.56", "ab_1234_56"], "AB123456"),
            (["Ñ-0042", "n0042", "N 0042"], "N0042"),
            (["١٢٣٤٥", "۱۲۳۴۵", "12345", "１２３４５"], "12345"),
        ],
    )
    def test_identifier_keeps_only_upper_case_letters_and_digits(
        self, entity_type: str, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to(entity_type, spellings, expected)

    def test_identifiers_differing_in_one_character_stay_distinct(self) -> None:
        assert normalize("account", "AB-1234") != normalize("account", "AB-1235")


class TestAddress:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                [
                    "12, Rue de l'Église",
                    "12 rue de l eglise",
                    "12 RUE DE L’ÉGLISE",
                    "12 Rue-de-l'Eglise",
                ],
                "12 rue de l eglise",
            ),
            (["Straße 5", "STRASSE 5", "strasse  5"], "strasse 5"),
            (["شارع الرشيد، بغداد", "شارع الرشيد ، بغداد"], "شارع الرشيد بغداد"),
            (["Gaziantep, Türkiye", "gaziantep turkiye"], "gaziantep turkiye"),
        ],
    )
    def test_address_case_diacritics_and_punctuation_fold(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("address", spellings, expected)


class TestLatinNames:
    @pytest.mark.parametrize("entity_type", ["person", "organization"])
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                ["al-Baghdadi", "Al-Baghdadi", "el Baghdadi", "Al Baghdadi", "AL  BAGHDADI"],
                "baghdadi",
            ),
            (
                ["Abu Bakr al-Baghdadi", "Abou Bakr el-Baghdadi", "abo bakr al baghdadi"],
                "abu bakr baghdadi",
            ),
            (["Osama bin Laden", "Usama ibn Laden", "Oussama ben Laden"], "usama bin laden"),
            (
                ["Muhammad", "Mohammed", "Mohamed", "Mohammad", "Muhammed", "Mohamad", "Mohammud"],
                "muhammad",
            ),
            (["Ahmad", "Ahmed"], "ahmad"),
            (["Hussein", "Husain", "Hussain", "Husayn", "Ḥusayn"], "husayn"),
            (["Hassan", "Hasan"], "hasan"),
            (["Yusuf", "Youssef", "Yousef", "Yusef"], "yusuf"),
            (["Omar", "Umar", "ʿUmar"], "umar"),
            (["Ibrahim", "Ebrahim", "İbrahim"], "ibrahim"),
            (["Khalid", "Khaled"], "khalid"),
            (["Mustafa", "Mustapha", "Moustafa"], "mustafa"),
            (["Mahmoud", "Mahmud"], "mahmud"),
            (["Saleh", "Salih", "Ṣāliḥ"], "salih"),
            (["Ali", "ʿAlī", "ALI"], "ali"),
            (
                ["Abdullah", "Abdallah", "Abdulla", "Abd Allah", "Abd-Allah", "ʿAbd Allāh"],
                "abd allah",
            ),
            (
                [
                    "Abd al-Rahman",
                    "Abdulrahman",
                    "Abdel Rahman",
                    "Abdul-Rahman",
                    "Abd el Rahman",
                    "Abd ar-Rahman",
                    "Abdurrahman",
                    "ʿAbd al-Raḥmān",
                ],
                "abd rahman",
            ),
            (["Abdelkader", "Abdel Kader", "Abd al-Qadir", "Abdulqadir"], "abd qadir"),
            (["Fatima bint Ahmad", "Fatima binti Ahmed"], "fatima bint ahmad"),
            (["Ja'far", "Jaʿfar", "Ja’far", "Ja`far", "Jafar", "Jaafar"], "jafar"),
            (["O'Brien", "O’Brien", "OBrien"], "obrien"),
            (
                ["Abu Musab az-Zarqawi", "Abu Musab al-Zarqawi", "Abou Musab Zarqawi"],
                "abu musab zarqawi",
            ),
            (["Salah ad-Din", "Salah al-Din", "Salah el-Din", "Salah Eddine"], "salah din"),
            (["José Martínez", "JOSE MARTINEZ", "Jose  Martinez"], "jose martinez"),
            (["Çağrı Öztürk", "Cagri Ozturk"], "cagri ozturk"),
            (["Łukasz Ødegård", "Lukasz Odegard"], "lukasz odegard"),
            (["Al_Nusra Front", "al-Nusra   Front", "Al Nusra-Front"], "nusra front"),
        ],
    )
    def test_transliteration_variants_fold_to_one_spelling(
        self, entity_type: str, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to(entity_type, spellings, expected)

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ("Osama bin Laden", "Osama Laden"),
            ("bin Laden", "Laden"),
            ("Abu Bakr", "Bakr"),
            ("Abd al-Rahman", "Rahman"),
            ("Ali", "Alia"),
            ("Hasan", "Husayn"),
            ("Ahmad Ali", "Ali Ahmad"),
            ("Fatima bint Ahmad", "Fatima bin Ahmad"),
            ("Abdelaziz", "Aziz"),
            ("Abdi", "Abd"),
            ("an Nguyen", "Nguyen"),
        ],
    )
    def test_distinct_names_stay_distinct(self, first: str, second: str) -> None:
        assert normalize("person", first) != normalize("person", second)

    def test_article_alone_at_the_end_is_kept_so_it_is_not_empty(self) -> None:
        assert normalize("person", "Al") == "al"
        assert normalize("person", "Abdel-Al") == "abd al"

    def test_fused_article_may_stay_different(self) -> None:
        assert normalize("person", "albaghdadi") == "albaghdadi"


class TestArabicNames:
    @pytest.mark.parametrize(
        ("spellings", "expected"),
        [
            (
                ["أُسَامَة بن لادن", "اسامه بن لادن", "أسامة ابن لادن", "إسامة إبن لادن"],
                "اسامه بن لادن",
            ),
            (["أبو بكر البغدادي", "ابو بكر بغدادي", "أبـــو بكر البغدادى"], "ابو بكر بغدادي"),
            (["عبدالله", "عبد الله", "عَبْدُ اللّٰه"], "عبد الله"),
            (["عبدالرحمن", "عبد الرحمن", "عبد رحمن"], "عبد رحمن"),
            (["مُحَمَّد", "محمد", "ﻣﺤﻤﺪ", "مـحـمـد"], "محمد"),
            (["مؤمن", "مومن"], "مومن"),
            (["هانئ", "هاني"], "هاني"),
            (["یوسف", "يوسف"], "يوسف"),
            (["کریم", "كريم"], "كريم"),
            (["آمنة", "امنه", "ٱمنة"], "امنه"),
            (["شركة ١٢٣", "شركة 123", "شركه ۱۲۳"], "شركه 123"),
        ],
    )
    def test_arabic_spelling_variants_fold_to_one_form(
        self, spellings: list[str], expected: str
    ) -> None:
        assert_all_fold_to("person", spellings, expected)

    def test_mixed_script_name_folds_each_part(self) -> None:
        assert normalize("organization", "Al-Rashid شركة الرشيد") == "rashid شركه رشيد"

    def test_arabic_and_latin_spellings_are_not_matched_across_scripts(self) -> None:
        assert normalize("person", "محمد") != normalize("person", "Muhammad")


class TestProperties:
    @pytest.mark.parametrize(
        "entity_type", ["person", "organization", "address", "account", "document"]
    )
    @settings(deadline=None)
    @given(value=st.text(max_size=500))
    def test_normalize_is_idempotent(self, entity_type: str, value: str) -> None:
        try:
            once = normalize(entity_type, value)
        except InvalidEntity:
            return
        assert normalize(entity_type, once) == once

    @pytest.mark.parametrize(
        ("entity_type", "value"),
        [
            ("iban", IRAQ_IBAN),
            ("phone", "+9647701234567"),
            ("email", "info@xn--bcher-kva.de"),
            ("vessel", "IMO9319466"),
        ],
    )
    def test_canonical_identifier_is_its_own_canonical_form(
        self, entity_type: str, value: str
    ) -> None:
        assert normalize(entity_type, normalize(entity_type, value)) == normalize(
            entity_type, value
        )

    @pytest.mark.parametrize("entity_type", ENTITY_TYPES)
    @settings(deadline=None)
    @given(
        value=st.one_of(
            st.text(max_size=500),
            st.text(alphabet="+0123456789 ()-./@IMOimoBCbcTx'ʿاأل", max_size=60),
        )
    )
    def test_arbitrary_text_raises_nothing_but_invalid_entity(
        self, entity_type: str, value: str
    ) -> None:
        try:
            result = normalize(entity_type, value)
        except InvalidEntity:
            return
        assert result
        assert result == result.strip()


class TestAsciiShortcuts:
    """ASCII text takes shortcuts through the character folding and the word split; they must
    give exactly what the general path gives."""

    @settings(deadline=None)
    @given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
    def test_folding_ascii_gives_what_the_general_path_gives(self, text: str) -> None:
        assert normalize_module._fold_characters(text) == normalize_module._fold_any_characters(
            text
        )

    @settings(deadline=None)
    @given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
    def test_splitting_ascii_gives_what_the_general_path_gives(self, text: str) -> None:
        assert normalize_module._words(text) == normalize_module._any_words(text)

    def test_text_beyond_ascii_takes_the_general_path(self) -> None:
        assert normalize_module._fold_characters("Ṣāliḥ ÆON") == "salih aeon"
        assert normalize_module._words("abd‿allah x·y") == ["abd", "allah", "x", "y"]


class TestTypes:
    def test_every_type_the_api_accepts_has_a_normalisation(self) -> None:
        assert set(get_args(EntityType)) == set(ENTITY_TYPES)
