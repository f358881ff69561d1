"""The access model, end to end: random rosters, reports and country policies through the HTTP API.

Hypothesis generates a small roster (states and bodies, chairs, clearances, mandates), forbid-only
country files built from a few templates, and reports with random markings. Each example writes
those into a policy directory of its own, starts the real app on a fresh database with it, submits
the reports as their originators, then grants and revokes (below), and then asks, for every
member, what `GET /v1/reports/{id}` and a paginated `GET /v1/reports` show.

Grants (rule 4): after submitting, a few (member, report) pairs where an active member has `hit`
or `tearline` ask for access (`POST /v1/reports/{id}/access-requests`, 201) and the originator
approves (`POST /v1/access-requests/{id}/decision`, 200, no expiry: expiry is tested in
tests/search/). A grant gives `full` only if clearance allows and the originator's country does
not forbid `read_full` to that member, so some grants change nothing, on purpose. Then at most
one report in two, and at most two, is revoked by its originator (rule 2): every other member
gets `none`, grants included, the originator keeps `full`, and the report counts as updated then
(lists and searches order by last update).

The expected level of every (member, report) pair comes from `reference_level`, a plain reading of
product.md "Access model" written here; it never calls the app's loader or Cedar engine, so the
bundle loader, the engine, the stored decisions and the read queries are all checked at once.

Every report also holds 1-3 entities from a small shared pool (IBANs and names, each written in
several spellings), so reports share them, and every active member searches the whole pool once
with `POST /v1/search`: it must find exactly the (report, entity type) pairs whose reference level
is not `none`, at that level, newest reports first. `hit` and `none` both read as 404, so search
and `POST /v1/policy/explain` (asked by the originator) are the two ways they are told apart.

Not covered here, on purpose: expiring grants, denied requests and purge (rule 2) are tested on
their own (tests/reports/test_lifecycle.py, tests/search/); no example updates a report or changes
the bundle or roster once the app is up.

`TEARLINE_ACCESS_MODEL_PROFILE=access-model-deep` runs many more examples, for a change to the
policy code or the read paths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.config import PROJECT_ROOT
from tests.conftest import World, drop_database, make_world, report_body

SHIPPED = PROJECT_ROOT / "policies"

# product.md "Access model", vocabulary (values in domain.md)
CLASSIFICATIONS = ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
TEARLINE_CLASSIFICATIONS = ("UNCLASSIFIED", "RESTRICTED")
TLPS = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
GROUPS = ("ALL", "CHAIRS", "STATES", "BODIES")
FULL, TEARLINE, HIT, NONE = "full", "tearline", "hit", "none"
READABLE = (FULL, TEARLINE)
# The Cedar action that grants each level (schema.cedarschema).
ACTION_OF = {FULL: "read_full", TEARLINE: "read_tearline", HIT: "hit"}


def _taxonomy() -> dict[str, tuple[str, ...]]:
    document = yaml.safe_load((SHIPPED / "taxonomy.yaml").read_text(encoding="utf-8"))
    return {code: tuple(branch["topics"]) for code, branch in document["branches"].items()}


BRANCHES = _taxonomy()
BRANCH_OF = {leaf: branch for branch, leaves in BRANCHES.items() for leaf in leaves}
# A few leaves from every branch: enough for mandates and topics to overlap or miss often.
TOPICS = ("REV.OIL", "REV.KFR", "MOV.HAW", "MOV.VA", "USE.OPS", "CTR.SANC")
assert set(TOPICS) <= BRANCH_OF.keys()

# Entities the reports share: (type, spellings). A report holds one spelling, a search sends the
# first, so matching goes through normalisation (api.md: "exact on the normalised value").
ENTITY_POOL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("iban", ("DE89370400440532013000", "de89 3704 0044 0532 0130 00")),
    ("iban", ("GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32")),
    ("iban", ("NL91ABNA0417164300", "nl91-abna-0417-1643-00")),
    ("iban", ("IQ98NBIQ850123456789012", "iq98 nbiq 8501 2345 6789 012")),
    ("person", ("Muhammad al-Qasim", "Mohammed el-Qassem", "MUḤAMMAD AL QĀSIM")),
    ("person", ("Abu Umar al-Shami", "Abou Omar ash-Shami")),
    ("organization", ("Al-Nur Charitable Foundation", "al nūr charitable foundation")),
)

STATE_CODES = ("ITA", "SAU", "USA", "DEU", "FRA", "IRQ", "JOR", "TUR")
BODY_CODES = ("EU", "FATF", "EGMONT", "INTERPOL", "UNMT")
NO_SUCH_REPORT = "00000000-0000-4000-8000-000000000000"


# -- the reference model -----------------------------------------------------------------------


def rank(classification: str) -> int:
    """UNCLASSIFIED < RESTRICTED < CONFIDENTIAL < SECRET."""
    return CLASSIFICATIONS.index(classification)


@dataclass(frozen=True)
class Member:
    code: str
    kind: str  # "state" | "body"
    chair: bool
    clearance: str
    mandate: tuple[str, ...]  # as roster.yaml has it: leaf codes and whole branches
    active: bool

    def mandated_for(self, topic: str) -> bool:
        """A mandate names topics or whole branches (product.md, "topics")."""
        return topic in self.mandate or BRANCH_OF[topic] in self.mandate

    def selected_by(self, audience: tuple[str, ...]) -> bool:
        """Whether member codes and groups select this member (domain.md, "Groups")."""
        names = {self.code, "STATES" if self.kind == "state" else "BODIES"}
        if self.active:  # ALL is every *active* member
            names.add("ALL")
        if self.chair:
            names.add("CHAIRS")
        return not names.isdisjoint(audience)

    def roster_entry(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": f"Member {self.code}",
            "kind": self.kind,
            "roles": ["chair" if self.chair else "member"],
            "clearance": self.clearance,
            "mandate": list(self.mandate),
            "active": self.active,
        }


@dataclass(frozen=True)
class Report:
    """A submission's markings; None means "left out", so the API's defaults are exercised."""

    originator: str
    classification: str
    topics: tuple[str, ...]
    releasable_to: tuple[str, ...]
    tearline_to: tuple[str, ...] | None
    tearline_classification: str | None
    summary: str  # "text", "null" or "omitted"
    tlp: str | None
    orcon: bool | None
    # (index in ENTITY_POOL, index of the spelling written), distinct pool entries
    entities: tuple[tuple[int, int], ...]

    # api.md "Reports": the defaults of the optional markings
    @property
    def effective_tearline_to(self) -> tuple[str, ...]:
        return self.tearline_to if self.tearline_to is not None else ("ALL",)

    @property
    def effective_tearline_classification(self) -> str:
        return self.tearline_classification or "UNCLASSIFIED"

    @property
    def effective_tlp(self) -> str:
        return self.tlp or "AMBER"

    @property
    def has_summary(self) -> bool:
        return self.summary == "text"

    @property
    def entity_types(self) -> frozenset[str]:
        return frozenset(ENTITY_POOL[entry][0] for entry, _ in self.entities)

    def submission(self, index: int) -> dict[str, Any]:
        body = report_body(
            title=f"Report {index}",
            body=f"Body of report {index}.",
            summary=f"Tearline of report {index}.",
            topics=list(self.topics),
            classification=self.classification,
            releasable_to=list(self.releasable_to),
            entities=[
                {"type": ENTITY_POOL[entry][0], "value": ENTITY_POOL[entry][1][spelling]}
                for entry, spelling in self.entities
            ],
        )
        if self.summary == "null":
            body["summary"] = None
        elif self.summary == "omitted":
            del body["summary"]
        optional = {
            "tearline_to": list(self.tearline_to) if self.tearline_to is not None else None,
            "tearline_classification": self.tearline_classification,
            "tlp": self.tlp,
            "orcon": self.orcon,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return body


# Conditions of a country rule: `holds` is the reference meaning, `cedar` the text that says it.


class WhoCondition(Protocol):
    def holds(self, member: Member) -> bool: ...

    def cedar(self) -> str | None: ...


class WhichCondition(Protocol):
    def holds(self, report: Report) -> bool: ...

    def cedar(self) -> str | None: ...


@dataclass(frozen=True)
class Anyone:
    def holds(self, member: Member) -> bool:
        return True

    def cedar(self) -> str | None:
        return None


@dataclass(frozen=True)
class KindIs:
    kind: str

    def holds(self, member: Member) -> bool:
        return member.kind == self.kind

    def cedar(self) -> str | None:
        return f'principal.kind == "{self.kind}"'


@dataclass(frozen=True)
class MemberIs:
    code: str

    def holds(self, member: Member) -> bool:
        return member.code == self.code

    def cedar(self) -> str | None:
        return f'principal == Tearline::Member::"{self.code}"'


@dataclass(frozen=True)
class IsChair:
    def holds(self, member: Member) -> bool:
        return member.chair

    def cedar(self) -> str | None:
        return 'principal.roles.contains("chair")'


@dataclass(frozen=True)
class ClearedBelow:
    classification: str

    def holds(self, member: Member) -> bool:
        return rank(member.clearance) < rank(self.classification)

    def cedar(self) -> str | None:
        return f"principal.clearance < {rank(self.classification)}"


@dataclass(frozen=True)
class NotMandatedFor:
    topic: str

    def holds(self, member: Member) -> bool:
        return not member.mandated_for(self.topic)

    def cedar(self) -> str | None:
        return f'!principal.mandate.contains("{self.topic}")'


@dataclass(frozen=True)
class AnyReport:
    def holds(self, report: Report) -> bool:
        return True

    def cedar(self) -> str | None:
        return None


@dataclass(frozen=True)
class OnTopic:
    topic: str

    def holds(self, report: Report) -> bool:
        return self.topic in report.topics

    def cedar(self) -> str | None:
        return f'resource.topics.contains("{self.topic}")'


@dataclass(frozen=True)
class ClassifiedAtLeast:
    classification: str

    def holds(self, report: Report) -> bool:
        return rank(report.classification) >= rank(self.classification)

    def cedar(self) -> str | None:
        return f"resource.classification >= {rank(self.classification)}"


@dataclass(frozen=True)
class TlpIs:
    tlp: str

    def holds(self, report: Report) -> bool:
        return report.effective_tlp == self.tlp

    def cedar(self) -> str | None:
        return f'resource.tlp == "{self.tlp}"'


@dataclass(frozen=True)
class Orcon:
    def holds(self, report: Report) -> bool:
        return bool(report.orcon)

    def cedar(self) -> str | None:
        return "resource.orcon"


@dataclass(frozen=True)
class CountryRule:
    """One `forbid` of `countries/<country>.cedar`: which levels it takes from whom, on what."""

    country: str
    levels: tuple[str, ...]
    who: WhoCondition
    which: WhichCondition

    def cedar(self, policy_id: str) -> str:
        actions = ", ".join(f'Tearline::Action::"{ACTION_OF[level]}"' for level in self.levels)
        conditions = [c for c in (self.who.cedar(), self.which.cedar()) if c is not None]
        when = f"\nwhen {{ {' && '.join(conditions)} }}" if conditions else ""
        return f'@id("{policy_id}")\nforbid (principal, action in [{actions}], resource){when};\n'


def reference_level(
    member: Member,
    report: Report,
    rules: tuple[CountryRule, ...],
    *,
    granted: bool = False,
    revoked: bool = False,
) -> str:
    """product.md "Access model", rules 1-7, read literally.

    `granted`: the originator approved an access request of this member for this report, with no
    expiry; `revoked`: the originator revoked the report (purge is not modelled).
    """
    # Rule 1: the originator always has full. Rule 7 lets a country forbid levels to recipients;
    # the originator is not a recipient of its own report.
    if member.code == report.originator:
        return FULL
    # roster.yaml: "active: false suspends the member: it then gets no access at all".
    if not member.active:
        return NONE
    # Rule 2: a revoked report gives every other member none, grants and hits included.
    if revoked:
        return NONE
    # Rule 7: only the originator's own country file applies, and it can only take levels away.
    forbidden = {
        level
        for rule in rules
        if rule.country == report.originator and rule.who.holds(member) and rule.which.holds(report)
        for level in rule.levels
    }
    # Rules 3 and 4: both need clearance for the classification, and a country forbid of full
    # takes either away. A grant needs neither releasability nor mandate.
    if (
        FULL not in forbidden
        and rank(member.clearance) >= rank(report.classification)
        and (
            granted
            or (
                member.selected_by(report.releasable_to)
                and any(member.mandated_for(topic) for topic in report.topics)
            )
        )
    ):
        return FULL
    # Rule 5: no mandate check, the tearline exists to be shared more widely.
    if (
        TEARLINE not in forbidden
        and report.has_summary
        and member.selected_by(report.effective_tearline_to)
        and rank(member.clearance) >= rank(report.effective_tearline_classification)
    ):
        return TEARLINE
    # Rule 6: a hit for any active member unless the originator's country forbids it.
    return NONE if HIT in forbidden else HIT


# -- strategies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    members: tuple[Member, ...]
    rules: tuple[CountryRule, ...]
    reports: tuple[Report, ...]
    page_limit: int
    # (report index, member code), in the order the requests are made and approved
    grants: tuple[tuple[int, str], ...] = ()
    # report indexes, in the order they are revoked (after every grant)
    revocations: tuple[int, ...] = ()

    def level(self, member: Member, index: int) -> str:
        """The reference level once every report is submitted, granted and revoked."""
        return reference_level(
            member,
            self.reports[index],
            self.rules,
            granted=(index, member.code) in self.grants,
            revoked=index in self.revocations,
        )

    def newest_first(self) -> list[int]:
        """Report indexes by last update, newest first: a revocation updates a report."""
        kept = [index for index in range(len(self.reports)) if index not in self.revocations]
        return [*kept, *self.revocations][::-1]

    def country_files(self) -> dict[str, str]:
        """The text of each `countries/<CODE>.cedar`, policies in rule order."""
        files: dict[str, list[str]] = {}
        for rule in self.rules:
            policies = files.setdefault(rule.country, [])
            policies.append(rule.cedar(f"{rule.country}.rule-{len(policies)}"))
        return {code: "\n".join(policies) for code, policies in files.items()}

    def describe(self) -> str:
        """The example as a reader would set it up: roster, country files, reports."""
        lines = ["roster:"]
        for m in self.members:
            role = "chair" if m.chair else "member"
            state = "" if m.active else " (suspended)"
            mandate = ",".join(m.mandate)
            lines.append(f"  {m.code} {m.kind} {role} {m.clearance} mandate={mandate}{state}")
        for code, text in self.country_files().items():
            lines.append(f"countries/{code}.cedar:")
            lines += [f"  {line}" for line in text.splitlines()]
        lines.append("reports (in submission order):")
        for index, report in enumerate(self.reports):
            lines.append(f"  {index}: {report.submission(index)}")
        for index, code in self.grants:
            lines.append(f"{code} asks for report {index}, approved")
        for index in self.revocations:
            lines.append(f"report {index} revoked")
        lines.append(f"listing page size: {self.page_limit}")
        return "\n".join(lines)


def _distinct(elements: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[Any]:
    return st.lists(elements, min_size=low, max_size=high, unique=True).map(tuple)


def _member(
    code: str, chair: bool, clearance: str, mandate: tuple[str, ...], active: bool
) -> Member:
    kind = "state" if code in STATE_CODES else "body"
    return Member(code, kind, chair, clearance, mandate, active)


# One strategy per member, so that shrinking drops a member with everything it was drawn with.
MEMBER = st.builds(
    _member,
    code=st.sampled_from(STATE_CODES + BODY_CODES),
    chair=st.booleans(),
    clearance=st.sampled_from(CLASSIFICATIONS[::-1]),
    mandate=st.one_of(
        st.just(tuple(BRANCHES)),  # "States hold every topic by default"
        _distinct(st.sampled_from(TOPICS + tuple(BRANCHES)), 1, 3),
    ),
    active=st.sampled_from((True, True, True, True, False)),  # now and then a suspended member
)


@st.composite
def members(draw: st.DrawFn) -> tuple[Member, ...]:
    """3-7 members, states and bodies; the first is active (it submits) and, if need be, a chair."""
    drawn = draw(st.lists(MEMBER, min_size=3, max_size=7, unique_by=lambda m: m.code))
    first = drawn[0]
    chair = first.chair or not any(m.chair for m in drawn)
    return (replace(first, chair=chair, active=True), *drawn[1:])


LEVEL_SETS = ((FULL,), (TEARLINE,), (HIT,), (FULL, TEARLINE), (FULL, TEARLINE, HIT))


def country_rules(
    codes: tuple[str, ...], originators: tuple[str, ...]
) -> st.SearchStrategy[tuple[CountryRule, ...]]:
    """1-4 forbids, mostly in the files of members that submit, where they can bite."""
    who: st.SearchStrategy[WhoCondition] = st.one_of(
        st.just(Anyone()),
        st.builds(KindIs, st.sampled_from(("body", "state"))),
        st.builds(MemberIs, st.sampled_from(codes)),
        st.just(IsChair()),
        st.builds(ClearedBelow, st.sampled_from(CLASSIFICATIONS[1:])),
        st.builds(NotMandatedFor, st.sampled_from(TOPICS)),
    )
    which: st.SearchStrategy[WhichCondition] = st.one_of(
        st.just(AnyReport()),
        st.builds(OnTopic, st.sampled_from(TOPICS)),
        st.builds(ClassifiedAtLeast, st.sampled_from(CLASSIFICATIONS[1:])),
        st.builds(TlpIs, st.sampled_from(TLPS)),
        st.just(Orcon()),
    )
    rule = st.builds(
        CountryRule,
        country=st.one_of(st.sampled_from(originators), st.sampled_from(codes)),
        levels=st.sampled_from(LEVEL_SETS),
        who=who,
        which=which,
    )
    return st.lists(rule, min_size=1, max_size=4).map(tuple)


@st.composite
def pool_entities(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    """1-3 distinct entities of the pool, each in one of its spellings."""
    entries = draw(_distinct(st.sampled_from(range(len(ENTITY_POOL))), 1, 3))
    spellings = [
        draw(st.integers(min_value=0, max_value=len(ENTITY_POOL[entry][1]) - 1))
        for entry in entries
    ]
    return tuple(zip(entries, spellings, strict=True))


def reports(roster: tuple[Member, ...]) -> st.SearchStrategy[Report]:
    originators = [m.code for m in roster if m.active]
    audience = _distinct(st.sampled_from(tuple(m.code for m in roster) + GROUPS), 1, 3)
    return st.builds(
        Report,
        originator=st.sampled_from(originators),
        classification=st.sampled_from(CLASSIFICATIONS),
        topics=_distinct(st.sampled_from(TOPICS), 1, 3),
        releasable_to=audience,
        tearline_to=st.none() | audience,
        tearline_classification=st.none() | st.sampled_from(TEARLINE_CLASSIFICATIONS),
        summary=st.sampled_from(("text", "null", "omitted")),
        tlp=st.none() | st.sampled_from(TLPS),
        orcon=st.none() | st.booleans(),
        entities=pool_entities(),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    roster = draw(members())
    submitted = tuple(draw(st.lists(reports(roster), min_size=1, max_size=5)))
    codes = tuple(m.code for m in roster)
    originators = tuple(dict.fromkeys(r.originator for r in submitted))
    rules = draw(country_rules(codes, originators))
    # api.md: a member may ask for access to a report it has at hit or tearline.
    requestable = [
        (index, member.code)
        for index, report in enumerate(submitted)
        for member in roster
        if member.active and reference_level(member, report, rules) in (HIT, TEARLINE)
    ]
    grants = draw(_distinct(st.sampled_from(requestable), 0, 3)) if requestable else ()
    revocations = draw(
        _distinct(st.sampled_from(range(len(submitted))), 0, min(2, len(submitted) // 2))
    )
    return Scenario(
        members=roster,
        rules=rules,
        reports=submitted,
        page_limit=draw(st.integers(min_value=1, max_value=3)),
        grants=grants,
        revocations=revocations,
    )


# -- a world on the scenario's policy bundle -----------------------------------------------------


def write_bundle(policy_dir: Path, scenario: Scenario) -> None:
    """The shipped schema, base policy and taxonomy, with the scenario's roster and countries."""
    (policy_dir / "countries").mkdir(parents=True, exist_ok=True)
    (policy_dir / "tests").mkdir(exist_ok=True)
    for name in ("schema.cedarschema", "base.cedar", "taxonomy.yaml"):
        shutil.copy(SHIPPED / name, policy_dir / name)
    roster = {"members": [m.roster_entry() for m in scenario.members]}
    (policy_dir / "roster.yaml").write_text(yaml.safe_dump(roster), encoding="utf-8")
    for code, text in scenario.country_files().items():
        (policy_dir / "countries" / f"{code}.cedar").write_text(text, encoding="utf-8")


