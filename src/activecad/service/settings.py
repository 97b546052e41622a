"""The settings of one annotation service: where its data lives and its limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Settings", "utcnow"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the service's default clock)."""
    return datetime.now(UTC)


@dataclass
class Settings:
    """What ``activecad serve`` was given.

    Attributes:
        db_url: the store's SQLAlchemy URL.
        data_dir: the LUNA16-style data folder (``ct/``) the scans are served from; nothing
            outside it is ever read.
        run_dir: the active-learning run folder (its ``run.json`` names the project), or
            None to serve the one project of the store that has a query.
        lease_minutes: how long a leased item stays with its reader.
        max_body_bytes: the largest request body accepted (413 above it).
        clock: returns the current UTC time; tests inject their own.
    """

    db_url: str
    data_dir: Path
    run_dir: Path | None = None
    lease_minutes: float = 30.0
    max_body_bytes: int = 64 * 1024
    clock: Callable[[], datetime] = field(default=utcnow)
