"""Exports: LUNA16 ``annotations.csv`` and LIDC-style per-reader rows of the answered items.

Both list the findings of submitted answers (human source) of the project, in world mm;
rejected and deleted findings are left out. ``?accepted_only=true`` keeps only findings a
reviewer accepted. The LUNA16 table feeds ``activecad eval froc --annotations``; the
readers table has the ``readers`` columns of :mod:`activecad.io.tables` (one row per
reader per finding; ``nodule_id`` is the finding's id, ratings other than malignancy empty).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from activecad.io.tables import TABLE_SCHEMAS
from activecad.service.auth import Principal, require
from activecad.service.queue import transaction
from activecad.store.models import Annotation, Finding, Item, Scan

__all__ = ["LUNA16_COLUMNS", "READER_COLUMNS", "router"]

# The columns of activecad's own table kinds, so an export reads back with read_table.
LUNA16_COLUMNS = TABLE_SCHEMAS["annotations"].required
READER_COLUMNS = TABLE_SCHEMAS["readers"].required

router = APIRouter(prefix="/api/export", tags=["export"])
_reviewer = require("reviewer")


def _rows(session: Session, project_id: int, accepted_only: bool) -> list[Any]:
    statuses = ("accepted",) if accepted_only else ("proposed", "accepted")
    return list(
        session.execute(
            select(
                Scan.seriesuid,
                Finding.id,
                Annotation.annotator,
                Finding.coord_x,
                Finding.coord_y,
                Finding.coord_z,
                Finding.diameter_mm,
                Finding.malignancy,
            )
            .join(Annotation, Finding.annotation_id == Annotation.id)
            .join(Item, Annotation.item_id == Item.id)
            .join(Scan, Finding.scan_id == Scan.id)
            .where(
                Item.project_id == project_id,
                Annotation.source == "human",
                Finding.status.in_(statuses),
            )
            .order_by(Scan.seriesuid, Finding.id)
        ).all()
    )


def _csv(header: tuple[str, ...], rows: list[list[object]]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(buffer.getvalue(), media_type="text/csv")


@router.get("/luna16.csv")
def luna16_csv(
    request: Request,
    accepted_only: bool = Query(False),
    user: Principal = Depends(_reviewer),
) -> Response:
    svc = request.app.state.service
    rows = transaction(svc.store, lambda s: _rows(s, svc.project_id, accepted_only))
    return _csv(
        LUNA16_COLUMNS, [[r[0], repr(r[3]), repr(r[4]), repr(r[5]), repr(r[6])] for r in rows]
    )


@router.get("/readers.csv")
def readers_csv(
    request: Request,
    accepted_only: bool = Query(False),
    user: Principal = Depends(_reviewer),
) -> Response:
    svc = request.app.state.service
    rows = transaction(svc.store, lambda s: _rows(s, svc.project_id, accepted_only))
    return _csv(
        READER_COLUMNS,
        [
            [
                r[0],
                r[1],
                r[2],
                repr(r[3]),
                repr(r[4]),
                repr(r[5]),
                repr(r[6]),
                "" if r[7] is None else r[7],
                "",
                "",
                "",
                "",
                "",
            ]
            for r in rows
        ],
    )
