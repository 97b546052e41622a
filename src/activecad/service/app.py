"""The FastAPI application of the annotation service: :func:`create_app`.

Routes (all JSON; world mm x, y, z): ``/healthz``; ``/api/me``; the queue
(:mod:`~activecad.service.queue`); scans (:mod:`~activecad.service.images`); findings
(:mod:`~activecad.service.findings`); exports (:mod:`~activecad.service.export`); and the
viewer page when :mod:`activecad.service.viewer` is installed. Two ASGI middlewares wrap
them: a request-body limit (413 above ``max_body_bytes``, checked on the declared length and
on the bytes received) and one JSON log line per request (method, path without the query,
status, milliseconds, user name; never a header).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select

from activecad.errors import InputError
from activecad.service import export, findings, images, queue
from activecad.service import similar as similar_route
from activecad.service.auth import Principal, current_user
from activecad.service.images import ScanLibrary
from activecad.service.logs import setup_json_logging
from activecad.service.settings import Settings, utcnow
from activecad.store import Store, open_store
from activecad.store.models import Cycle, Project

__all__ = ["Service", "create_app"]

logger = logging.getLogger("activecad.service")


@dataclass
class Service:
    """What every request needs: settings, the store, the project served, the scans."""

    settings: Settings
    store: Store
    project: str
    project_id: int
    scans: ScanLibrary


def _project(store: Store, run_dir: Path | None, db_url: str) -> tuple[str, int]:
    if run_dir is not None:
        from activecad.active.run import open_run

        run = open_run(run_dir, db_url=db_url)
        try:
            return run.pool.project, run.pool.project_id
        finally:
            run.close()
    with store.session() as session:
        found = session.execute(
            select(Project.name, Project.id)
            .join(Cycle, Cycle.project_id == Project.id)
            .distinct()
            .order_by(Project.name)
        ).all()
    if len(found) != 1:
        names = ", ".join(n for n, _ in found) or "none"
        raise InputError(
            f"the database holds {len(found)} projects with a query ({names})",
            fix="pass --run RUN_DIR to say which run to serve",
        )
    return found[0][0], found[0][1]


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413, before a route reads them."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(scope, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, send: Callable) -> None:
        scope.setdefault("state", {})["status"] = 413
        response = JSONResponse(
            {"detail": f"the request body is larger than {self.limit} bytes"}, status_code=413
        )
        await response(scope, None, send)  # type: ignore[arg-type]


class AccessLog:
    """One JSON log line per request: method, path (no query string), status, ms, user."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state") or {}
            logger.info(
                "request",
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "ms": round((time.perf_counter() - start) * 1000, 2),
                        "user": state.get("user"),
                    }
                },
            )


def create_app(
    db_url: str,
    data_dir: str | Path,
    run_dir: str | Path | None = None,
    *,
    lease_minutes: float = 30.0,
    max_body_bytes: int = 64 * 1024,
    clock: Callable[[], datetime] | None = None,
    log_json: bool = True,
    index_dir: str | Path | None = None,
) -> FastAPI:
    """The annotation service on the store at ``db_url`` and the scans of ``data_dir``.

    Args:
        db_url: SQLAlchemy URL of the store (migrated to the newest schema on open).
        data_dir: LUNA16-style data folder; only the scans in its ``ct/`` are served.
        run_dir: the active-learning run whose current query is the work queue; None serves
            the store's only project that has a query.
        lease_minutes: how long a leased item stays with its reader.
        max_body_bytes: largest request body (413 above).
        clock: returns the current time as aware UTC (tests inject one); default: the
            system clock.
        log_json: send the service's logs to stderr as JSON lines.
        index_dir: a similar-nodule index (``activecad index build``) served by
            ``GET /api/similar``; None: that route answers 404.

    Raises:
        InputError: a missing data folder, an unreadable run folder or database, or a store
            where the project to serve is ambiguous.
    """
    settings = Settings(
        db_url=db_url,
        data_dir=Path(data_dir),
        run_dir=None if run_dir is None else Path(run_dir),
        lease_minutes=lease_minutes,
        max_body_bytes=max_body_bytes,
        clock=clock or utcnow,
    )
    scans = ScanLibrary(settings.data_dir)
    similar = None
    if index_dir is not None:
        from activecad.retrieval import NoduleIndex
        from activecad.retrieval.build import embedder_of

        index = NoduleIndex.load(index_dir)
        similar = (index, embedder_of(index))
    store = open_store(db_url)
    try:
        project, project_id = _project(store, settings.run_dir, db_url)
    except BaseException:
        store.close()
        raise
    if log_json:
        setup_json_logging()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="activecad annotation service", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.service = Service(settings, store, project, project_id, scans)
    app.state.similar = similar

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/me")
    def me(user: Principal = Depends(current_user)) -> dict[str, object]:
        # the viewer shows its similar-nodules panel only when the server can fill it
        return {"name": user.name, "role": user.role, "similar_search": similar is not None}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The field and the problem, never the input itself (it may be large, or NaN, which
        # JSON cannot carry).
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for module in (queue, images, findings, export, similar_route):
        app.include_router(module.router)
    if importlib.util.find_spec("activecad.service.viewer") is not None:
        viewer = importlib.import_module("activecad.service.viewer")
        app.include_router(viewer.router)

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(AccessLog)
    return app
