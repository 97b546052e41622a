"""``GET /api/similar``: the indexed nodules most similar to a point of a served scan.

Served when ``activecad serve --index INDEX`` names a similar-nodule index
(:mod:`activecad.retrieval`); the point is embedded the way the index's nodules were, from
the scan the service already holds, so a reader sees the k most similar known nodules (with
the readers' mean malignancy) beside the finding they are drawing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request

from activecad.service.auth import Principal, require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["similar"])
_reader = require("annotator")


@router.get("/similar")
def similar_nodules(
    request: Request,
    seriesuid: str = Query(...),
    x: float = Query(..., allow_inf_nan=False),
    y: float = Query(..., allow_inf_nan=False),
    z: float = Query(..., allow_inf_nan=False),
    k: int = Query(4, ge=1, le=50),
    user: Principal = Depends(_reader),
) -> list[dict[str, Any]]:
    """Up to ``k`` neighbours, nearest first: seriesuid, world mm x/y/z, diameter,
    malignancy (null when unrated), distance, rank."""
    similar = request.app.state.similar
    if similar is None:
        raise HTTPException(404, "no similar-nodule index: start serve with --index INDEX")
    index, embedder = similar
    scan = request.app.state.service.scans.scan(seriesuid)
    (found,) = index.search(embedder.embed(scan, np.array([[x, y, z]])), k=k)
    rows = [asdict(n) for n in found]
    for row in rows:
        if not np.isfinite(row["malignancy"]):
            row["malignancy"] = None
    return rows
