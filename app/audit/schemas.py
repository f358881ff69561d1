"""Bodies of the chairs' audit API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EntryOut(BaseModel):
    index: int = Field(description="Leaf index in the Merkle tree (0-based, in commit order).")
    time: str = Field(description="UTC, microseconds, always in this exact form (hashed as is).")
    actor: str | None
    client: str | None
    action: str
    target: str | None
    decision: str
    reasons: list[str]
    policy_hash: str | None
    purpose: str | None
    request_id: str | None
    leaf_hash: str = Field(description="base64 SHA-256(0x00 || the entry's canonical bytes)")


class EntryPage(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None


class CheckpointOut(BaseModel):
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str = Field(description="Compact JWS (ES256) over {tree_size, root_hash, timestamp}")


class CheckpointPage(BaseModel):
    items: list[CheckpointOut]
    next_cursor: str | None


class InclusionProof(BaseModel):
    index: int
    tree_size: int
    leaf_hash: str
    path: list[str]


class ConsistencyProof(BaseModel):
    first: int
    second: int
    path: list[str]
