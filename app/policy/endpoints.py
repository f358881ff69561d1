"""The policy bundle in force, and explanations of its decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.deps import PolicyRead
from app.auth.service import Principal
from app.errors import Forbidden, Unprocessable, responses
from app.policy import Level, explain
from app.policy.bundle import PolicyBundle

router = APIRouter(prefix="/v1/policy", tags=["policy"])


class PolicyInfo(BaseModel):
    hash: str
    loaded_at: datetime
    files: list[str]


class ExplainIn(BaseModel):
    # Unknown fields are refused, and a number is not silently a member code.
    model_config = ConfigDict(extra="forbid", strict=True)

    member: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    # A report id is a UUID; any other text is answered like a missing report, not refused here.
    report_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Explanation(BaseModel):
    level: Level
    reasons: list[str]


@router.get("", response_model=PolicyInfo, responses=responses(401, 403, 429))
async def policy_info(caller: PolicyRead) -> PolicyInfo:
    """The hash, load time and files of the policy bundle in force."""
    await caller.run(lambda _session, _principal: None)
    bundle = caller.state.policy.bundle
    return PolicyInfo(hash=bundle.hash, loaded_at=bundle.loaded_at, files=list(bundle.files))


@router.post(
    "/explain", response_model=Explanation, responses=responses(401, 403, 404, 413, 422, 429)
)
async def explain_decision(payload: ExplainIn, caller: PolicyRead) -> Explanation:
    """A member's level to a stored report under the bundle in force, and the ids of the policies
    that decided it. For the chairs and the report's originator; another member gets 404 for a
    report it cannot read, as for one that does not exist, and 403 for one it can."""
    state = caller.state

    def work(session: Session, principal: Principal) -> Explanation:
        decision = explain.explain_for(
            session, state.policy, principal, payload.member, payload.report_id
        )
        return Explanation(level=decision.level, reasons=list(decision.policy_ids))

    return await caller.run(work)


class ReloadResult(BaseModel):
    accepted: bool
    changed: bool
    previous_hash: str
    hash: str


def _chairs_only(session: Session, principal: Principal, bundle: PolicyBundle) -> Principal:
    member = bundle.members.get(principal.member)
    if member is None or not member.is_chair:
        audit.record_refusal(
            session,
            principal.actor,
            audit.Entry(action="policy.reload", decision="deny", reasons=("not_chair",)),
        )
        raise Forbidden("Only the chairs may reload the policy.")
    return principal


@router.post("/reload", response_model=ReloadResult, responses=responses(401, 403, 422, 429))
async def reload_policy(caller: PolicyRead) -> ReloadResult:
    """Load the bundle on disk again (chairs only): in force at once if it passes its own cases.

    A bundle that fails validation or one of its decision cases is refused (422, with the
    problems) and the bundle in force stays. Stored decisions are made again in the background;
    until a report's are, it is hidden rather than served under the old bundle.
    """
    state = caller.state
    principal = await caller.run(lambda session, p: _chairs_only(session, p, state.policy.bundle))
    outcome = await state.reloader.reload(principal.actor)
    if not outcome.accepted:
        raise Unprocessable(
            "The policy bundle on disk was refused; the bundle in force is unchanged.",
            [{"loc": ["policy"], "msg": p, "type": "policy"} for p in outcome.problems],
        )
    return ReloadResult(
        accepted=True,
        changed=outcome.changed,
        previous_hash=outcome.previous_hash,
        hash=outcome.hash or outcome.previous_hash,
    )
