"""The audit trail: one append-only row per change (who, when, what, before and after)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from activecad.store.models import AuditEvent

__all__ = ["events", "record"]


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None,
    at: datetime,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add one audit event to the session's transaction (it commits with the change)."""
    session.add(
        AuditEvent(
            at=at,
            actor=actor,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=before,
            after=after,
        )
    )


def events(session: Session, entity: str, entity_id: int) -> list[dict[str, Any]]:
    """The trail of one entity, oldest first."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.entity == entity, AuditEvent.entity_id == entity_id)
        .order_by(AuditEvent.id)
    )
    return [
        {
            "id": e.id,
            "at": e.at.isoformat() if e.at.tzinfo else e.at.isoformat() + "+00:00",
            "actor": e.actor,
            "action": e.action,
            "before": e.before,
            "after": e.after,
        }
        for e in rows
    ]
