"""Findings: add, move, resize, rate, delete, review; every change in the audit trail.

A finding is made under the caller's active lease (world mm x, y, z inside the leased scan,
diameter mm, optional malignancy 1-5) with status ``proposed``; it joins the item's
annotation when the lease is submitted. Its author may change or delete it while the lease
is held; a reviewer may do so at any time and accepts or rejects submitted findings.
Nothing is overwritten without a trace: each change adds an audit event with the finding
before and after, and a deleted finding keeps its row with status ``deleted``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from activecad.service import audit
from activecad.service.auth import Principal, require
from activecad.service.queue import aware, held_lease, transaction
from activecad.store.models import Annotation, Finding, Item, Lease, Scan

__all__ = ["finding_json", "router"]

router = APIRouter(prefix="/api/findings", tags=["findings"])
_annotator = require("annotator")
_reviewer = require("reviewer")
_AXES = ("x", "y", "z")
#: The largest diameter accepted, mm (LIDC's largest nodules are about 30 mm; masses more).
MAX_DIAMETER_MM = 200.0


class FindingIn(BaseModel):
    """A new finding: world mm (x, y, z), diameter mm, optional malignancy 1-5."""

    model_config = ConfigDict(extra="forbid")
    lease_id: int
    x: float = Field(allow_inf_nan=False)
    y: float = Field(allow_inf_nan=False)
    z: float = Field(allow_inf_nan=False)
    diameter_mm: float = Field(gt=0, le=MAX_DIAMETER_MM, allow_inf_nan=False)
    malignancy: int | None = Field(default=None, ge=1, le=5)


class FindingPatch(BaseModel):
    """A move, resize or new rating; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")
    x: float | None = Field(default=None, allow_inf_nan=False)
    y: float | None = Field(default=None, allow_inf_nan=False)
    z: float | None = Field(default=None, allow_inf_nan=False)
    diameter_mm: float | None = Field(default=None, gt=0, le=MAX_DIAMETER_MM, allow_inf_nan=False)
    malignancy: int | None = Field(default=None, ge=1, le=5)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["accept", "reject"]


def finding_json(finding: Finding, seriesuid: str) -> dict[str, Any]:
    """The finding as the API shows it (world mm)."""
    return {
        "id": finding.id,
        "seriesuid": seriesuid,
        "x": finding.coord_x,
        "y": finding.coord_y,
        "z": finding.coord_z,
        "diameter_mm": finding.diameter_mm,
        "malignancy": finding.malignancy,
        "status": finding.status,
        "author": finding.author,
        "lease_id": finding.lease_id,
        "annotation_id": finding.annotation_id,
        "created_at": None if finding.created_at is None else aware(finding.created_at).isoformat(),
        "updated_at": None if finding.updated_at is None else aware(finding.updated_at).isoformat(),
    }


def _state(finding: Finding) -> dict[str, Any]:
    return {
        "x": finding.coord_x,
        "y": finding.coord_y,
        "z": finding.coord_z,
        "diameter_mm": finding.diameter_mm,
        "malignancy": finding.malignancy,
        "status": finding.status,
        "annotation_id": finding.annotation_id,
    }


def _check_inside(request: Request, seriesuid: str, xyz: tuple[float, float, float]) -> None:
    geometry = request.app.state.service.scans.geometry(seriesuid)
    axis = geometry.outside_axis(np.asarray(xyz, dtype=float))
    if axis is not None:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", _AXES[axis]],
                    "type": "value_error",
                    "msg": f"the point (x, y, z) = {tuple(round(v, 2) for v in xyz)} mm is "
                    f"outside scan {seriesuid}",
                }
            ],
        )


def _seriesuid(session: Session, scan_id: int) -> str:
    found = session.scalar(select(Scan.seriesuid).where(Scan.id == scan_id))
    assert found is not None
    return found


def _editable(session: Session, finding_id: int, user: Principal, now: Any) -> Finding:
    """The finding, locked, if the caller may change it now (404 / 403 / 409 otherwise)."""
    finding = session.get(Finding, finding_id, with_for_update=True)
    if finding is None or finding.status is None or finding.status == "deleted":
        raise HTTPException(404, f"no finding {finding_id}")
    if user.has("reviewer"):
        return finding
    if finding.author != user.name:
        raise HTTPException(
            403, f"finding {finding_id} is {finding.author}'s; a reviewer may change it"
        )
    if finding.lease_id is None or finding.annotation_id is not None:
        raise HTTPException(409, f"finding {finding_id} is submitted; a reviewer may change it")
    held_lease(session, finding.lease_id, user, now)
    return finding


@router.get("")
def list_findings(
    request: Request,
    seriesuid: str = Query(..., min_length=1, max_length=200),
    user: Principal = Depends(_annotator),
) -> list[dict[str, Any]]:
    """The current findings of a scan: submitted ones, ground truth, and those made under a
    lease that is still active (not deleted ones)."""
    svc = request.app.state.service
    svc.scans.path(seriesuid)  # 404 for a scan the data folder does not have

    def work(session: Session) -> list[dict[str, Any]]:
        now = svc.settings.clock()
        active = select(Lease.id).where(Lease.state == "active", Lease.expires_at > now)
        rows = session.scalars(
            select(Finding)
            .join(Scan, Finding.scan_id == Scan.id)
            .where(
                Scan.project_id == svc.project_id,
                Scan.seriesuid == seriesuid,
                or_(Finding.status.is_(None), Finding.status != "deleted"),
                or_(
                    Finding.lease_id.is_(None),
                    Finding.annotation_id.is_not(None),
                    Finding.lease_id.in_(active),
                ),
            )
            .order_by(Finding.id)
        ).all()
        return [finding_json(f, seriesuid) for f in rows]

    return transaction(svc.store, work)


