"""The roster as members see it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.auth.deps import AnyCaller
from app.errors import responses
from app.members import service

router = APIRouter(prefix="/v1/members", tags=["members"])


class MemberOut(BaseModel):
    code: str
    name: str
    kind: str
    roles: list[str]
    active: bool


class MemberSelf(MemberOut):
    clearance: str
    mandate: list[str]
    clients: list[str]


@router.get("", response_model=list[MemberOut], responses=responses(401, 429))
async def list_members(caller: AnyCaller) -> list[MemberOut]:
    """Every member of the coalition."""
    await caller.run(lambda _session, _principal: None)
    state = caller.state
    return [
        MemberOut(code=m.code, name=m.name, kind=m.kind, roles=sorted(m.roles), active=m.active)
        for m in sorted(state.policy.bundle.members.values(), key=lambda m: m.code)
    ]


@router.get("/me", response_model=MemberSelf, responses=responses(401, 429))
async def me(caller: AnyCaller) -> MemberSelf:
    """The caller's own member record, with its clearance, mandate and clients."""
    principal, clients = await caller.run(
        lambda session, principal: (principal, service.clients_of(session, principal.member))
    )
    m = caller.state.policy.bundle.members[principal.member]
    return MemberSelf(
        code=m.code,
        name=m.name,
        kind=m.kind,
        roles=sorted(m.roles),
        active=m.active,
        clearance=m.clearance.name,
        mandate=sorted(m.mandate),
        clients=clients,
    )
