"""Building an application's state from settings, and preparing its database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from app.audit.writer import AuditWriter
from app.auth.limits import RouteLimits
from app.config import PROJECT_ROOT, ConfigError, Settings
from app.db import Database, make_engine, transaction
from app.keys.provider import EnvKeyProvider, KeyProvider, KeyringError, LocalKeyring
from app.keys.service import Envelope
from app.keys.signing import ServiceKeys
from app.kit.ratelimit import RateLimiter
from app.members import service as members_service
from app.policy.reload import Redecider, Reloader
from app.policy.service import PolicyState
from app.reports import service as reports_service
from app.search.index import BlindIndex
from app.state import AppState


def alembic_config(url: str | None = None) -> Config:
    """The project's Alembic configuration, optionally pointed at `url`."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["configure_logging"] = False
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Apply every migration to the database at `url`: the only way the schema is made."""
    command.upgrade(alembic_config(url), "head")


def load_key_provider(settings: Settings, *, create: bool = False) -> KeyProvider:
    """The configured key provider; refuses development keys outside development."""
    provider: KeyProvider
    if settings.key_provider == "env":
        try:
            provider = EnvKeyProvider()
        except KeyringError as exc:
            raise ConfigError(str(exc)) from exc
    else:
        strict = not settings.is_development
        try:
            if create and settings.is_development:
                provider = LocalKeyring.create(
                    settings.data_dir, development=True, require_strict_permissions=strict
                )
            else:
                provider = LocalKeyring.load(settings.data_dir, require_strict_permissions=strict)
        except KeyringError as exc:
            raise ConfigError(str(exc)) from exc
    if provider.is_development and not settings.is_development:
        raise ConfigError(
            "the keyring holds development keys; production needs keys made for production"
        )
    return provider


def build_state(settings: Settings, *, engine: Engine | None = None) -> AppState:
    """Everything a running instance holds: policy, keys, database engine."""
    policy = PolicyState.load(Path(settings.policy_dir))
    provider = load_key_provider(settings, create=True)
    try:
        service_keys = ServiceKeys(provider)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    db = Database(engine or make_engine(settings.resolved_database_url))
    envelope = Envelope(provider)
    redecider = Redecider(db, policy)
    return AppState(
        settings=settings,
        db=db,
        audit_log=AuditWriter(db),
        keys=provider,
        envelope=envelope,
        blind_index=BlindIndex(provider.index_key()),
        policy=policy,
        redecider=redecider,
        reloader=Reloader(Path(settings.policy_dir), policy, db, envelope, redecider),
        search_limiter=RateLimiter(settings.search_rate_per_minute),
        route_limits=RouteLimits.from_settings(settings),
        service_keys=service_keys,
    )


def prepare_database(state: AppState) -> None:
    """Mirror the roster, give every member its key, and re-decide what an older bundle decided."""
    with transaction(state.sessionmaker) as session:
        members_service.sync_roster(session, state.policy.bundle)
        session.flush()  # members must exist before their keys reference them
        for code in state.policy.bundle.members:
            state.envelope.ensure_member_key(session, code)
    # In batches, one transaction each: a large database after a bundle change must not be
    # re-decided in one huge transaction.
    with transaction(state.sessionmaker) as session:
        stale = reports_service.any_stale(session, state.policy)
    after: str | None = None
    while stale:
        with transaction(state.sessionmaker) as session:
            decided = reports_service.redecide_batch(session, state.policy, after)
        stale = bool(decided)
        after = decided[-1] if decided else None
