"""Loading `policies/`: the shipped bundle, and every way a bad bundle is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from app.policy import (
    GROUPS,
    Classification,
    Level,
    PolicyBundle,
    PolicyError,
    ReportFacts,
    expand_audience,
    load_bundle,
    validate_audience,
)

SHIPPED = Path(__file__).resolve().parents[2] / "policies"

STATES = {"ITA", "SAU", "USA", "AUS", "BHR", "BGR", "CAN", "DNK", "FRA", "GEO", "DEU", "IRQ", "JPN"}
STATES |= {
    "JOR",
    "KWT",
    "LVA",
    "LBN",
    "NLD",
    "NZL",
    "PAN",
    "POL",
    "QAT",
    "ESP",
    "TUR",
    "ARE",
    "GBR",
}
BODIES = {"EU", "FATF", "MENAFATF", "EGMONT", "INTERPOL", "UNMT"}

COUNTRY_FORBID = """\
// bodies get at most the tearline of Italian hawala reports
@id("ITA.no-full-hawala-for-bodies")
forbid (principal, action == Tearline::Action::"read_full", resource)
when { principal.kind == "body" && resource.topics.contains("MOV.HAW") };
"""


@pytest.fixture(scope="module")
def shipped() -> PolicyBundle:
    return load_bundle(SHIPPED)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def edit(path: Path, old: str, new: str) -> str:
    """Replace the one occurrence of `old` in `path`; return the new text."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur once in {path.name}"
    text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return text


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle` as a whole token."""
    pattern = re.compile(re.escape(needle) + r"(?!\w)")
    hits = [number for number, line in enumerate(text.split("\n"), 1) if pattern.search(line)]
    return hits[occurrence - 1]


def suspend(policy_dir: Path, code: str) -> None:
    """Set `active: false` on one member of the roster copy."""
    path = policy_dir / "roster.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index(f"code: {code}\n")
    rest = text[start:].replace("active: true", "active: false", 1)
    path.write_text(text[:start] + rest, encoding="utf-8")


def refusal(policy_dir: Path) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_bundle(policy_dir)
    return caught.value


class TestShippedBundle:
    def test_roster_holds_the_2015_membership(self, shipped: PolicyBundle) -> None:
        assert set(shipped.members) == STATES | BODIES
        assert len(shipped.members) == 32

    def test_chairs_are_italy_saudi_arabia_and_the_united_states(
        self, shipped: PolicyBundle
    ) -> None:
        chairs = {code for code, member in shipped.members.items() if member.is_chair}
        assert chairs == {"ITA", "SAU", "USA"}
        assert shipped.members["USA"].roles == frozenset({"chair"})
        assert shipped.members["DEU"].roles == frozenset({"member"})

    def test_states_are_secret_cleared_and_hold_every_topic(self, shipped: PolicyBundle) -> None:
        every_topic = frozenset(shipped.taxonomy.leaves)
        for code in STATES:
            member = shipped.members[code]
            assert (member.kind, member.clearance) == ("state", Classification.SECRET)
            assert member.mandate == every_topic
            assert member.active

    def test_bodies_carry_their_configured_clearance_and_mandate(
        self, shipped: PolicyBundle
    ) -> None:
        members = shipped.members
        leaves = shipped.taxonomy.branches
        assert members["EU"].clearance == Classification.CONFIDENTIAL
        assert members["EU"].mandate == frozenset(shipped.taxonomy.leaves)
        assert members["FATF"].clearance == Classification.RESTRICTED
        assert members["FATF"].mandate == frozenset(
            {*leaves["MOV"], "REV.DON", "REV.ONL", *leaves["CTR"]}
        )
        assert members["MENAFATF"].mandate == members["FATF"].mandate
        assert members["EGMONT"].mandate == frozenset(
            {*leaves["MOV"], "REV.DON", "REV.KFR", *leaves["USE"]}
        )
        assert members["INTERPOL"].mandate == frozenset(
            {"REV.ANT", "REV.KFR", "REV.FTF", "MOV.CASH", "CTR.LE"}
        )
        assert members["UNMT"].clearance == Classification.CONFIDENTIAL
        assert members["UNMT"].mandate == frozenset({*leaves["REV"], "USE.AFF", "CTR.SANC"})
        assert all(members[code].kind == "body" for code in BODIES)

    def test_taxonomy_has_four_branches_and_their_leaves(self, shipped: PolicyBundle) -> None:
        taxonomy = shipped.taxonomy
        assert list(taxonomy.branches) == ["REV", "MOV", "USE", "CTR"]
        assert [len(leaves) for leaves in taxonomy.branches.values()] == [12, 8, 3, 4]
        assert taxonomy.leaves["MOV.HAW"] == "hawala"
        assert taxonomy.branch_names["CTR"] == "countermeasures"

    def test_base_policies_are_named(self, shipped: PolicyBundle) -> None:
        # country policies follow the base ones; tests/policy/test_countries.py covers them
        base_ids = tuple(
            i for i in shipped.policy_ids if shipped.policy_sources[i][0] == "base.cedar"
        )
        assert base_ids == (
            "base.originator",
            "base.withdrawn",
            "base.releasable",
            "base.granted",
            "base.tearline",
            "base.hit",
            "base.suspended",
        )
        assert shipped.policy_sources["base.originator"][0] == "base.cedar"

    def test_files_are_listed_sorted_and_hashed(self, shipped: PolicyBundle) -> None:
        assert shipped.files == tuple(sorted(shipped.files))
        assert {"base.cedar", "roster.yaml", "schema.cedarschema", "taxonomy.yaml"} <= set(
            shipped.files
        )
        assert "countries/README.md" not in shipped.files
        assert re.fullmatch(r"[0-9a-f]{64}", shipped.hash)
        assert shipped.loaded_at.utcoffset() is not None

    def test_ships_decision_cases(self, shipped: PolicyBundle) -> None:
        assert len(shipped.cases) >= 30
        assert len({case.name for case in shipped.cases}) == len(shipped.cases)


class TestBundleHash:
    def test_same_files_give_the_same_hash(self, shipped: PolicyBundle, policy_dir: Path) -> None:
        assert load_bundle(policy_dir).hash == shipped.hash

    def test_any_changed_byte_changes_the_hash(
        self, shipped: PolicyBundle, policy_dir: Path
    ) -> None:
        edit(policy_dir / "roster.yaml", "name: Italy", "name: Italia")
        assert load_bundle(policy_dir).hash != shipped.hash

    def test_a_renamed_file_changes_the_hash(self, shipped: PolicyBundle, policy_dir: Path) -> None:
        (policy_dir / "tests/audiences.yaml").rename(policy_dir / "tests/groups.yaml")
        assert load_bundle(policy_dir).hash != shipped.hash

    def test_documentation_files_do_not_change_the_hash(
        self, shipped: PolicyBundle, policy_dir: Path
    ) -> None:
        (policy_dir / "countries/README.md").write_text("changed\n", encoding="utf-8")
        (policy_dir / "countries/.gitkeep").write_text("", encoding="utf-8")
        assert load_bundle(policy_dir).hash == shipped.hash


class TestPolicyError:
    def test_str_is_file_line_message(self) -> None:
        error = PolicyError("roster.yaml", 12, "unknown topic 'REV.XXX' in mandate")
        assert str(error) == "roster.yaml:12: unknown topic 'REV.XXX' in mandate"
        assert (error.file, error.line) == ("roster.yaml", 12)


class TestRefusedFiles:
    def test_missing_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyError, match="policy directory not found"):
            load_bundle(tmp_path / "nowhere")

    @pytest.mark.parametrize(
        "name", ["roster.yaml", "taxonomy.yaml", "schema.cedarschema", "base.cedar"]
    )
    def test_missing_required_file_is_named(self, policy_dir: Path, name: str) -> None:
        (policy_dir / name).unlink()
        error = refusal(policy_dir)
        assert (error.file, error.message) == (name, "file is missing")

    def test_unexpected_top_level_file_is_refused(self, policy_dir: Path) -> None:
        (policy_dir / "extra.cedar").write_text("", encoding="utf-8")
        assert refusal(policy_dir).file == "extra.cedar"

    def test_non_utf8_file_is_refused_at_its_line(self, policy_dir: Path) -> None:
        path = policy_dir / "roster.yaml"
        path.write_bytes(path.read_bytes().replace(b"name: Italy", b"name: It\xe0ly"))
        error = refusal(policy_dir)
        text = path.read_bytes().decode("latin-1")
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "name: It\u00e0ly"))

    def test_stray_file_in_countries_is_refused(self, policy_dir: Path) -> None:
        (policy_dir / "countries/ITA.cedar.bak").write_text("", encoding="utf-8")
        assert refusal(policy_dir).file == "countries/ITA.cedar.bak"

    def test_stray_file_in_tests_is_refused(self, policy_dir: Path) -> None:
        (policy_dir / "tests/more.yml").write_text("cases: []\n", encoding="utf-8")
        assert refusal(policy_dir).file == "tests/more.yml"


class TestRefusedYaml:
    def test_yaml_syntax_error_names_its_line(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "roster.yaml", "name: Japan", "name: [Japan")
        error = refusal(policy_dir)
        assert error.file == "roster.yaml"
        assert error.message.startswith("invalid YAML")
        # the parser notices the unclosed flow sequence at the next line at the latest
        assert line_of(text, "[Japan") <= error.line <= line_of(text, "[Japan") + 1

    def test_duplicate_yaml_key_is_refused(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "roster.yaml", "name: Japan\n", "name: Japan\n    name: Nippon\n")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "name: Nippon"))
        assert "duplicate key 'name'" in error.message

    def test_unknown_topic_in_mandate_names_its_line(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "roster.yaml", "REV.ANT, REV.KFR", "REV.ANT, REV.XXX")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "REV.XXX"))
        assert error.message == "unknown topic 'REV.XXX' in mandate"

    def test_unknown_clearance_is_refused(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "roster.yaml",
            "clearance: RESTRICTED\n    mandate: [MOV, REV.DON, REV.KFR, USE]",
            "clearance: TOP SECRET\n    mandate: [MOV, REV.DON, REV.KFR, USE]",
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "TOP SECRET"))
        assert "unknown clearance 'TOP SECRET'" in error.message

    def test_duplicate_member_code_names_the_second(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "roster.yaml", "code: NZL", "code: NLD")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "code: NLD", 2))
        assert error.message == "duplicate member code 'NLD'"

    @pytest.mark.parametrize("code", ["deu", "D", "DE-U", "ABCDEFGHIJKLMNOPQ"])
    def test_bad_member_code_is_refused(self, policy_dir: Path, code: str) -> None:
        text = edit(policy_dir / "roster.yaml", "code: DEU", f"code: {code}")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, f"code: {code}"))
        assert error.message.startswith("bad member code")

    @pytest.mark.parametrize("group", GROUPS)
    def test_member_named_like_a_group_is_refused(self, policy_dir: Path, group: str) -> None:
        edit(policy_dir / "roster.yaml", "code: DEU", f"code: {group}")
        assert "reserved for a group" in refusal(policy_dir).message

    def test_misspelt_member_key_is_refused(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "roster.yaml", "name: Japan", "nmae: Japan")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("roster.yaml", line_of(text, "nmae: Japan"))
        assert error.message == "unknown key 'nmae' in a member"

    def test_active_must_be_a_boolean(self, policy_dir: Path) -> None:
        path = policy_dir / "roster.yaml"
        text = path.read_text(encoding="utf-8").replace("active: true", "active: maybe", 1)
        path.write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.line, error.message) == (
            line_of(text, "maybe"),
            "'active' must be true or false",
        )

    def test_unknown_kind_is_refused(self, policy_dir: Path) -> None:
        path = policy_dir / "roster.yaml"
        text = path.read_text(encoding="utf-8").replace("kind: state", "kind: city", 1)
        path.write_text(text, encoding="utf-8")
        assert refusal(policy_dir).line == line_of(text, "kind: city")

    def test_topic_outside_its_branch_is_refused(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "taxonomy.yaml", "MOV.VA: virtual", "REV.VA: virtual")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("taxonomy.yaml", line_of(text, "REV.VA"))

    def test_empty_roster_is_refused(self, policy_dir: Path) -> None:
        (policy_dir / "roster.yaml").write_text("members: []\n", encoding="utf-8")
        assert refusal(policy_dir).message == "the roster has no members"


class TestRefusedCedar:
    def test_cedar_syntax_error_names_its_line(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "base.cedar",
            "principal.clearance >= resource.classification &&\n  principal.mandate",
            "principal.clearance >= resource.classification &&&\n  principal.mandate",
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, "&&&"))
        assert error.message.startswith("Cedar syntax error")

    def test_missing_semicolon_is_placed_at_the_next_policy(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "base.cedar",
            "when { principal.active };\n",
            "when { principal.active }\n",
        )
        error = refusal(policy_dir)
        assert error.file == "base.cedar"
        assert error.line == line_of(text, '@id("base.suspended")')

    def test_unknown_function_names_its_line(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "base.cedar",
            "resource.granted.contains(principal.code)",
            "resource.granted.includes(principal.code)",
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, "includes"))

    def test_schema_validation_failure_names_the_attribute_line(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "base.cedar",
            "principal.clearance >= resource.tearline_classification",
            "principal.clearance >= resource.tearline_clasification",
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, "tearline_clasification"))
        assert error.message.startswith("fails schema validation")
        assert "tearline_clasification" in error.message

    def test_type_error_is_refused(self, policy_dir: Path) -> None:
        text = edit(
            policy_dir / "base.cedar",
            "when { principal.active };",
            'when { principal.active == "yes" };',
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, '@id("base.hit")'))

    def test_semicolons_in_comments_and_strings_do_not_shift_lines(self, policy_dir: Path) -> None:
        path = policy_dir / "base.cedar"
        text = (
            '// a comment; with "quotes; and" semicolons;\n'
            '@id("base.odd")\nforbid (principal, action, resource)\n'
            'when { principal.code == "a;b" };\n' + path.read_text(encoding="utf-8")
        ).replace("resource.has_summary &&", "resource.has_summary &&&")
        path.write_text(text, encoding="utf-8")
        assert refusal(policy_dir).line == line_of(text, "&&&")

    def test_policy_without_id_is_refused(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "base.cedar", '@id("base.hit")\n', "")
        error = refusal(policy_dir)
        assert error.file == "base.cedar"
        assert error.line == line_of(text, "permit", 6)
        assert "no @id" in error.message

    def test_duplicate_id_names_the_second(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "base.cedar", '@id("base.hit")', '@id("base.tearline")')
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, '@id("base.tearline")', 2))
        assert "duplicate policy id 'base.tearline'" in error.message

    def test_base_id_needs_the_base_prefix(self, policy_dir: Path) -> None:
        edit(policy_dir / "base.cedar", '@id("base.hit")', '@id("hit")')
        assert "base.<name>" in refusal(policy_dir).message

    def test_template_is_refused(self, policy_dir: Path) -> None:
        path = policy_dir / "base.cedar"
        text = (
            path.read_text(encoding="utf-8")
            + '\n@id("base.t")\npermit (principal == ?principal, action, resource);\n'
        )
        path.write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, '@id("base.t")'))
        assert "templates are not supported" in error.message

    def test_policy_naming_a_report_is_refused(self, policy_dir: Path) -> None:
        path = policy_dir / "base.cedar"
        text = path.read_text(encoding="utf-8") + (
            '\n@id("base.one")\nforbid (principal, action, resource == Tearline::Report::"r1");\n'
        )
        path.write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("base.cedar", line_of(text, '@id("base.one")'))
        assert "may not name a report" in error.message

    def test_schema_syntax_error_names_its_line(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "schema.cedarschema", "active: Bool,", "active: Bool,,")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("schema.cedarschema", line_of(text, "Bool,,"))

    def test_schema_unknown_type_names_its_line(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "schema.cedarschema", "kind: String,", "kind: Strin,")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("schema.cedarschema", line_of(text, "Strin,"))

    def test_schema_that_does_not_fit_the_engine_is_refused(self, policy_dir: Path) -> None:
        text = edit(policy_dir / "schema.cedarschema", "    orcon: Bool,\n", "")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("schema.cedarschema", line_of(text, "entity Report"))
        assert "report entities" in error.message


class TestCountryFiles:
    def test_country_forbid_is_loaded_and_scoped_to_its_originator(self, policy_dir: Path) -> None:
        (policy_dir / "countries/ITA.cedar").write_text(COUNTRY_FORBID, encoding="utf-8")
        bundle = load_bundle(policy_dir)
        assert "countries/ITA.cedar" in bundle.files
        assert bundle.policy_sources["ITA.no-full-hawala-for-bodies"] == ("countries/ITA.cedar", 2)
        policy = bundle.policy_text.split('@id("ITA.no-full-hawala-for-bodies")')[1]
        assert 'resource.originator) == Tearline::Member::"ITA"' in policy

    def test_country_file_for_unknown_member_is_refused(self, policy_dir: Path) -> None:
        (policy_dir / "countries/XYZ.cedar").write_text("", encoding="utf-8")
        error = refusal(policy_dir)
        assert error.file == "countries/XYZ.cedar"
        assert "not a roster member" in error.message

    def test_permit_in_country_file_is_refused(self, policy_dir: Path) -> None:
        text = COUNTRY_FORBID + '\n@id("ITA.widen")\npermit (principal, action, resource);\n'
        (policy_dir / "countries/ITA.cedar").write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("countries/ITA.cedar", line_of(text, "ITA.widen"))
        assert "`permit` is refused" in error.message

    def test_country_id_needs_the_country_prefix(self, policy_dir: Path) -> None:
        text = COUNTRY_FORBID.replace("ITA.no-full", "FRA.no-full")
        (policy_dir / "countries/ITA.cedar").write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("countries/ITA.cedar", 2)
        assert "ITA.<name>" in error.message

    def test_country_id_may_not_repeat_a_base_id(self, policy_dir: Path) -> None:
        text = COUNTRY_FORBID + COUNTRY_FORBID.replace("//", "// again")
        (policy_dir / "countries/ITA.cedar").write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("countries/ITA.cedar", 6)
        assert "first at countries/ITA.cedar:2" in error.message

    def test_country_syntax_error_names_its_line(self, policy_dir: Path) -> None:
        text = COUNTRY_FORBID.replace('principal.kind == "body"', 'principal.kind == "body')
        (policy_dir / "countries/ITA.cedar").write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("countries/ITA.cedar", 4)

    def test_country_validation_error_names_its_line(self, policy_dir: Path) -> None:
        text = COUNTRY_FORBID.replace("principal.kind", "principal.knd")
        (policy_dir / "countries/ITA.cedar").write_text(text, encoding="utf-8")
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("countries/ITA.cedar", 4)
        assert "knd" in error.message


class TestRefusedCases:
    def write_case(self, policy_dir: Path, body: str) -> str:
        text = "cases:\n" + body
        (policy_dir / "tests/extra.yaml").write_text(text, encoding="utf-8")
        return text

    CASE = """\
  - name: extra
    member: {member}
    report:
      originator: ITA
      classification: SECRET
      topics: [{topic}]
    expect: {expect}
"""

    def test_unknown_member_is_refused(self, policy_dir: Path) -> None:
        text = self.write_case(
            policy_dir, self.CASE.format(member="XYZ", topic="REV.OIL", expect="hit")
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("tests/extra.yaml", line_of(text, "XYZ"))
        assert error.message == "unknown member 'XYZ' in member"

    def test_unknown_topic_is_refused(self, policy_dir: Path) -> None:
        text = self.write_case(
            policy_dir, self.CASE.format(member="DEU", topic="REV", expect="hit")
        )
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("tests/extra.yaml", line_of(text, "topics"))
        assert "unknown topic 'REV'" in error.message

    def test_unknown_level_is_refused(self, policy_dir: Path) -> None:
        text = self.write_case(
            policy_dir, self.CASE.format(member="DEU", topic="REV.OIL", expect="read")
        )
        assert refusal(policy_dir).line == line_of(text, "expect")

    def test_unknown_audience_code_is_refused(self, policy_dir: Path) -> None:
        case = self.CASE.format(member="DEU", topic="REV.OIL", expect="hit")
        case = case.replace("REV.OIL]\n", "REV.OIL]\n      releasable_to: [EVERYONE]\n")
        text = self.write_case(policy_dir, case)
        error = refusal(policy_dir)
        assert error.line == line_of(text, "EVERYONE")
        assert error.message == "unknown member 'EVERYONE' in releasable_to"

    def test_unknown_policy_id_is_refused(self, policy_dir: Path) -> None:
        case = self.CASE.format(member="DEU", topic="REV.OIL", expect="hit")
        text = self.write_case(policy_dir, case + "    decided_by: [base.nothing]\n")
        assert refusal(policy_dir).line == line_of(text, "base.nothing")

    def test_duplicate_case_name_is_refused(self, policy_dir: Path) -> None:
        case = self.CASE.format(member="DEU", topic="REV.OIL", expect="hit")
        text = self.write_case(policy_dir, case + case)
        error = refusal(policy_dir)
        assert (error.file, error.line) == ("tests/extra.yaml", line_of(text, "name: extra", 2))


class TestTaxonomy:
    def test_expand_turns_branches_into_leaves(self, shipped: PolicyBundle) -> None:
        expanded = shipped.taxonomy.expand(["USE", "CTR.LE"])
        assert expanded == frozenset({"USE.AFF", "USE.PROC", "USE.OPS", "CTR.LE"})

    def test_expand_refuses_unknown_topic(self, shipped: PolicyBundle) -> None:
        with pytest.raises(ValueError, match=r"unknown topic 'REV\.XXX'"):
            shipped.taxonomy.expand(["REV.XXX"])


class TestMember:
    def test_groups_of_a_chair_state(self, shipped: PolicyBundle) -> None:
        assert shipped.members["SAU"].groups == frozenset({"SAU", "ALL", "STATES", "CHAIRS"})

    def test_groups_of_a_body(self, shipped: PolicyBundle) -> None:
        assert shipped.members["EU"].groups == frozenset({"EU", "ALL", "BODIES"})

    def test_suspended_member_is_not_in_all(self, policy_dir: Path) -> None:
        suspend(policy_dir, "INTERPOL")
        member = load_bundle(policy_dir).members["INTERPOL"]
        assert not member.active
        assert "ALL" not in member.groups


class TestAudience:
    def test_groups_expand_to_active_member_codes(self, shipped: PolicyBundle) -> None:
        assert expand_audience(shipped, ["CHAIRS", "EU"]) == frozenset({"ITA", "SAU", "USA", "EU"})
        assert expand_audience(shipped, ["BODIES"]) == BODIES
        assert expand_audience(shipped, ["ALL"]) == STATES | BODIES

    def test_unknown_code_is_named(self, shipped: PolicyBundle) -> None:
        with pytest.raises(ValueError, match="'NOR'"):
            validate_audience(shipped, ["ALL", "NOR"])

    def test_a_bare_string_is_not_an_audience(self, shipped: PolicyBundle) -> None:
        with pytest.raises(TypeError):
            validate_audience(shipped, "ALL")


class TestLevel:
    def test_levels_are_ordered_full_tearline_hit_none(self) -> None:
        assert [level.rank for level in Level] == [3, 2, 1, 0]
        assert Level.FULL.at_least(Level.TEARLINE)
        assert Level.HIT.at_least(Level.HIT)
        assert not Level.NONE.at_least(Level.HIT)

    def test_levels_are_their_names(self) -> None:
        assert Level("tearline") is Level.TEARLINE
        assert str(Level.FULL) == "full"


class TestClassification:
    def test_coerce_accepts_names_numbers_and_levels(self) -> None:
        assert Classification.coerce("SECRET") is Classification.SECRET
        assert Classification.coerce(1) is Classification.RESTRICTED
        assert Classification.coerce(Classification.CONFIDENTIAL) is Classification.CONFIDENTIAL

    @pytest.mark.parametrize("value", ["TOP SECRET", 4, -1, True, None])
    def test_coerce_refuses_anything_else(self, value: object) -> None:
        with pytest.raises(ValueError, match="classification"):
            Classification.coerce(value)


class TestReportFacts:
    def facts(self, **overrides: object) -> ReportFacts:
        fields: dict[str, object] = {
            "id": "r1",
            "originator": "ITA",
            "status": "active",
            "classification": "SECRET",
            "topics": ["REV.OIL"],
            "releasable_to": ["ALL"],
            "tearline_to": ["ALL"],
            "tearline_classification": 0,
            "has_summary": False,
        }
        fields.update(overrides)
        return ReportFacts(**fields)  # type: ignore[arg-type]

    def test_collections_and_classifications_are_normalised(self) -> None:
        facts = self.facts()
        assert facts.topics == frozenset({"REV.OIL"})
        assert facts.classification is Classification.SECRET
        assert facts.tearline_classification is Classification.UNCLASSIFIED

    def test_decision_key_ignores_the_id(self) -> None:
        assert self.facts(id="a").decision_key() == self.facts(id="b").decision_key()
        assert self.facts().decision_key() != self.facts(status="revoked").decision_key()

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("status", "deleted"),
            ("tlp", "WHITE"),
            ("classification", "TOP SECRET"),
            ("originator", ""),
        ],
    )
    def test_unknown_values_are_refused(self, field: str, value: object) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - each field words its own message
            self.facts(**{field: value})

    def test_a_bare_string_is_not_a_set_of_codes(self) -> None:
        with pytest.raises(TypeError, match="releasable_to"):
            self.facts(releasable_to="ALL")

    def test_booleans_must_be_booleans(self) -> None:
        with pytest.raises(TypeError):
            self.facts(has_summary="yes")
