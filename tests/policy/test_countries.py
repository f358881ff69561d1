"""The shipped country files: they load, each narrows only its own originator's reports, and
each does what policies/countries/README.md says. tests/policy/test_engine.py checks them against
a plain reading on generated reports; this file pins the intended effects by example."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.policy import (
    GROUPS,
    Classification,
    Level,
    PolicyBundle,
    PolicyEngine,
    ReportFacts,
    load_bundle,
)

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
COUNTRIES = ("IRQ", "SAU", "USA")
SAU_RULE = "SAU.donations-full-only-to-chairs-and-fatf"
USA_RULE = "USA.law-enforcement-withheld-from-bodies"
IRQ_RULE = "IRQ.no-tearline-of-secret-operations"
BODIES = frozenset({"EU", "FATF", "MENAFATF", "EGMONT", "INTERPOL", "UNMT"})

SHIPPED_BUNDLE = load_bundle(SHIPPED)
SHIPPED_ENGINE = PolicyEngine(SHIPPED_BUNDLE)


def _base_only(root: Path) -> PolicyBundle:
    """The shipped bundle without its country files (and the cases that name their policies)."""
    target = root / "policies"
    shutil.copytree(SHIPPED, target)
    for code in COUNTRIES:
        (target / "countries" / f"{code}.cedar").unlink()
        (target / "tests" / f"country_{code}.yaml").unlink()
    return load_bundle(target)


@pytest.fixture(scope="module")
def base_engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    return PolicyEngine(_base_only(tmp_path_factory.mktemp("base-only")))


def facts(**overrides: Any) -> ReportFacts:
    """An active SECRET report released to ALL with a summary, unless overridden."""
    fields: dict[str, Any] = {
        "id": "r1",
        "originator": "SAU",
        "status": "active",
        "classification": Classification.SECRET,
        "topics": frozenset({"REV.DON"}),
        "releasable_to": frozenset({"ALL"}),
        "tearline_to": frozenset({"ALL"}),
        "tearline_classification": Classification.UNCLASSIFIED,
        "has_summary": True,
    }
    fields.update(overrides)
    return ReportFacts(**fields)


def levels(engine: PolicyEngine, report: ReportFacts) -> dict[str, Level]:
    return {code: decision.level for code, decision in engine.decide(report).items()}


def changed(base: PolicyEngine, report: ReportFacts) -> dict[str, tuple[Level, Level]]:
    """Members whose level the country files change: code -> (base level, shipped level)."""
    before, after = levels(base, report), levels(SHIPPED_ENGINE, report)
    return {code: (before[code], after[code]) for code in before if before[code] != after[code]}


class TestShippedFiles:
    def test_each_country_file_is_loaded_with_its_policy(self) -> None:
        sources = SHIPPED_BUNDLE.policy_sources
        assert {f"countries/{code}.cedar" for code in COUNTRIES} <= set(SHIPPED_BUNDLE.files)
        assert sources[SAU_RULE][0] == "countries/SAU.cedar"
        assert sources[USA_RULE][0] == "countries/USA.cedar"
        assert sources[IRQ_RULE][0] == "countries/IRQ.cedar"

    def test_country_policies_are_all_forbids_scoped_to_their_originator(self) -> None:
        for policy_id in (SAU_RULE, USA_RULE, IRQ_RULE):
            code = policy_id.split(".", 1)[0]
            policy = SHIPPED_BUNDLE.policy_text.split(f'@id("{policy_id}")')[1].split("@id(")[0]
            assert policy.lstrip().startswith("forbid")
            assert f'resource.originator) == Tearline::Member::"{code}"' in policy

    def test_each_country_file_has_decision_cases_naming_its_policy(self) -> None:
        for code, policy_id in (("SAU", SAU_RULE), ("USA", USA_RULE), ("IRQ", IRQ_RULE)):
            cases = [c for c in SHIPPED_BUNDLE.cases if c.file == f"tests/country_{code}.yaml"]
            assert any(policy_id in (c.decided_by or ()) for c in cases), code
            # and cases the rule must leave alone: decisions it does not name
            assert any(c.decided_by is not None and policy_id not in c.decided_by for c in cases), (
                code
            )

    def test_every_country_policy_is_pinned_by_some_case(self) -> None:
        pinned = {policy_id for case in SHIPPED_BUNDLE.cases for policy_id in case.decided_by or ()}
        country_ids = {i for i in SHIPPED_BUNDLE.policy_ids if not i.startswith("base.")}
        assert country_ids == {SAU_RULE, USA_RULE, IRQ_RULE}
        assert country_ids <= pinned


class TestSaudiDonations:
    def test_only_the_chairs_and_fatf_read_sau_donations_reports_in_full(self) -> None:
        report = facts(classification=Classification.RESTRICTED)
        full = {code for code, level in levels(SHIPPED_ENGINE, report).items() if level == "full"}
        assert full == {"ITA", "SAU", "USA", "FATF"}

    def test_everyone_else_released_to_keeps_the_tearline(self, base_engine: PolicyEngine) -> None:
        report = facts(classification=Classification.RESTRICTED)
        lowered = changed(base_engine, report)
        assert lowered
        assert set(lowered.values()) == {(Level.FULL, Level.TEARLINE)}
        assert not {"ITA", "SAU", "USA", "FATF"} & lowered.keys()
        decision = SHIPPED_ENGINE.explain("DEU", report)
        assert decision.policy_ids == ("base.tearline", SAU_RULE)

    def test_an_ita_report_on_donations_is_unaffected(self, base_engine: PolicyEngine) -> None:
        assert changed(base_engine, facts(originator="ITA")) == {}
        assert SHIPPED_ENGINE.explain("DEU", facts(originator="ITA")).level is Level.FULL

    def test_a_sau_report_on_another_topic_is_unaffected(self, base_engine: PolicyEngine) -> None:
        assert changed(base_engine, facts(topics=frozenset({"REV.OIL", "MOV.HAW"}))) == {}


class TestUsaLawEnforcement:
    def test_bodies_get_nothing_on_usa_law_enforcement_reports(
        self, base_engine: PolicyEngine
    ) -> None:
        report = facts(
            originator="USA",
            classification=Classification.RESTRICTED,
            topics=frozenset({"CTR.LE", "MOV.CASH"}),
        )
        decided = SHIPPED_ENGINE.decide(report)
        assert {code for code, d in decided.items() if d.level is Level.NONE} == BODIES
        assert decided["INTERPOL"].policy_ids == (USA_RULE,)
        assert changed(base_engine, report).keys() == BODIES

    def test_states_keep_their_levels_on_usa_law_enforcement_reports(
        self, base_engine: PolicyEngine
    ) -> None:
        report = facts(originator="USA", topics=frozenset({"CTR.LE"}), releasable_to={"GBR"})
        got = levels(SHIPPED_ENGINE, report)
        assert (got["USA"], got["GBR"], got["DEU"]) == (Level.FULL, Level.FULL, Level.TEARLINE)
        assert not changed(base_engine, report).keys() - BODIES

    def test_a_gbr_law_enforcement_report_still_reaches_bodies(
        self, base_engine: PolicyEngine
    ) -> None:
        report = facts(
            originator="GBR", classification=Classification.RESTRICTED, topics={"CTR.LE"}
        )
        assert changed(base_engine, report) == {}
        assert SHIPPED_ENGINE.explain("INTERPOL", report).level is Level.FULL

    def test_bodies_keep_usa_reports_on_other_topics(self, base_engine: PolicyEngine) -> None:
        report = facts(originator="USA", topics=frozenset({"CTR.SANC"}), releasable_to={"GBR"})
        assert changed(base_engine, report) == {}
        assert SHIPPED_ENGINE.explain("EU", report).level is Level.TEARLINE


class TestIraqSecretOperations:
    def test_no_tearline_of_irq_secret_operations_only_full_or_hit(
        self, base_engine: PolicyEngine
    ) -> None:
        report = facts(
            originator="IRQ", topics=frozenset({"USE.OPS"}), releasable_to={"JOR", "EGMONT"}
        )
        got = levels(SHIPPED_ENGINE, report)
        assert {code for code, level in got.items() if level is Level.FULL} == {"IRQ", "JOR"}
        assert Level.TEARLINE not in got.values()
        assert set(changed(base_engine, report).values()) == {(Level.TEARLINE, Level.HIT)}
        assert SHIPPED_ENGINE.explain("DEU", report).policy_ids == ("base.hit", IRQ_RULE)

    @pytest.mark.parametrize(
        "overrides",
        [
            {"classification": Classification.CONFIDENTIAL},
            {"topics": frozenset({"USE.AFF"})},
            {"originator": "JOR"},
        ],
        ids=["confidential", "other-topic", "other-originator"],
    )
    def test_other_irq_reports_and_other_originators_keep_their_tearline(
        self, base_engine: PolicyEngine, overrides: dict[str, Any]
    ) -> None:
        fields = {"originator": "IRQ", "topics": frozenset({"USE.OPS"}), "releasable_to": {"JOR"}}
        report = facts(**{**fields, **overrides})
        assert changed(base_engine, report) == {}
        assert SHIPPED_ENGINE.explain("DEU", report).level is Level.TEARLINE


_CODES = sorted(SHIPPED_BUNDLE.members)
_AUDIENCE = st.frozensets(st.sampled_from([*GROUPS, *_CODES]), min_size=1, max_size=4)


@st.composite
def active_reports(draw: st.DrawFn) -> ReportFacts:
    """Active reports by anyone, often on the topics the country files restrict."""
    leaves = sorted(SHIPPED_BUNDLE.taxonomy.leaves)
    topics = draw(st.frozensets(st.sampled_from(leaves), min_size=1, max_size=3))
    restricted = draw(st.frozensets(st.sampled_from(["REV.DON", "CTR.LE", "USE.OPS"]), max_size=2))
    return facts(
        originator=draw(st.sampled_from([*COUNTRIES, *COUNTRIES, *_CODES])),
        classification=draw(st.sampled_from(Classification)),
        topics=topics | restricted,
        releasable_to=draw(_AUDIENCE),
        tearline_to=draw(_AUDIENCE),
        has_summary=draw(st.booleans()),
        granted=draw(st.frozensets(st.sampled_from(_CODES), max_size=2)),
    )


class TestScoping:
    @settings(max_examples=150, deadline=None)
    @given(report=active_reports())
    def test_country_files_only_ever_lower_levels_on_their_own_reports(
        self, base_engine: PolicyEngine, report: ReportFacts
    ) -> None:
        lowered = changed(base_engine, report)
        if report.originator not in COUNTRIES:
            assert lowered == {}
        for code, (before, after) in lowered.items():
            assert before.rank > after.rank, code
        # rule 1 holds under every country file: the originator keeps full
        assert report.originator not in lowered

    def test_the_same_markings_from_another_originator_are_never_lowered(
        self, base_engine: PolicyEngine
    ) -> None:
        for code in COUNTRIES:
            for report in (
                facts(originator=code, topics=frozenset({"REV.DON", "CTR.LE", "USE.OPS"})),
                facts(originator=code, classification=Classification.RESTRICTED, topics={"CTR.LE"}),
            ):
                moved = dataclasses.replace(report, originator="DNK")
                assert changed(base_engine, moved) == {}, code
