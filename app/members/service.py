"""The roster mirrored into the database, and clients with their registered keys."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.scopes import ALL_SCOPES, scopes_for_member
from app.db import utcnow
from app.kit import jwt
from app.members.models import Client, ClientKey, Member
from app.policy.bundle import PolicyBundle


class ClientError(ValueError):
    """A client cannot be registered or changed as asked; the message says why."""


def sync_roster(session: Session, bundle: PolicyBundle) -> None:
    """Make the members table match the roster: add new members, update names and status."""
    existing = {m.code: m for m in session.scalars(select(Member))}
    for code, member in bundle.members.items():
        row = existing.get(code)
        if row is None:
            session.add(Member(code=code, name=member.name, kind=member.kind, active=member.active))
            continue
        # A removed member stays removed, whatever the roster says (its keys are gone).
        active = member.active and row.removed_at is None
        if (row.name, row.kind, row.active) != (member.name, member.kind, active):
            row.name, row.kind, row.active, row.updated_at = (
                member.name,
                member.kind,
                active,
                utcnow(),
            )
    # A member dropped from the roster file is suspended, never deleted: its reports and
    # audit history stay attributable.
    for code, row in existing.items():
        if code not in bundle.members and row.active:
            row.active, row.updated_at = False, utcnow()


@dataclass(frozen=True)
class ClientInfo:
    id: str
    member: str
    scopes: list[str]
    status: str
    kids: list[str]


def public_key_alg(pem: str) -> jwt.Algorithm:
    """ES256 for an EC P-256 public key, RS256 for RSA of 2048 bits or more; else refuse."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ClientError("not a PEM public key") from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return "RS256"
    raise ClientError("only EC P-256 or RSA (2048 bits or more) public keys are accepted")


def add_client(
    session: Session,
    bundle: PolicyBundle,
    *,
    client_id: str,
    public_pem: str,
    kid: str,
    scopes: list[str] | None,
) -> ClientInfo:
    """Register a client `<MEMBER>.<name>` with its public key and scopes."""
    member_code, _, name = client_id.partition(".")
    member = bundle.members.get(member_code)
    if member is None or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ClientError(f"client id must be <MEMBER>.<name> with a roster member: {client_id!r}")
    allowed = scopes_for_member(member.is_chair)
    wanted = list(scopes) if scopes else list(allowed)
    unknown = [s for s in wanted if s not in ALL_SCOPES]
    if unknown:
        raise ClientError(f"unknown scopes: {', '.join(unknown)}")
    refused = [s for s in wanted if s not in allowed]
    if refused:
        raise ClientError(f"member {member_code} may not hold: {', '.join(refused)}")
    if session.get(Client, client_id) is not None:
        raise ClientError(f"client {client_id} already exists")
    if session.get(ClientKey, kid) is not None:
        raise ClientError(f"key id {kid} is already registered")
    alg = public_key_alg(public_pem)
    jwt.VerificationKey.from_pem(kid, alg, public_pem)  # the same check the token endpoint makes
    session.add(Client(id=client_id, member_code=member_code, scopes=wanted))
    session.add(ClientKey(kid=kid, client_id=client_id, alg=alg, public_pem=public_pem))
    audit.record(
        session,
        audit.OPERATOR,
        audit.Entry(
            action="client.add",
            decision="allow",
            target=f"client:{client_id}",
            reasons=(f"kid:{kid}", *(f"scope:{s}" for s in wanted)),
        ),
    )
    return ClientInfo(client_id, member_code, wanted, "active", [kid])


def list_clients(session: Session) -> list[ClientInfo]:
    """Every client with its active key ids."""
    kids: dict[str, list[str]] = {}
    for key in session.scalars(select(ClientKey).where(ClientKey.revoked_at.is_(None))):
        kids.setdefault(key.client_id, []).append(key.kid)
    return [
        ClientInfo(c.id, c.member_code, list(c.scopes), c.status, sorted(kids.get(c.id, [])))
        for c in session.scalars(select(Client).order_by(Client.id))
    ]


def revoke_client(session: Session, client_id: str) -> None:
    """Revoke a client and its keys; its unexpired tokens stop working at once."""
    client = session.get(Client, client_id)
    if client is None:
        raise ClientError(f"no client {client_id}")
    now = utcnow()
    client.status, client.revoked_at = "revoked", now
    for key in session.scalars(select(ClientKey).where(ClientKey.client_id == client_id)):
        key.revoked_at = key.revoked_at or now
    audit.record(
        session,
        audit.OPERATOR,
        audit.Entry(action="client.revoke", decision="allow", target=f"client:{client_id}"),
    )


def clients_of(session: Session, member: str) -> list[str]:
    """The active client ids of a member."""
    return list(
        session.scalars(
            select(Client.id)
            .where(Client.member_code == member, Client.status == "active")
            .order_by(Client.id)
        )
    )
