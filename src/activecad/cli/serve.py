"""``activecad serve``: the annotation service (API and viewer) under uvicorn.

It serves the current query of a run from the same store as the loop, the scans of a
LUNA16-style data folder, and the viewer at ``/viewer/``. Tokens travel in a header in clear
over HTTP: keep the default loopback address, or put a TLS proxy in front for a team.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from activecad.cli._common import warn
from activecad.cli.users import database_url


def serve_command(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            metavar="URL",
            envvar="ACTIVECAD_DB",
            help="The store: a SQLite file (a run's activecad.db), sqlite:///PATH or "
            "postgresql+psycopg://user@host/db (default: $ACTIVECAD_DB).",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="DIR",
            help="LUNA16-style data folder (ct/); only its scans are served.",
            show_default=False,
        ),
    ],
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            metavar="RUN_DIR",
            help="The active-learning run whose query is the work queue (default: the "
            "store's only project with a query).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to bind.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port.")
    ] = 8000,
    lease_minutes: Annotated[
        float,
        typer.Option(
            "--lease-minutes",
            metavar="MINUTES",
            min=0.1,
            help="How long a leased item stays with its reader.",
        ),
    ] = 30.0,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            metavar="INDEX",
            help="A similar-nodule index (activecad index build) for GET /api/similar and "
            "the viewer's similar-nodules panel.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the annotation API and the viewer (http://HOST:PORT/viewer/) until Ctrl-C."""
    import uvicorn

    from activecad.service.app import create_app
    from activecad.service.logs import setup_json_logging

    if not data.exists():
        from activecad.errors import InputError

        raise InputError(
            "the data folder does not exist",
            path=data,
            fix="pass a LUNA16-style folder with ct/ (e.g. from 'activecad phantom')",
        )
    url = database_url(db)
    app = create_app(url, data, run, lease_minutes=lease_minutes, index_dir=index)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        warn(
            "serving on %s: tokens cross the network in clear over HTTP; use a TLS proxy",
            host,
        )
    setup_json_logging()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = logging.getLogger("activecad.service").handlers
        logging.getLogger(name).propagate = False
    service = app.state.service
    logging.getLogger("activecad.service").info(
        "serving",
        extra={
            "fields": {
                "project": service.project,
                "url": f"http://{host}:{port}/viewer/",
                "scans": len(service.scans.paths),
            }
        },
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, log_level="info")


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve_command)