@contextmanager
def world_on(tmp_dir: Path, scenario: Scenario) -> Iterator[World]:
    policy_dir = tmp_dir / "policies"
    write_bundle(policy_dir, scenario)
    world = make_world(tmp_dir / "world", policy_dir=policy_dir)
    try:
        yield world
    finally:
        world.close()
        drop_database(world.settings.resolved_database_url)


# -- what the API shows --------------------------------------------------------------------------

CONTENT = frozenset({"title", "body", "entities"})
ORIGINATOR_ONLY = frozenset({"releasable_to", "tearline_to", "tearline_classification", "audience"})


def content_problems(
    item: dict[str, Any], level: str, index: int, report: Report, *, listed: bool, own: bool
) -> list[str]:
    """What a report shown at `level` reveals or withholds wrongly (api.md, "Reports")."""
    problems = []
    summary = f"Tearline of report {index}." if report.has_summary else None
    if item.get("summary") != summary:
        problems.append(f"summary {item.get('summary')!r}")
    if level == FULL:
        expected = {"title": f"Report {index}"}
        if not listed:
            expected["body"] = f"Body of report {index}."
        for name, value in expected.items():
            if item.get(name) != value:
                problems.append(f"{name} {item.get(name)!r} at full")
        if not listed and not item.get("entities"):
            problems.append("no entities at full")
    shown = CONTENT & item.keys()
    allowed = ({"title"} if listed else CONTENT) if level == FULL else set()
    if shown - allowed:
        problems.append(f"shows {sorted(shown - allowed)} at {level}")
    # a listing leaves the audience out, even for the originator
    if (not own and ORIGINATOR_ONLY & item.keys()) or (
        own and not listed and not item.keys() >= ORIGINATOR_ONLY
    ):
        problems.append(f"originator-only fields {sorted(ORIGINATOR_ONLY & item.keys())}")
    return problems