@router.post("", status_code=201)
def add_finding(
    body: FindingIn, request: Request, user: Principal = Depends(_annotator)
) -> dict[str, Any]:
    svc = request.app.state.service

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        lease = held_lease(session, body.lease_id, user, now)
        item = session.get(Item, lease.item_id)
        assert item is not None
        seriesuid = _seriesuid(session, item.scan_id)
        _check_inside(request, seriesuid, (body.x, body.y, body.z))
        finding = Finding(
            scan_id=item.scan_id,
            coord_x=body.x,
            coord_y=body.y,
            coord_z=body.z,
            diameter_mm=body.diameter_mm,
            malignancy=body.malignancy,
            status="proposed",
            author=user.name,
            lease_id=lease.id,
            created_at=now,
            updated_at=now,
        )
        session.add(finding)
        session.flush()
        audit.record(
            session,
            actor=user.name,
            action="create",
            entity="finding",
            entity_id=finding.id,
            at=now,
            after=_state(finding),
        )
        return finding_json(finding, seriesuid)

    return transaction(svc.store, work)


@router.patch("/{finding_id}")
def change_finding(
    finding_id: int, body: FindingPatch, request: Request, user: Principal = Depends(_annotator)
) -> dict[str, Any]:
    svc = request.app.state.service
    changes = body.model_dump(exclude_unset=True)
    for name in ("x", "y", "z", "diameter_mm"):
        if name in changes and changes[name] is None:
            raise HTTPException(
                422, [{"loc": ["body", name], "type": "value_error", "msg": "may not be null"}]
            )

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        finding = _editable(session, finding_id, user, now)
        seriesuid = _seriesuid(session, finding.scan_id)
        before = _state(finding)
        xyz = (
            changes.get("x", finding.coord_x),
            changes.get("y", finding.coord_y),
            changes.get("z", finding.coord_z),
        )
        _check_inside(request, seriesuid, xyz)
        finding.coord_x, finding.coord_y, finding.coord_z = xyz
        finding.diameter_mm = changes.get("diameter_mm", finding.diameter_mm)
        if "malignancy" in changes:
            finding.malignancy = changes["malignancy"]
        finding.updated_at = now
        audit.record(
            session,
            actor=user.name,
            action="update",
            entity="finding",
            entity_id=finding.id,
            at=now,
            before=before,
            after=_state(finding),
        )
        return finding_json(finding, seriesuid)

    return transaction(svc.store, work)


@router.delete("/{finding_id}")
def delete_finding(
    finding_id: int, request: Request, user: Principal = Depends(_annotator)
) -> dict[str, Any]:
    """Mark a finding deleted (its row and trail stay); a submitted one leaves its annotation,
    whose count of findings drops by one."""
    svc = request.app.state.service

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        finding = _editable(session, finding_id, user, now)
        before = _state(finding)
        if finding.annotation_id is not None:
            annotation = session.get(Annotation, finding.annotation_id, with_for_update=True)
            if annotation is not None:
                annotation.n_findings = max(annotation.n_findings - 1, 0)
            finding.annotation_id = None
        finding.status = "deleted"
        finding.updated_at = now
        audit.record(
            session,
            actor=user.name,
            action="delete",
            entity="finding",
            entity_id=finding.id,
            at=now,
            before=before,
            after=_state(finding),
        )
        return finding_json(finding, _seriesuid(session, finding.scan_id))

    return transaction(svc.store, work)


@router.post("/{finding_id}/review")
def review_finding(
    finding_id: int, body: ReviewIn, request: Request, user: Principal = Depends(_reviewer)
) -> dict[str, Any]:
    svc = request.app.state.service

    def work(session: Session) -> dict[str, Any]:
        now = svc.settings.clock()
        finding = session.get(Finding, finding_id, with_for_update=True)
        if finding is None or finding.status is None or finding.status == "deleted":
            raise HTTPException(404, f"no finding {finding_id}")
        if finding.annotation_id is None:
            raise HTTPException(409, f"finding {finding_id} is not submitted yet")
        before = _state(finding)
        finding.status = "accepted" if body.decision == "accept" else "rejected"
        finding.updated_at = now
        audit.record(
            session,
            actor=user.name,
            action=body.decision,
            entity="finding",
            entity_id=finding.id,
            at=now,
            before=before,
            after=_state(finding),
        )
        return finding_json(finding, _seriesuid(session, finding.scan_id))

    return transaction(svc.store, work)


@router.get("/{finding_id}/history")
def finding_history(
    finding_id: int, request: Request, user: Principal = Depends(_annotator)
) -> list[dict[str, Any]]:
    svc = request.app.state.service

    def work(session: Session) -> list[dict[str, Any]]:
        finding = session.get(Finding, finding_id)
        if finding is None or finding.status is None:
            raise HTTPException(404, f"no finding {finding_id}")
        return audit.events(session, "finding", finding_id)

    return transaction(svc.store, work)
