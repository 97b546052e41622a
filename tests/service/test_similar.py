"""``GET /api/similar``: similar nodules beside a finding, from a configured index."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.service.conftest import SCANS, TestClient, nodule_xyz

from activecad.retrieval.build import build_index


def test_similar_nodules_of_a_point_come_from_the_index(
    db_url: str, data_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    from activecad.service.app import create_app
    from activecad.service.auth import add_user
    from activecad.store import open_store

    build_index(data_dir).save(tmp_path / "index")
    store = open_store(db_url)
    token = add_user(store, "reader", "annotator")
    store.close()
    app = create_app(db_url, data_dir, run_dir, index_dir=tmp_path / "index", log_json=False)
    uid = next(iter(SCANS))
    x, y, z = nodule_xyz(uid)
    query = {"seriesuid": uid, "x": x, "y": y, "z": z, "k": 2}
    with TestClient(app) as client:
        assert client.get("/api/similar", params=query).status_code == 401
        me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["similar_search"] is True  # the viewer shows its panel
        found = client.get(
            "/api/similar", params=query, headers={"Authorization": f"Bearer {token}"}
        )
        assert found.status_code == 200, found.text
        first, second = found.json()
        # the query point is an indexed nodule: it finds itself first; annotations.csv
        # carries no ratings, so the malignancy is null
        assert (first["seriesuid"], first["rank"]) == (uid, 1)
        assert first["distance"] == pytest.approx(0.0, abs=1e-4)
        assert (first["x"], first["y"], first["z"]) == pytest.approx((x, y, z))
        assert first["malignancy"] is None and second["rank"] == 2
        unknown = client.get(
            "/api/similar",
            params={**query, "seriesuid": "../../etc"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert unknown.status_code == 404


def test_without_an_index_the_route_says_how_to_configure_one(service) -> None:
    uid = next(iter(SCANS))
    x, y, z = nodule_xyz(uid)
    answer = service.client.get(
        "/api/similar",
        params={"seriesuid": uid, "x": x, "y": y, "z": z},
        headers=service.auth("ann1"),
    )
    assert answer.status_code == 404 and "--index" in answer.json()["detail"]