def submit_all(world: World, scenario: Scenario) -> tuple[list[str], list[str]]:
    """Submit every report as its originator: the new ids, and wrongly announced audiences."""
    ids: list[str] = []
    problems: list[str] = []
    for index, report in enumerate(scenario.reports):
        response = world.http.post(
            "/v1/reports", json=report.submission(index), headers=world.headers(report.originator)
        )
        assert response.status_code == 201, response.text
        created = response.json()
        ids.append(created["id"])
        # announced at creation: before any grant or revocation
        levels = {m.code: reference_level(m, report, scenario.rules) for m in scenario.members}
        want = {level: sorted(c for c, lvl in levels.items() if lvl == level) for level in READABLE}
        if created["access"] != FULL or created["audience"] != want:
            problems.append(
                f"report {index} by {report.originator}: announced {created['audience']} at "
                f"{created['access']}, want {want} at full"
            )
    return ids, problems


def audience_of(scenario: Scenario, index: int) -> dict[str, list[str]]:
    """The `audience` the originator is shown: who reads the report at full and at tearline."""
    levels = {m.code: scenario.level(m, index) for m in scenario.members}
    return {level: sorted(c for c, lvl in levels.items() if lvl == level) for level in READABLE}


def grant_and_revoke(world: World, scenario: Scenario, ids: list[str]) -> list[str]:
    """Each grant: the member asks, the originator approves; then each revocation, in order."""
    problems: list[str] = []
    for index, code in scenario.grants:
        report = scenario.reports[index]
        where = f"{code} asking for report {index} by {report.originator}"
        asked = world.http.post(
            f"/v1/reports/{ids[index]}/access-requests",
            json={"justification": f"{code} needs report {index}"},
            headers=world.headers(code),
        )
        if asked.status_code != 201:
            # the member was drawn at hit or tearline, where a request is allowed
            problems.append(f"{where}: {asked.status_code} {asked.text}, want 201")
            continue
        request = asked.json()
        if (request["report_id"], request["requester"], request["status"]) != (
            ids[index],
            code,
            "pending",
        ):
            problems.append(f"{where}: created {request}")
        decided = world.http.post(
            f"/v1/access-requests/{request['id']}/decision",
            json={"approve": True},
            headers=world.headers(report.originator),
        )
        if decided.status_code != 200 or decided.json()["status"] != "approved":
            problems.append(f"{where}: decision {decided.status_code} {decided.text}")
    for index in scenario.revocations:
        report = scenario.reports[index]
        revoked = world.http.post(
            f"/v1/reports/{ids[index]}/revoke",
            json={"reason": f"report {index} withdrawn"},
            headers=world.headers(report.originator),
        )
        if revoked.status_code != 200 or revoked.json()["status"] != "revoked":
            problems.append(f"revoking report {index}: {revoked.status_code} {revoked.text}")
    return problems


