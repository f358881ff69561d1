"""The policy bundle in force."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.auth.deps import PolicyRead
from app.errors import responses

router = APIRouter(prefix="/v1/policy", tags=["policy"])


class PolicyInfo(BaseModel):
    hash: str
    loaded_at: datetime
    files: list[str]


@router.get("", response_model=PolicyInfo, responses=responses(401, 403, 429))
async def policy_info(caller: PolicyRead) -> PolicyInfo:
    """The hash, load time and files of the policy bundle in force."""
    await caller.run(lambda _session, _principal: None)
    bundle = caller.state.policy.bundle
    return PolicyInfo(hash=bundle.hash, loaded_at=bundle.loaded_at, files=list(bundle.files))
