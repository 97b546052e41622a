"""The work queue: leases on the items of the current query, and their submission.

``POST /api/queue/next`` leases the best-ranked item of the latest cycle's query that has
no answer and no active lease, for ``lease_minutes``. The database, not this code, keeps two
readers off one item: an active lease is unique per (item, reader) and per user (partial
unique indexes), so of two racing requests one insert fails and is retried with the next
item. An active lease past its expiry is marked expired (row by row, in id order) by the
next queue request, which returns the item to the queue. Submitting a lease records an
:class:`~activecad.store.Annotation` exactly as ``activecad al label`` does (source
``human``, the user's name as annotator, the query's cycle, ``n_findings`` 0 for "no
nodule"), so the loop continues with ``activecad al run --resume``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from activecad.service import audit
from activecad.service.auth import Principal, require
from activecad.store import Store
from activecad.store.models import Annotation, Cycle, Finding, Item, Lease, Query, Scan, User

__all__ = ["aware", "current_cycle", "expire_leases", "router", "transaction"]

logger = logging.getLogger("activecad.service")
_T = TypeVar("_T")


def aware(value: datetime) -> datetime:
    """A stored time as timezone-aware UTC (SQLite gives it back naive, in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ConflictError(Exception):
    """A concurrent writer changed what a transaction read; it is rolled back and retried."""


def transaction(store: Store, work: Callable[[Session], _T], *, attempts: int = 20) -> _T:
    """Run ``work`` in one transaction, again when a concurrent writer made it fail.

    A unique index refusing a second active lease, a PostgreSQL deadlock or serialization
    failure, SQLite's "database is locked", or a :class:`ConflictError` found by ``work`` roll the
    transaction back; it is then retried from the start (reading the new state) after a short
    random pause. An HTTPException raised by ``work`` rolls back and is passed on; after
    ``attempts`` failures the caller gets 503.
    """
    for attempt in range(attempts):
        try:
            with store.session() as session:
                return work(session)
        except (IntegrityError, OperationalError, ConflictError) as exc:
            if attempt == attempts - 1:
                logger.warning("gave up after %d attempts: %s", attempts, type(exc).__name__)
                raise HTTPException(503, "the database is busy; retry") from exc
            time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))
    raise AssertionError("unreachable")


def current_cycle(session: Session, project_id: int) -> Cycle | None:
    """The latest cycle of the project (its query is the current one); None before any."""
    number = session.scalar(select(func.max(Cycle.number)).where(Cycle.project_id == project_id))
    if number is None:
        return None
    return session.scalars(
        select(Cycle).where(Cycle.project_id == project_id, Cycle.number == number)
    ).one()


def expire_leases(session: Session, now: datetime) -> int:
    """Mark active leases past their expiry as expired; return how many."""
    ids = session.scalars(
        select(Lease.id).where(Lease.state == "active", Lease.expires_at <= now).order_by(Lease.id)
    ).all()
    done = 0
    for lease_id in ids:
        result = session.execute(
            update(Lease)
            .where(Lease.id == lease_id, Lease.state == "active")
            .values(state="expired", closed_at=now)
        )
        done += result.rowcount  # type: ignore[attr-defined]
    return done


def lease_json(session: Session, lease: Lease) -> dict[str, Any]:
    """The lease as the API shows it."""
    item = session.get(Item, lease.item_id)
    assert item is not None
    seriesuid = session.scalar(select(Scan.seriesuid).where(Scan.id == item.scan_id))
    query = None
    if lease.cycle_id is not None:
        query = session.scalar(
            select(Query).where(Query.cycle_id == lease.cycle_id, Query.item_id == item.id)
        )
    return {
        "lease_id": lease.id,
        "item_key": item.key,
        "seriesuid": seriesuid,
        "rank": None if query is None else query.rank,
        "score": None if query is None else query.score,
        "reader": lease.reader,
        "expires_at": aware(lease.expires_at).isoformat(),
    }


def held_lease(session: Session, lease_id: int, user: Principal, now: datetime) -> Lease:
    """The caller's active, unexpired lease ``lease_id``, locked for this transaction.

    Raises:
        HTTPException: 404 no such lease; 409 another user's, or answered, released or
            expired.
    """
    lease = session.get(Lease, lease_id, with_for_update=True)
    if lease is None:
        raise HTTPException(404, f"no lease {lease_id}")
    if lease.user_id != user.id:
        raise HTTPException(409, f"lease {lease_id} is held by someone else")
    if lease.state != "active":
        raise HTTPException(409, f"lease {lease_id} is {lease.state}; ask the queue for the next")
    if aware(lease.expires_at) <= now:
        raise HTTPException(409, f"lease {lease_id} expired; ask the queue for the next")
    return lease