def explain_problems(world: World, scenario: Scenario, ids: list[str]) -> list[str]:
    """`POST /v1/policy/explain` by each originator: every member's level, hit and none included."""
    problems: list[str] = []
    for index, (report, report_id) in enumerate(zip(scenario.reports, ids, strict=True)):
        for member in scenario.members:
            response = world.http.post(
                "/v1/policy/explain",
                json={"member": member.code, "report_id": report_id},
                headers=world.headers(report.originator),
            )
            assert response.status_code == 200, response.text
            got = response.json()["level"]
            want = scenario.level(member, index)
            if got != want:
                problems.append(
                    f"{member.code} on report {index} by {report.originator}: explained {got} "
                    f"({', '.join(response.json()['reasons'])}), want {want}"
                )
    return problems


def read_problems(world: World, scenario: Scenario, member: Member, ids: list[str]) -> list[str]:
    """`GET /v1/reports/{id}` for every report: the reference level, or a 404 like no report's."""
    code = member.code
    missing = world.get(code, NO_SUCH_REPORT)
    assert missing.status_code == 404
    problems: list[str] = []
    for index, (report, report_id) in enumerate(zip(scenario.reports, ids, strict=True)):
        want = scenario.level(member, index)
        response = world.get(code, report_id)
        got = response.json().get("access") if response.status_code == 200 else None
        where = f"{code} on report {index} by {report.originator}"
        if want not in READABLE:
            # hit and none both look like absence (product.md, core idea 3)
            if (response.status_code, response.json()) != (404, missing.json()):
                problems.append(f"{where}: GET {response.status_code} {got}, want {want} (404)")
        elif got != want:
            problems.append(f"{where}: GET {response.status_code} {got}, want {want}")
        else:
            own = code == report.originator
            item = response.json()
            shown = content_problems(item, want, index, report, listed=False, own=own)
            shown += status_problems(item, scenario, index)
            if own and item.get("audience") != audience_of(scenario, index):
                shown.append(
                    f"audience {item.get('audience')}, want {audience_of(scenario, index)}"
                )
            problems += [f"{where}: {p}" for p in shown]
    return problems


