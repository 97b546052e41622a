"""The annotation service's HTTP API on SQLite and PostgreSQL: auth, the leased queue, findings
with their audit trail, submission into the active-learning store, and refusals."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from tests.service.conftest import SCANS, TestClient, nodule_xyz

from activecad.store import open_store
from activecad.store.models import Annotation, AuditEvent, Finding, Lease


def _count(db_url: str, model: type) -> int:
    store = open_store(db_url)
    try:
        with store.session() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        store.close()


def _lease(service, user: str) -> dict:
    res = service.client.post("/api/queue/next", headers=service.auth(user))
    assert res.status_code == 200, res.text
    return res.json()


def _finding(service, user: str, lease: dict, **extra) -> dict:
    x, y, z = nodule_xyz(lease["seriesuid"])
    body = {"lease_id": lease["lease_id"], "x": x, "y": y, "z": z, "diameter_mm": 6.0, **extra}
    res = service.client.post("/api/findings", json=body, headers=service.auth(user))
    assert res.status_code == 201, res.text
    return res.json()


# ----------------------------------------------------------------------------------- auth


def test_health_needs_no_token_and_me_names_the_user(service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    res = service.client.get("/api/me", headers=service.auth("rev"))
    assert res.json() == {"name": "rev", "role": "reviewer", "similar_search": False}


def test_no_token_forged_token_and_revoked_token_are_401(service) -> None:
    from activecad.service.auth import revoke_user

    client = service.client
    assert client.get("/api/queue").status_code == 401
    assert client.post("/api/queue/next").status_code == 401
    forged = {"Authorization": "Bearer acd_" + "A" * 43}
    assert client.post("/api/queue/next", headers=forged).status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Basic abc"}).status_code == 401
    # A token in the URL is not a token.
    assert client.get(f"/api/me?token={service.tokens['ann1']}").status_code == 401
    assert client.get("/api/me", headers=service.auth("ann1")).status_code == 200
    store = open_store(service.db_url)
    assert revoke_user(store, "ann1") == 1
    store.close()
    res = client.post("/api/queue/next", headers=service.auth("ann1"))
    assert res.status_code == 401 and "revoked" in res.json()["detail"]
    assert _count(service.db_url, Lease) == 0


def test_the_wrong_role_is_403(service) -> None:
    client = service.client
    for path in ("/api/export/luna16.csv", "/api/export/readers.csv"):
        assert client.get(path, headers=service.auth("ann1")).status_code == 403
        assert client.get(path, headers=service.auth("rev")).status_code == 200
        assert client.get(path, headers=service.auth("boss")).status_code == 200  # admin > rev
    res = client.post(
        "/api/leases/assign",
        json={"item_key": next(iter(SCANS)), "user": "ann2"},
        headers=service.auth("ann1"),
    )
    assert res.status_code == 403
    assert _count(service.db_url, Lease) == 0


def test_tokens_are_stored_hashed(service) -> None:
    store = open_store(service.db_url)
    with store.engine.connect() as connection:
        stored = connection.execute(text("SELECT token_sha256 FROM api_tokens")).scalars().all()
    store.close()
    assert len(stored) == len(service.tokens)
    assert not set(stored) & set(service.tokens.values())
    assert all(len(h) == 64 for h in stored)


# --------------------------------------------------------------------------------- queue


def test_leases_follow_the_rank_and_repeat_for_the_holder(service) -> None:
    first = _lease(service, "ann1")
    assert first["rank"] == 1 and first["seriesuid"] in SCANS
    assert _lease(service, "ann1") == first  # asking again gives the same lease
    second = _lease(service, "ann2")
    assert second["rank"] == 2 and second["item_key"] != first["item_key"]
    state = service.client.get("/api/queue", headers=service.auth("ann1")).json()
    assert state["cycle"] == 0 and state["total"] == 3
    assert state["answered"] == 0 and state["leased"] == 2
    assert [m["lease_id"] for m in state["mine"]] == [first["lease_id"]]
    third = _lease(service, "ann3")
    assert third["rank"] == 3
    res = service.client.post("/api/queue/next", headers=service.auth("rev"))
    assert res.status_code == 204  # every item is held


def test_an_expired_lease_returns_the_item_and_its_holder_loses_it(service) -> None:
    first = _lease(service, "ann1")
    service.clock.advance(29)
    assert _lease(service, "ann2")["rank"] == 2  # rank 1 still held
    service.clock.advance(2)  # ann1's lease (30 min) has expired, ann2's has not
    again = _lease(service, "ann3")
    assert again["item_key"] == first["item_key"] and again["lease_id"] != first["lease_id"]
    x, y, z = nodule_xyz(first["seriesuid"])
    body = {"lease_id": first["lease_id"], "x": x, "y": y, "z": z, "diameter_mm": 5.0}
    res = service.client.post("/api/findings", json=body, headers=service.auth("ann1"))
    assert res.status_code == 409
    res = service.client.post(
        f"/api/leases/{first['lease_id']}/submit",
        json={"no_nodule": True},
        headers=service.auth("ann1"),
    )
    assert res.status_code == 409
    assert _count(service.db_url, Annotation) == 0 and _count(service.db_url, Finding) == 0
    # ann1 asks again and gets what is left: rank 3.
    assert _lease(service, "ann1")["rank"] == 3


def test_someone_elses_lease_is_409(service) -> None:
    lease = _lease(service, "ann1")
    res = service.client.post(
        f"/api/leases/{lease['lease_id']}/submit",
        json={"no_nodule": True},
        headers=service.auth("ann2"),
    )
    assert res.status_code == 409
    res = service.client.post(
        "/api/leases/999/submit", json={"no_nodule": True}, headers=service.auth("ann2")
    )
    assert res.status_code == 404


def test_concurrent_annotators_never_get_the_same_item(service) -> None:
    users = ["ann1", "ann2", "ann3", "rev", "boss"]

    def ask(user: str) -> tuple[int, str | None]:
        # A client per thread, without `with`: the app's lifespan (which closes the store
        # at shutdown) belongs to the fixture's client.
        client = TestClient(service.client.app)
        res = client.post("/api/queue/next", headers=service.auth(user))
        return res.status_code, res.json()["item_key"] if res.status_code == 200 else None

    with ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(ask, users))
    items = [item for code, item in results if code == 200]
    assert sorted(code for code, _ in results) == [200, 200, 200, 204, 204]
    assert len(set(items)) == 3


def test_the_database_refuses_a_second_active_lease_on_an_item(service) -> None:
    lease = _lease(service, "ann1")
    store = open_store(service.db_url)
    try:
        with pytest.raises(IntegrityError), store.session() as session:
            held = session.get(Lease, lease["lease_id"])
            session.add(
                Lease(
                    item_id=held.item_id,
                    user_id=held.user_id + 1,
                    reader=1,
                    state="active",
                    expires_at=held.expires_at,
                )
            )
    finally:
        store.close()


def test_a_reviewer_assigns_a_second_reader(service) -> None:
    lease = _lease(service, "ann1")
    _finding(service, "ann1", lease)
    service.client.post(
        f"/api/leases/{lease['lease_id']}/submit",
        json={"no_nodule": False},
        headers=service.auth("ann1"),
    )
    res = service.client.post(
        "/api/leases/assign",
        json={"item_key": lease["item_key"], "user": "ann2"},
        headers=service.auth("rev"),
    )
    assert res.status_code == 201, res.text
    assert res.json()["reader"] == 2
    second = _lease(service, "ann2")  # the queue hands ann2 the assigned item
    assert second["item_key"] == lease["item_key"]
    res = service.client.post(
        f"/api/leases/{second['lease_id']}/submit",
        json={"no_nodule": True},
        headers=service.auth("ann2"),
    )
    assert res.status_code == 200
    store = open_store(service.db_url)
    with store.session() as session:
        readers = session.execute(
            select(Annotation.annotator, Annotation.n_findings).order_by(Annotation.id)
        ).all()
    store.close()
    assert [tuple(r) for r in readers] == [("ann1", 1), ("ann2", 0)]


# ------------------------------------------------------------------- submit and the loop


def test_submitted_items_are_labels_of_the_active_learning_loop(service) -> None:
    from activecad.active.run import current_query, open_run, propose_query

    leases = [_lease(service, u) for u in ("ann1", "ann2", "ann3")]
    finding = _finding(service, "ann1", leases[0], malignancy=4)
    assert finding["status"] == "proposed" and finding["author"] == "ann1"
    _finding(service, "ann2", leases[1])
    service.clock.advance(3)
    answers = {"ann1": False, "ann2": False, "ann3": True}
    for user, lease in zip(answers, leases, strict=True):
        res = service.client.post(
            f"/api/leases/{lease['lease_id']}/submit",
            json={"no_nodule": answers[user]},
            headers=service.auth(user),
        )
        assert res.status_code == 200, res.text
    assert res.json()["query_answered"] is True
    with open_run(service.run_dir, db_url=service.db_url) as run:
        query = current_query(run)
        assert query is not None and query.answered
        labels = run.pool.labels()
        x, y, z = nodule_xyz(leases[0]["item_key"])
        np.testing.assert_allclose(labels[leases[0]["item_key"]], [[x, y, z, 6.0]])
        assert labels[leases[2]["item_key"]].shape == (0, 4)  # a labelled negative
        items = {i.key: i for i in run.pool.items()}
        assert items[leases[0]["item_key"]].annotator == "ann1"
        assert items[leases[0]["item_key"]].cycle == 0
        assert run.pool.annotation_minutes() == pytest.approx(9.0)  # 3 items x 3 minutes
        # The loop continues: the next query can be proposed (the pool is used up here).
        assert propose_query(run, None, budget=1, seed=1) is None
    store = open_store(service.db_url)
    with store.session() as session:
        sources = set(session.scalars(select(Annotation.source)))
    store.close()
    assert sources == {"human"}
    assert service.client.post("/api/queue/next", headers=service.auth("ann1")).status_code == 204


def test_submit_must_agree_with_the_findings(service) -> None:
    lease = _lease(service, "ann1")
    path = f"/api/leases/{lease['lease_id']}/submit"
    res = service.client.post(path, json={"no_nodule": False}, headers=service.auth("ann1"))
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "no_nodule"]
    _finding(service, "ann1", lease)
    res = service.client.post(path, json={"no_nodule": True}, headers=service.auth("ann1"))
    assert res.status_code == 422
    assert _count(service.db_url, Annotation) == 0
    res = service.client.post(path, json={"no_nodule": False}, headers=service.auth("ann1"))
    assert res.status_code == 200
    res = service.client.post(path, json={"no_nodule": False}, headers=service.auth("ann1"))
    assert res.status_code == 409  # answered once, never twice
    assert _count(service.db_url, Annotation) == 1


# ------------------------------------------------------------------- findings and audit


def test_every_change_of_a_finding_is_in_its_history(service) -> None:
    lease = _lease(service, "ann1")
    made = _finding(service, "ann1", lease)
    fid = made["id"]
    client = service.client
    res = client.patch(
        f"/api/findings/{fid}",
        json={"x": made["x"] + 1.0, "malignancy": 2},
        headers=service.auth("ann1"),
    )
    assert res.status_code == 200 and res.json()["x"] == made["x"] + 1.0
    # Another annotator may not touch it.
    res = client.patch(f"/api/findings/{fid}", json={"x": 0.0}, headers=service.auth("ann2"))
    assert res.status_code == 403
    second = _finding(service, "ann1", lease)
    assert (
        client.delete(f"/api/findings/{second['id']}", headers=service.auth("ann1")).json()[
            "status"
        ]
        == "deleted"
    )
    listed = client.get(
        "/api/findings", params={"seriesuid": lease["seriesuid"]}, headers=service.auth("ann2")
    ).json()
    assert [f["id"] for f in listed] == [fid]
    res = client.post(
        f"/api/findings/{fid}/review", json={"decision": "accept"}, headers=service.auth("rev")
    )
    assert res.status_code == 409  # not submitted yet
    client.post(
        f"/api/leases/{lease['lease_id']}/submit",
        json={"no_nodule": False},
        headers=service.auth("ann1"),
    )
    res = client.patch(f"/api/findings/{fid}", json={"x": 0.0}, headers=service.auth("ann1"))
    assert res.status_code == 409  # submitted: only a reviewer may change it now
    res = client.post(
        f"/api/findings/{fid}/review", json={"decision": "accept"}, headers=service.auth("ann1")
    )
    assert res.status_code == 403
    res = client.post(
        f"/api/findings/{fid}/review", json={"decision": "reject"}, headers=service.auth("rev")
    )
    assert res.json()["status"] == "rejected"
    history = client.get(f"/api/findings/{fid}/history", headers=service.auth("ann1")).json()
    assert [(e["actor"], e["action"]) for e in history] == [
        ("ann1", "create"),
        ("ann1", "update"),
        ("rev", "reject"),
    ]
    assert history[1]["before"]["x"] == made["x"] and history[1]["after"]["x"] == made["x"] + 1
    assert history[1]["before"]["malignancy"] is None and history[1]["after"]["malignancy"] == 2
    assert history[2]["before"]["status"] == "proposed"
    gone = client.get(f"/api/findings/{second['id']}/history", headers=service.auth("rev")).json()
    assert [e["action"] for e in gone] == ["create", "delete"]
    # The deleted finding's row is kept.
    assert _count(service.db_url, Finding) == 2


def test_the_audit_trail_is_append_only(service) -> None:
    lease = _lease(service, "ann1")
    _finding(service, "ann1", lease)
    store = open_store(service.db_url)
    try:
        for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"):
            with pytest.raises(DBAPIError), store.session() as session:
                session.execute(text(statement))
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(AuditEvent)) == 2
    finally:
        store.close()


# -------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_refused_and_store_nothing(service) -> None:
    client = service.client
    lease = _lease(service, "ann1")
    auth = service.auth("ann1")
    before = (_count(service.db_url, Finding), _count(service.db_url, AuditEvent))
    # Malformed JSON.
    res = client.post(
        "/api/findings",
        content=b'{"lease_id": 1, "x": ',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert res.status_code == 422
    # A finding outside the scan names the field that leaves it.
    x, y, z = nodule_xyz(lease["seriesuid"])
    body = {"lease_id": lease["lease_id"], "x": x, "y": y, "z": z + 500.0, "diameter_mm": 5.0}
    res = client.post("/api/findings", json=body, headers=auth)
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "z"]
    # Not a number, a negative diameter, a malignancy of 6, an unknown field.
    for change, field in (
        ({"x": "left"}, "x"),
        ({"diameter_mm": -1}, "diameter_mm"),
        ({"malignancy": 6}, "malignancy"),
        ({"colour": "red"}, "colour"),
    ):
        res = client.post("/api/findings", json={**body, "z": z, **change}, headers=auth)
        assert res.status_code == 422, change
        assert res.json()["detail"][0]["loc"][-1] == field
    # NaN is not JSON but Python's parser reads it: refused all the same.
    raw = json.dumps({**body, "z": z}).replace(f"{x}", "NaN", 1).encode()
    res = client.post(
        "/api/findings", content=raw, headers={**auth, "Content-Type": "application/json"}
    )
    assert res.status_code == 422
    # An oversized body (the test app allows 4096 bytes).
    res = client.post("/api/findings", json={**body, "z": z, "pad": "x" * 5000}, headers=auth)
    assert res.status_code == 413
    assert (_count(service.db_url, Finding), _count(service.db_url, AuditEvent)) == before


def test_unknown_scans_and_traversal_paths_are_404(service) -> None:
    client = service.client
    auth = service.auth("ann1")
    for path in (
        "/api/scans/1.2.3.4",
        "/api/scans/1.2.3.4/volume.nii.gz",
        "/api/scans/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/scans/..%2Fannotations.csv/volume.nii.gz",
        "/api/scans/%2Fetc%2Fpasswd/volume.nii.gz",
        "/api/scans/../../etc/passwd",
        "/api/scans/..",
    ):
        res = client.get(path, headers=auth)
        assert res.status_code == 404, path
        assert b"root:" not in res.content
    res = client.get("/api/findings", params={"seriesuid": "../ct"}, headers=auth)
    assert res.status_code == 404


# -------------------------------------------------------------------------------- images


def test_volume_slices_and_geometry_match_the_scan(service, data_dir, tmp_path) -> None:
    import SimpleITK as sitk
    from PIL import Image

    from activecad.io import read_scan

    uid = next(iter(SCANS))
    auth = service.auth("ann1")
    info = service.client.get(f"/api/scans/{uid}", headers=auth).json()
    assert info["shape_zyx"] == [20, 32, 32]
    assert info["spacing_xyz"] == [1.0, 1.0, 1.5]
    assert info["origin_xyz"] == list(SCANS[uid][0])
    assert service.client.get(f"/api/scans/{uid}/volume.nii.gz").status_code == 401
    res = service.client.get(f"/api/scans/{uid}/volume.nii.gz", headers=auth)
    assert res.status_code == 200 and res.content[:2] == b"\x1f\x8b"
    path = tmp_path / "v.nii.gz"
    path.write_bytes(res.content)
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkInt16
    original = read_scan(data_dir / "ct" / f"{uid}.mhd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), original.array.astype(np.int16))
    np.testing.assert_allclose(image.GetOrigin(), original.origin)
    res = service.client.get(f"/api/scans/{uid}/slices/axial/10.png", headers=auth)
    slice_ = np.asarray(Image.open(__import__("io").BytesIO(res.content)))
    assert slice_.shape == (32, 32)
    # Lung window (-1350..150 HU): -850 HU -> 85, 40 HU -> 236 (255 * 1390 / 1500).
    assert set(np.unique(slice_)) == {85, 236}
    res = service.client.get(
        f"/api/scans/{uid}/slices/coronal/12.png", params={"window": "mediastinum"}, headers=auth
    )
    assert np.asarray(Image.open(__import__("io").BytesIO(res.content))).shape == (20, 32)
    assert (
        service.client.get(f"/api/scans/{uid}/slices/oblique/1.png", headers=auth).status_code
        == 422
    )
    assert (
        service.client.get(f"/api/scans/{uid}/slices/axial/20.png", headers=auth).status_code == 404
    )
    assert (
        service.client.get(
            f"/api/scans/{uid}/slices/axial/1.png", params={"window": "bone"}, headers=auth
        ).status_code
        == 422
    )


def test_detections_come_from_the_run_folder(service) -> None:
    uid = next(iter(SCANS))
    auth = service.auth("ann1")
    assert service.client.get(f"/api/scans/{uid}/detections", headers=auth).json() == []
    (service.run_dir / "detections.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,probability\n{uid},1.5,2.5,-90.0,0.75\n"
        "1.2.826.0.1.3680043.9.2,0,0,0,0.1\n"
    )
    got = service.client.get(f"/api/scans/{uid}/detections", headers=auth).json()
    assert got == [{"x": 1.5, "y": 2.5, "z": -90.0, "probability": 0.75, "diameter_mm": None}]


# -------------------------------------------------------------------------------- export


def test_the_export_round_trips_into_eval_froc(service, run_cli, tmp_path) -> None:
    from activecad.io import read_table

    leases = [_lease(service, u) for u in ("ann1", "ann2", "ann3")]
    for user, lease in zip(("ann1", "ann2", "ann3"), leases, strict=True):
        x, y, z = nodule_xyz(lease["seriesuid"])
        diameter = SCANS[lease["seriesuid"]][2]
        res = service.client.post(
            "/api/findings",
            json={"lease_id": lease["lease_id"], "x": x, "y": y, "z": z, "diameter_mm": diameter},
            headers=service.auth(user),
        )
        assert res.status_code == 201
        service.client.post(
            f"/api/leases/{lease['lease_id']}/submit",
            json={"no_nodule": False},
            headers=service.auth(user),
        )
    res = service.client.get("/api/export/luna16.csv", headers=service.auth("rev"))
    exported = tmp_path / "exported.csv"
    exported.write_text(res.text)
    table = read_table(exported, "annotations")
    assert sorted(table["seriesuid"]) == sorted(SCANS)
    # Predictions: one mark on each true nodule (p = 0.9) and one far from it (p = 0.1).
    lines = ["seriesuid,coordX,coordY,coordZ,probability"]
    for uid in SCANS:
        x, y, z = nodule_xyz(uid)
        lines += [f"{uid},{x},{y},{z},0.9", f"{uid},{x + 15},{y},{z},0.1"]
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("\n".join(lines) + "\n")
    result = run_cli(
        "eval",
        "froc",
        "--annotations",
        exported,
        "--predictions",
        predictions,
        "--bootstrap",
        "0",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    # Every nodule is found at p = 0.9 before any false positive, so the sensitivity is 1 at
    # each of the seven FP rates and CPM = 1 (LUNA16's rules).
    assert summary["cpm"] == pytest.approx(1.0)
    readers = service.client.get("/api/export/readers.csv", headers=service.auth("rev"))
    path = tmp_path / "readers.csv"
    path.write_text(readers.text)
    rows = read_table(path, "readers")
    assert sorted(rows["reader"]) == ["ann1", "ann2", "ann3"]


def test_rejected_findings_leave_the_export(service) -> None:
    lease = _lease(service, "ann1")
    made = _finding(service, "ann1", lease)
    service.client.post(
        f"/api/leases/{lease['lease_id']}/submit",
        json={"no_nodule": False},
        headers=service.auth("ann1"),
    )
    auth = service.auth("rev")
    assert len(service.client.get("/api/export/luna16.csv", headers=auth).text.splitlines()) == 2
    accepted = service.client.get(
        "/api/export/luna16.csv", params={"accepted_only": "true"}, headers=auth
    )
    assert len(accepted.text.splitlines()) == 1
    service.client.post(
        f"/api/findings/{made['id']}/review", json={"decision": "reject"}, headers=auth
    )
    assert len(service.client.get("/api/export/luna16.csv", headers=auth).text.splitlines()) == 1


# ---------------------------------------------------------------------------------- logs


def test_logs_are_json_lines_without_the_token(service) -> None:
    import io
    import logging

    from activecad.service.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("activecad.service")
    logger.addHandler(handler)
    try:
        _lease(service, "ann1")
        service.client.get("/api/me", headers={"Authorization": "Bearer acd_forged"})
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [entry for entry in lines if entry["msg"] == "request"]
    assert [(e["path"], e["status"], e["user"]) for e in requests] == [
        ("/api/queue/next", 200, "ann1"),
        ("/api/me", 401, None),
    ]
    assert service.tokens["ann1"] not in stream.getvalue()
    assert "acd_forged" not in stream.getvalue()


def test_an_item_answered_between_choice_and_lease_is_not_leased_again(service) -> None:
    """The race the benchmark found on PostgreSQL: the queue picks the first free item, and
    before its lease is inserted another reader leases and answers that item. The insert
    succeeds (no active lease is left to collide with), so the queue must see the answer and
    pick again."""
    from sqlalchemy import event

    from activecad.store.models import Item, User

    raced: list[int] = []

    def answer_it_first(_mapper, _connection, target: Lease) -> None:
        if raced:
            return
        raced.append(target.item_id)
        store = open_store(service.db_url)
        with store.session() as session:  # ann2 leases and answers the item meanwhile
            ann2 = session.scalar(select(User.id).where(User.name == "ann2"))
            session.add(
                Lease(
                    item_id=target.item_id,
                    user_id=ann2,
                    cycle_id=target.cycle_id,
                    reader=1,
                    state="answered",
                    expires_at=target.expires_at,
                )
            )
            session.add(Annotation(item_id=target.item_id, annotator="ann2", n_findings=0))
        store.close()

    event.listen(Lease, "before_insert", answer_it_first)
    try:
        lease = _lease(service, "ann1")
    finally:
        event.remove(Lease, "before_insert", answer_it_first)
    store = open_store(service.db_url)
    with store.session() as session:
        raced_key = session.scalar(select(Item.key).where(Item.id == raced[0]))
        leases = session.scalars(select(Lease.state).order_by(Lease.id)).all()
    store.close()
    assert lease["item_key"] != raced_key and lease["rank"] == 2
    assert leases == ["answered", "active"]
