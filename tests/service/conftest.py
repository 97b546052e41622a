"""Fixtures of the annotation-service tests: a tiny LUNA16-style folder, a run with a
current query, users with tokens, an injectable clock and the app on SQLite and PostgreSQL
(the ``db_url`` fixture of tests/conftest.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from activecad.io.ct import write_scan
from activecad.io.scan import Scan
from activecad.io.tables import write_table

with warnings.catch_warnings():
    # starlette 1.10 asks for httpx2 instead of httpx (installed by pyproject) in its test
    # client; httpx 0.28 still works, so the deprecation is not an error here.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

#: The phantom's scans: seriesuid -> (origin mm x-y-z, nodule centre voxel z-y-x, diameter mm).
SCANS = {
    "1.2.826.0.1.3680043.9.1": ((-40.0, -30.0, -100.0), (10, 12, 14), 6.0),
    "1.2.826.0.1.3680043.9.2": ((10.0, 20.0, 50.0), (8, 20, 10), 8.0),
    "1.2.826.0.1.3680043.9.3": ((0.0, 0.0, 0.0), (12, 16, 16), 5.0),
}
SHAPE_ZYX = (20, 32, 32)
SPACING_XYZ = (1.0, 1.0, 1.5)


def nodule_xyz(uid: str) -> tuple[float, float, float]:
    """World mm (x, y, z) of a phantom scan's nodule (identity direction)."""
    origin, (z, y, x), _ = SCANS[uid]
    return (
        origin[0] + x * SPACING_XYZ[0],
        origin[1] + y * SPACING_XYZ[1],
        origin[2] + z * SPACING_XYZ[2],
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 20x32x32 scans (1 x 1 x 1.5 mm) with one bright sphere each, LUNA16 layout."""
    root = tmp_path_factory.mktemp("svc_data")
    (root / "ct").mkdir()
    zz, yy, xx = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    rows = []
    for uid, (origin, (cz, cy, cx), diameter) in SCANS.items():
        array = np.full(SHAPE_ZYX, -850.0, dtype=np.float32)
        array[((zz - cz) * 1.5) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = 40
        write_scan(
            Scan(array=array, spacing=SPACING_XYZ, origin=origin, seriesuid=uid),
            root / "ct" / f"{uid}.mhd",
        )
        x, y, z = nodule_xyz(uid)
        rows.append(
            {"seriesuid": uid, "coordX": x, "coordY": y, "coordZ": z, "diameter_mm": diameter}
        )
    write_table(pd.DataFrame(rows), root / "annotations.csv", "annotations")
    return root


@dataclass
class Clock:
    """A clock the test moves by hand (aware UTC)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))


@pytest.fixture
def run_dir(db_url: str, data_dir: Path, tmp_path: Path) -> Path:
    """A run on ``db_url`` whose cycle 0 queries all three scans (random order, seed 0)."""
    from activecad.active.run import create_run, propose_query

    with create_run(tmp_path / "run", list(SCANS), db_url=db_url) as run:
        query = propose_query(run, None, heuristic="random", budget=3, seed=0)
        assert query is not None and len(query.rows) == 3
    return tmp_path / "run"


@dataclass
class Service:
    """The app under test, its client, the users' tokens and the store."""

    client: TestClient
    tokens: dict[str, str]
    db_url: str
    run_dir: Path
    clock: Clock

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


USERS = {
    "ann1": "annotator",
    "ann2": "annotator",
    "ann3": "annotator",
    "rev": "reviewer",
    "boss": "admin",
}


@pytest.fixture
def service(db_url: str, data_dir: Path, run_dir: Path, clock: Clock) -> Iterator[Service]:
    from activecad.service.app import create_app
    from activecad.service.auth import add_user
    from activecad.store import open_store

    store = open_store(db_url)
    tokens = {name: add_user(store, name, role) for name, role in USERS.items()}
    store.close()
    app = create_app(db_url, data_dir, run_dir, clock=clock, lease_minutes=30, max_body_bytes=4096)
    with TestClient(app) as client:
        yield Service(client, tokens, db_url, run_dir, clock)