def status_problems(item: dict[str, Any], scenario: Scenario, index: int) -> list[str]:
    """A readable report is active, or revoked if its originator reads it."""
    want = "revoked" if index in scenario.revocations else "active"
    return [] if item.get("status") == want else [f"status {item.get('status')!r}, want {want}"]


def list_problems(world: World, scenario: Scenario, member: Member, ids: list[str]) -> list[str]:
    """`GET /v1/reports`, page by page: exactly the readable reports, once each, newest first."""
    code = member.code
    want = {}
    for index, report_id in enumerate(ids):
        level = scenario.level(member, index)
        if level in READABLE:
            want[report_id] = level
    items, problems = listed(world, code, scenario.page_limit)
    listed_ids = [item["id"] for item in items]
    if len(listed_ids) != len(set(listed_ids)):
        problems.append(f"a report is listed twice: {listed_ids}")
    if len(listed_ids) != len(want):
        problems.append(f"{len(listed_ids)} reports listed, want {len(want)}")
    got = {item["id"]: item["access"] for item in items}
    if got != want:
        problems.append(f"lists {_by_index(got, ids)}, want {_by_index(want, ids)}")
    stamps = [datetime.fromisoformat(item["updated_at"]) for item in items]
    if stamps != sorted(stamps, reverse=True):
        problems.append("not newest first")
    for item in items:
        if item["id"] in ids:
            index = ids.index(item["id"])
            report = scenario.reports[index]
            own = code == report.originator
            shown = content_problems(item, item["access"], index, report, listed=True, own=own)
            shown += status_problems(item, scenario, index)
            problems += [f"report {index}: {p}" for p in shown]
    return [f"{code} listing: {p}" for p in problems]