router = APIRouter(prefix="/api", tags=["queue"])
_annotator = require("annotator")
_reviewer = require("reviewer")


def _service(request: Request) -> Any:
    return request.app.state.service


@router.get("/queue")
def queue_state(request: Request, user: Principal = Depends(_annotator)) -> dict[str, Any]:
    svc = _service(request)
    now = svc.settings.clock()

    def work(session: Session) -> dict[str, Any]:
        cycle = current_cycle(session, svc.project_id)
        mine = session.scalars(
            select(Lease).where(
                Lease.user_id == user.id, Lease.state == "active", Lease.expires_at > now
            )
        ).all()
        state: dict[str, Any] = {
            "project": svc.project,
            "cycle": None,
            "total": 0,
            "answered": 0,
            "leased": 0,
            "mine": [lease_json(session, lease) for lease in mine],
        }
        if cycle is None:
            return state
        items = select(Query.item_id).where(Query.cycle_id == cycle.id)
        state["cycle"] = cycle.number
        state["total"] = session.scalar(select(func.count()).select_from(items.subquery()))
        state["answered"] = session.scalar(
            select(func.count(func.distinct(Annotation.item_id))).where(
                Annotation.item_id.in_(items)
            )
        )
        state["leased"] = session.scalar(
            select(func.count()).where(
                Lease.item_id.in_(items),
                Lease.reader == 1,
                Lease.state == "active",
                Lease.expires_at > now,
            )
        )
        return state

    return transaction(svc.store, work)


