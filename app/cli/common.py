"""What every command needs: settings, state and a clean exit on configuration errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.config import ConfigError, Settings, get_settings
from app.db import make_engine, make_sessionmaker, transaction
from app.policy.bundle import PolicyError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` to stderr and return the exit to raise."""
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    """The settings, or a readable refusal."""
    try:
        return get_settings()
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise fail(f"configuration refused: {reasons}") from None


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A committed unit of work against the configured database."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def refusals() -> Iterator[None]:
    """Turn configuration and policy errors into a message and exit code 1."""
    try:
        yield
    except (ConfigError, PolicyError) as exc:
        raise fail(f"refused: {exc}") from None