def listed(world: World, code: str, limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every item of `GET /v1/reports` for `code`, page by page, and what was wrong with paging."""
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        page = world.http.get("/v1/reports", params=params, headers=world.headers(code))
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["items"])
        if len(body["items"]) > limit:
            problems.append(f"page of {len(body['items'])} items for limit {limit}")
        if not body["next_cursor"]:
            return items, problems
        if len(body["items"]) < limit:
            problems.append(f"short page ({len(body['items'])}/{limit}) with a next_cursor")
        params["cursor"] = body["next_cursor"]
    problems.append("listing did not end after 100 pages")
    return items, problems


def search_problems(world: World, scenario: Scenario, member: Member, ids: list[str]) -> list[str]:
    """`POST /v1/search` for the whole pool: one result per (report, entity type) it holds, at the
    reference level, hits included and `none` absent, newest reports first."""
    code = member.code
    response = world.http.post(
        "/v1/search",
        json={
            "entities": [{"type": kind, "value": spellings[0]} for kind, spellings in ENTITY_POOL],
            "purpose": "access model property test",
        },
        headers=world.headers(code),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    index_of = {report_id: index for index, report_id in enumerate(ids)}
    # Report ids replaced by their submission index, so a failure reads against the example;
    # an id not submitted here would be -1 and fail the comparison.
    got = [
        (index_of.get(r["report_id"], -1), r["originator"], r["entity_type"], r["access"])
        for r in results
    ]
    want = []
    for index, report in enumerate(scenario.reports):
        level = scenario.level(member, index)
        if level != NONE:
            want += [(index, report.originator, kind, level) for kind in report.entity_types]
    problems = []
    if sorted(got) != sorted(want):
        problems.append(f"finds {sorted(got)}, want {sorted(want)}")
    if len(got) != len(set(got)):
        problems.append(f"a result is repeated: {got}")
    recency = {index: position for position, index in enumerate(scenario.newest_first())}
    order = [recency.get(index, -1) for index, *_ in got]
    if order != sorted(order):
        problems.append(
            f"not newest first: reports {[index for index, *_ in got]}, "
            f"want the order {scenario.newest_first()}"
        )
    return [f"{code} search: {p}" for p in problems]


def _by_index(levels: dict[str, str], ids: list[str]) -> dict[str, str]:
    """Report ids replaced by their submission index, so a failure reads against the example."""
    named = {f"report {ids.index(i)}" if i in ids else i: level for i, level in levels.items()}
    return dict(sorted(named.items()))


settings.register_profile(
    "access-model",
    # Each example builds a database and starts the app (about 0.25 s on SQLite, 0.6 s on
    # PostgreSQL): enough examples to vary every marking, few enough for `make test`.
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No explain phase: it re-runs the failing example minutes long, and the failure message
    # already spells the shrunk example out (Scenario.describe).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    print_blob=True,
)
settings.register_profile(
    "access-model-deep", parent=settings.get_profile("access-model"), max_examples=300
)
PROFILE = settings.get_profile(os.environ.get("TEARLINE_ACCESS_MODEL_PROFILE", "access-model"))


class TestAccessModelThroughTheApi:
    @PROFILE
    @given(scenario=scenarios())
    def test_every_member_reads_lists_and_finds_exactly_its_reference_level(
        self, tmp_path_factory: pytest.TempPathFactory, scenario: Scenario
    ) -> None:
        with world_on(tmp_path_factory.mktemp("access-model"), scenario) as world:
            ids, problems = submit_all(world, scenario)
            problems += grant_and_revoke(world, scenario, ids)
            problems += explain_problems(world, scenario, ids)
            for member in scenario.members:
                if member.active:
                    problems += read_problems(world, scenario, member, ids)
                    problems += list_problems(world, scenario, member, ids)
                    problems += search_problems(world, scenario, member, ids)
                else:
                    # A suspended member has no level to observe: it cannot even get a token.
                    assert world.request_token(member.code).status_code == 401
            assert not problems, "\n".join([*problems, "", scenario.describe()])