@router.post("/queue/next", response_model=None)
def queue_next(
    request: Request, user: Principal = Depends(_annotator)
) -> dict[str, Any] | Response:
    svc = _service(request)

    def work(session: Session) -> dict[str, Any] | None:
        now = svc.settings.clock()
        expire_leases(session, now)
        mine = session.scalar(
            select(Lease).where(Lease.user_id == user.id, Lease.state == "active")
        )
        if mine is not None:
            return lease_json(session, mine)
        cycle = current_cycle(session, svc.project_id)
        if cycle is None:
            return None
        answered = select(Annotation.item_id)
        held = select(Lease.item_id).where(Lease.state == "active", Lease.reader == 1)
        # PostgreSQL: lock the chosen query row and skip rows other requests hold, so
        # concurrent readers pick different items instead of colliding on the first.
        item_id = session.scalar(
            select(Query.item_id)
            .where(
                Query.cycle_id == cycle.id,
                Query.item_id.not_in(answered),
                Query.item_id.not_in(held),
            )
            .order_by(Query.rank)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if item_id is None:
            return None
        lease = Lease(
            item_id=item_id,
            user_id=user.id,
            cycle_id=cycle.id,
            reader=1,
            state="active",
            leased_at=now,
            expires_at=now + timedelta(minutes=svc.settings.lease_minutes),
        )
        session.add(lease)
        session.flush()  # the partial unique indexes speak here
        # The insert can succeed on an item whose lease was answered after the SELECT above
        # read its (then older) snapshot: PostgreSQL's READ COMMITTED gives each statement
        # its own. A new statement sees that answer; then start again.
        if session.scalar(select(Annotation.id).where(Annotation.item_id == item_id).limit(1)):
            raise ConflictError(f"item {item_id} was answered meanwhile")
        shown = lease_json(session, lease)
        audit.record(
            session,
            actor=user.name,
            action="lease",
            entity="lease",
            entity_id=lease.id,
            at=now,
            after=shown,
        )
        return shown

    found = transaction(svc.store, work)
    if found is None:
        return Response(status_code=204)
    return found


class SubmitIn(BaseModel):
    """The answer to a leased item: its findings (made before), or a labelled negative."""

    model_config = ConfigDict(extra="forbid")
    no_nodule: bool


@router.post("/leases/{lease_id}/submit")
def submit(
    lease_id: int, body: SubmitIn, request: Request, user: Principal = Depends(_annotator)
) -> dict[str, Any]:
    svc = _service(request)

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        lease = held_lease(session, lease_id, user, now)
        findings = session.scalars(
            select(Finding)
            .where(Finding.lease_id == lease.id, Finding.status != "deleted")
            .order_by(Finding.id)
        ).all()
        if body.no_nodule and findings:
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body", "no_nodule"],
                        "type": "value_error",
                        "msg": f"no_nodule is true but the item has {len(findings)} findings; "
                        "delete them or submit no_nodule false",
                    }
                ],
            )
        if not body.no_nodule and not findings:
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body", "no_nodule"],
                        "type": "value_error",
                        "msg": "the item has no finding; add one or submit no_nodule true",
                    }
                ],
            )
        if session.scalar(
            select(Annotation.id).where(
                Annotation.item_id == lease.item_id, Annotation.annotator == user.name
            )
        ):
            raise HTTPException(409, "you have already answered this item")
        claimed = session.execute(
            update(Lease)
            .where(Lease.id == lease.id, Lease.state == "active")
            .values(state="answered", closed_at=now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise HTTPException(409, f"lease {lease_id} was lost")
        minutes = (now - aware(lease.leased_at)).total_seconds() / 60.0
        annotation = Annotation(
            item_id=lease.item_id,
            cycle_id=lease.cycle_id,
            annotator=user.name,
            source="human",
            n_findings=len(findings),
            minutes=max(minutes, 0.0),
            created_at=now,
        )
        session.add(annotation)
        session.flush()
        for finding in findings:
            finding.annotation_id = annotation.id
        after = {
            "annotation_id": annotation.id,
            "item_id": lease.item_id,
            "no_nodule": body.no_nodule,
            "findings": [f.id for f in findings],
        }
        audit.record(
            session,
            actor=user.name,
            action="submit",
            entity="lease",
            entity_id=lease.id,
            at=now,
            before={"state": "active"},
            after=after,
        )
        cycle = session.get(Cycle, lease.cycle_id) if lease.cycle_id is not None else None
        left = 0
        if cycle is not None:
            left = (
                session.scalar(
                    select(func.count()).where(
                        Query.cycle_id == cycle.id,
                        Query.item_id.not_in(select(Annotation.item_id)),
                    )
                )
                or 0
            )
        return {
            "lease_id": lease.id,
            "annotation_id": annotation.id,
            "n_findings": len(findings),
            "query_answered": cycle is not None and left == 0,
        }

    result = transaction(svc.store, work)
    if result["query_answered"]:
        logger.info(
            "the current query is answered; continue the loop with 'activecad al run --resume'"
        )
    return result


@router.post("/leases/{lease_id}/release")
def release(lease_id: int, request: Request, user: Principal = Depends(_annotator)) -> dict:
    svc = _service(request)

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        lease = held_lease(session, lease_id, user, now)
        lease.state = "released"
        lease.closed_at = now
        audit.record(
            session,
            actor=user.name,
            action="release",
            entity="lease",
            entity_id=lease.id,
            at=now,
            before={"state": "active"},
            after={"state": "released"},
        )
        return {"lease_id": lease.id, "state": "released"}

    return transaction(svc.store, work)


class AssignIn(BaseModel):
    """A reviewer's request for one more reader of an item (multi-reader, as LIDC did)."""

    model_config = ConfigDict(extra="forbid")
    item_key: str
    user: str


@router.post("/leases/assign", status_code=201)
def assign(body: AssignIn, request: Request, user: Principal = Depends(_reviewer)) -> dict:
    svc = _service(request)

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        expire_leases(session, now)
        item = session.scalar(
            select(Item).where(Item.project_id == svc.project_id, Item.key == body.item_key)
        )
        if item is None:
            raise HTTPException(404, f"no item {body.item_key!r} in project {svc.project!r}")
        reader = session.scalar(select(User).where(User.name == body.user))
        if reader is None:
            raise HTTPException(404, f"no user {body.user!r}")
        if session.scalar(
            select(Annotation.id).where(
                Annotation.item_id == item.id, Annotation.annotator == reader.name
            )
        ):
            raise HTTPException(409, f"{reader.name} has already answered {item.key!r}")
        if session.scalar(
            select(Lease.id).where(Lease.user_id == reader.id, Lease.state == "active")
        ):
            raise HTTPException(409, f"{reader.name} holds a lease; wait until it is answered")
        used = session.scalar(select(func.max(Lease.reader)).where(Lease.item_id == item.id)) or 0
        answers = session.scalar(select(func.count()).where(Annotation.item_id == item.id)) or 0
        cycle = current_cycle(session, svc.project_id)
        lease = Lease(
            item_id=item.id,
            user_id=reader.id,
            cycle_id=None if cycle is None else cycle.id,
            reader=max(used, answers, 1) + 1,
            state="active",
            leased_at=now,
            expires_at=now + timedelta(minutes=svc.settings.lease_minutes),
        )
        session.add(lease)
        session.flush()
        shown = lease_json(session, lease)
        audit.record(
            session,
            actor=user.name,
            action="assign",
            entity="lease",
            entity_id=lease.id,
            at=now,
            after={**shown, "user": reader.name},
        )
        return shown

    return transaction(svc.store, work)
