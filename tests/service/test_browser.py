"""The viewer in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver (no browser download), against the real app under uvicorn on
127.0.0.1.

A reader signs in with a token, opens the queued scan, clicks the coronal view to bring the
axial slice to the phantom's nodule, clicks the nodule in the axial view to add a finding and
submits. The finding must be in the database within one voxel of the nodule's world centre
(annotations.csv, LUNA16/ITK LPS mm), which checks the page's RAS -> LPS conversion, its
screen -> mm mapping and the round trip through the API. Where the test clicks is computed
from the nodule's world centre and NiiVue's tile layout; the screenshot then checks, from
the pixels themselves, that the nodule is drawn there (bright) and not elsewhere.

Screenshots are saved under pytest's tmp folder (printed with -s / shown on failure).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

HAVE_BROWSER = CHROMIUM.is_file() and CHROMEDRIVER.is_file()
#: CI sets ACTIVECAD_REQUIRE_BROWSER=1 (.ci/run): there a missing browser fails, never skips.
REQUIRE_BROWSER = os.environ.get("ACTIVECAD_REQUIRE_BROWSER") == "1"
BROWSER_PACKAGES = (
    "Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install chromium chromium-driver"
)
needs_chromium = pytest.mark.skipif(
    not HAVE_BROWSER and not REQUIRE_BROWSER, reason=f"needs {BROWSER_PACKAGES}"
)

READER = "reader1"
#: The phantom's voxel spacing, mm x-y-z (tests/service/conftest.py): the tolerance.
SPACING_XYZ = np.array([1.0, 1.0, 1.5])
#: Lung window W1500/L-600 maps HU to grey (HU + 1350) / 1500: the nodule (40 HU) is 0.93,
#: the phantom's lung (-850 HU) 0.33. Between them, with room for interpolation at edges:
BRIGHT, DARK = 200, 130  # 8-bit grey levels

SLICE_AXIAL, SLICE_CORONAL, SLICE_SAGITTAL = 0, 1, 2  # NiiVue's SLICE_TYPE values


@dataclass
class Server:
    url: str
    token: str
    db_url: str
    run_dir: Path


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def server(data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    """The real app on SQLite under uvicorn (its own thread), on a free loopback port.

    The run's cycle 0 queries the three phantom scans; its detections.csv has, per scan, a
    false positive (p 0.87) away from the nodule and a detection (p 0.35) on it.
    """
    import uvicorn

    from activecad.active.run import create_run, propose_query
    from activecad.service.app import create_app
    from activecad.service.auth import add_user
    from activecad.store import open_store

    truth = pd.read_csv(data_dir / "annotations.csv")
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    run_dir = tmp_path / "run"
    with create_run(run_dir, list(truth["seriesuid"]), db_url=db_url) as run:
        assert propose_query(run, None, heuristic="random", budget=3, seed=0) is not None
    detections = []
    for row in truth.itertuples():
        detections.append((row.seriesuid, row.coordX + 8, row.coordY - 6, row.coordZ + 6, 0.87))
        detections.append((row.seriesuid, row.coordX, row.coordY, row.coordZ, 0.35))
    pd.DataFrame(
        detections, columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    ).assign(diameter_mm=5.0).to_csv(run_dir / "detections.csv", index=False)

    store = open_store(db_url)
    token = add_user(store, READER, "annotator")
    store.close()
    app = create_app(db_url, data_dir, run_dir, log_json=False)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Server(f"http://127.0.0.1:{port}", token, db_url, run_dir)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium with software WebGL2 (SwiftShader), a fresh profile, no network
    services of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not HAVE_BROWSER:
        pytest.fail(f"ACTIVECAD_REQUIRE_BROWSER=1 but this machine lacks {BROWSER_PACKAGES}")
    # Selenium Manager must never look for (or download) a browser or a driver.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # NiiVue needs WebGL2; without a GPU Chromium gives it through SwiftShader, and the
        # automatic fallback to it is deprecated, so opt in explicitly.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--window-size=1280,860",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    status = driver.execute_script("return document.getElementById('status').textContent")
    logs = [e["message"] for e in driver.get_log("browser") if "GPU stall" not in e["message"]]
    raise AssertionError(f"timed out waiting for {what}; page status: {status!r}; log: {logs}")


def _page_state(driver: Any) -> str:
    return driver.execute_script("return document.body.dataset.state")


def _geometry(driver: Any) -> dict[str, Any]:
    """NiiVue's 2D tiles (canvas pixels) and the canvas' size in canvas and CSS pixels."""
    return driver.execute_script(
        """
        const nv = globalThis.activecadViewer.nv;
        const rect = nv.canvas.getBoundingClientRect();
        return {
          width: nv.canvas.width, height: nv.canvas.height,
          left: rect.left, top: rect.top, cssWidth: rect.width, cssHeight: rect.height,
          tiles: nv.screenSlices.filter((s) => s.axCorSag <= 2).map((s) => ({
            type: s.axCorSag, ltwh: s.leftTopWidthHeight, leftTopMM: s.leftTopMM,
            fovMM: s.fovMM, plane: s.AxyzMxy,
          })),
        };
        """
    )


def _tile(geometry: dict[str, Any], slice_type: int) -> dict[str, Any]:
    # The largest: the axial view is shown twice, big (NiiVue's hero image) and small.
    tiles = [t for t in geometry["tiles"] if t["type"] == slice_type]
    return max(tiles, key=lambda t: abs(t["ltwh"][2] * t["ltwh"][3]))


def _world_to_css(geometry: dict[str, Any], slice_type: int, world: np.ndarray) -> np.ndarray:
    """Where a world point (LPS mm) shows in a tile, as page (CSS) pixels.

    NiiVue draws the NIfTI's RAS mm: (x, y, z)_RAS = (-x, -y, z)_LPS. A tile shows two RAS
    axes (axial x-y, coronal x-z, sagittal y-z) from ``leftTopMM`` over ``fovMM`` (negative
    when flipped, as in the radiological convention) across ``ltwh`` canvas pixels, bottom
    up.
    """
    ras = np.array([-world[0], -world[1], world[2]])
    a, b = {SLICE_AXIAL: (0, 1), SLICE_CORONAL: (0, 2), SLICE_SAGITTAL: (1, 2)}[slice_type]
    tile = _tile(geometry, slice_type)
    left, top, width, height = tile["ltwh"]
    fx = (ras[a] - tile["leftTopMM"][0]) / tile["fovMM"][0]
    fy = (ras[b] - tile["leftTopMM"][1]) / tile["fovMM"][1]
    if width < 0:
        left, width, fx = left + width, -width, 1 - fx
    assert 0 < fx < 1 and 0 < fy < 1, f"{world} is outside the tile"
    canvas = np.array([left + fx * width, top + (1 - fy) * height])
    scale = np.array(
        [geometry["cssWidth"] / geometry["width"], geometry["cssHeight"] / geometry["height"]]
    )
    return np.array([geometry["left"], geometry["top"]]) + canvas * scale


def _click(driver: Any, page_xy: np.ndarray) -> None:
    """A real mouse click at a page pixel (rounded to whole CSS pixels)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    builder = ActionBuilder(driver)
    x, y = (int(np.rint(v)) for v in page_xy)
    builder.pointer_action.move_to_location(x, y)
    builder.pointer_action.click()
    builder.perform()


def _grey(png: bytes, page_xy: np.ndarray) -> float:
    """Mean grey (0-255) of the 3 x 3 screenshot pixels around a page pixel."""
    import io

    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    x, y = (int(np.rint(v)) for v in page_xy)
    return float(image[y - 1 : y + 2, x - 1 : x + 2].mean())


def _findings_in_db(db_url: str, seriesuid: str) -> list[Any]:
    from sqlalchemy import select

    from activecad.store import open_store
    from activecad.store.models import Finding, Scan

    store = open_store(db_url)
    try:
        with store.session() as session:
            rows = session.execute(
                select(Finding)
                .join(Scan, Scan.id == Finding.scan_id)
                .where(Scan.seriesuid == seriesuid, Finding.author == READER)
            ).scalars()
            return [
                (r.coord_x, r.coord_y, r.coord_z, r.diameter_mm, r.status, r.annotation_id)
                for r in rows
            ]
    finally:
        store.close()


@pytest.fixture
def static_client() -> Iterator[Any]:
    """The viewer's router alone (no store): what a browser gets without a token."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from activecad.service.viewer import router

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        yield client


def test_root_and_viewer_redirect_to_the_page(static_client: Any) -> None:
    for path in ("/", "/viewer"):
        response = static_client.get(path, follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "/viewer/"
    page = static_client.get("/viewer/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'src="vendor/niivue/niivue.umd.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"


def test_static_files_with_module_types_and_the_pinned_niivue(static_client: Any) -> None:
    script = static_client.get("/viewer/viewer.js")
    # Browsers run an ES module only when it is served as JavaScript.
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert static_client.get("/viewer/viewer.css").headers["content-type"].startswith("text/css")
    bundle = static_client.get("/viewer/vendor/niivue/niivue.umd.js")
    assert bundle.status_code == 200 and '"0.69.0"' in bundle.text
    licence = static_client.get("/viewer/vendor/niivue/LICENSE")
    assert licence.status_code == 200 and "BSD 2-Clause" in licence.text


@pytest.mark.parametrize(
    "path",
    [
        "../viewer.py",
        "..%2Fviewer.py",
        "%2e%2e/app.py",
        "vendor",
        "vendor/",
        "nothing.js",
        "%2Fetc%2Fpasswd",
        "vendor/niivue/..%2F..%2F..%2Fviewer.py",
        "viewer.js%00.png",
    ],
)
def test_nothing_outside_the_static_folder_is_served(static_client: Any, path: str) -> None:
    response = static_client.get(f"/viewer/{path}", follow_redirects=False)
    assert response.status_code == 404, response.text[:200]


def test_resolve_static_refuses_escapes() -> None:
    from fastapi import HTTPException

    from activecad.service.viewer import STATIC_DIR, resolve_static

    assert resolve_static("") == STATIC_DIR / "index.html"
    for path in ("../viewer.py", "/etc/passwd", "vendor/../../app.py", "vendor\\niivue"):
        with pytest.raises(HTTPException):
            resolve_static(path)


def _body_keys(driver: Any, keys: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


@pytest.mark.slow
@needs_chromium
def test_reader_adds_and_moves_a_finding_by_clicking_and_it_is_stored_at_the_world_point(
    server: Server, browser: Any, data_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # The server's root sends the browser to the viewer, which asks for a token.
    driver.get(server.url + "/")
    assert driver.current_url == server.url + "/viewer/"
    assert _page_state(driver) == "signed-out"
    driver.find_element(By.ID, "token-input").send_keys("acd_forged")
    driver.find_element(By.ID, "login-button").click()
    _wait(driver, lambda: "401" in _text(driver, "login-error"), "the refusal")
    driver.find_element(By.ID, "token-input").send_keys(server.token)
    driver.find_element(By.ID, "login-button").click()
    _wait(driver, lambda: _page_state(driver) == "idle", "sign-in")
    assert _text(driver, "user-name") == f"{READER} (annotator)"
    # The page is usable before the queue's progress arrives (a second request).
    _wait(driver, lambda: "0 / 3 answered" in _text(driver, "progress-text"), "the progress")
    # The token lives in the tab's sessionStorage, nowhere in the URL.
    assert driver.execute_script("return sessionStorage.getItem('activecad.token')")
    assert server.token not in driver.current_url

    # n leases and opens the first scan of the query.
    _body_keys(driver, "n")
    _wait(driver, lambda: _page_state(driver) == "ready", "the scan to load")
    uid = _text(driver, "item-series")
    truth = pd.read_csv(data_dir / "annotations.csv").set_index("seriesuid")
    nodule = truth.loc[uid, ["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
    assert "0 / 3 answered · 1 leased" in _text(driver, "progress-text")
    # A reload keeps the tab's token and resumes the scan the reader holds.
    driver.refresh()
    _wait(driver, lambda: _page_state(driver) == "ready", "the held scan to reopen")
    assert _text(driver, "item-series") == uid
    probabilities = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detections .title")]
    assert probabilities == ["p = 0.87", "p = 0.35"]
    # The page opened at the top detection, the false positive off the nodule's slice.
    geometry = _geometry(driver)
    assert abs(_tile(geometry, SLICE_AXIAL)["plane"][2] - nodule[2]) > SPACING_XYZ[2]
    driver.save_screenshot(str(shots / "1-opened.png"))

    # Navigate: a click on the coronal view at the nodule brings the axial slice to it.
    _click(driver, _world_to_css(geometry, SLICE_CORONAL, nodule))
    _wait(
        driver,
        lambda: abs(_tile(_geometry(driver), SLICE_AXIAL)["plane"][2] - nodule[2]) < 0.5,
        "the axial slice to reach the nodule",
    )
    geometry = _geometry(driver)
    # The pixels agree: the nodule is drawn where the test will click, lung beside it
    # (looked at 1 mm off the nodule's centre in x and y, off the cursor's lines).
    png = driver.get_screenshot_as_png()
    inside = _world_to_css(geometry, SLICE_AXIAL, nodule + np.array([1.0, 1.0, 0.0]))
    beside = _world_to_css(geometry, SLICE_AXIAL, nodule + np.array([1.0, 8.0, 0.0]))
    assert _grey(png, inside) > BRIGHT
    assert _grey(png, beside) < DARK

    # f, then a click in the axial view, adds a finding there: first beside the nodule.
    off = nodule + np.array([5.0, -4.0, 0.0])
    _body_keys(driver, "f")
    assert driver.find_element(By.ID, "mode-banner").is_displayed()
    _click(driver, _world_to_css(geometry, SLICE_AXIAL, off))
    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#findings li"), "the finding")
    assert not driver.find_element(By.ID, "mode-banner").is_displayed()
    (stored,) = _findings_in_db(server.db_url, uid)
    assert np.all(np.abs(np.array(stored[:3]) - off) <= SPACING_XYZ), (stored, off)
    assert stored[4] == "proposed" and stored[5] is None  # not submitted yet

    # m, then a click on the nodule, moves the (selected, just added) finding onto it.
    _body_keys(driver, "m")
    assert driver.find_element(By.ID, "mode-banner").is_displayed()
    _click(driver, _world_to_css(geometry, SLICE_AXIAL, nodule))
    _wait(
        driver,
        lambda: np.all(np.abs(np.array(_findings_in_db(server.db_url, uid)[0][:2]) - off[:2]) > 1),
        "the move",
    )
    # 2 switches to the mediastinum window (W350/L50: -125 to 225 HU).
    _body_keys(driver, "2")
    window = driver.execute_script(
        "const v = globalThis.activecadViewer.nv.volumes[0]; return [v.cal_min, v.cal_max]"
    )
    assert window == [-125, 225]
    _body_keys(driver, "1")
    driver.save_screenshot(str(shots / "2-finding.png"))

    # a submits the answer; the page moves on to the next scan of the query.
    _body_keys(driver, "a")
    _wait(
        driver,
        lambda: driver.execute_script("return document.body.dataset.lastSubmitted") == uid,
        "submission",
    )
    _wait(driver, lambda: _page_state(driver) == "ready", "the next scan")
    assert "1 / 3 answered · 1 leased" in _text(driver, "progress-text")
    second = _text(driver, "item-series")
    assert second != uid

    (stored,) = _findings_in_db(server.db_url, uid)
    x, y, z, diameter, status, annotation = stored
    assert status == "proposed"  # until a reviewer accepts it
    assert annotation is not None  # joined the item's answer
    assert diameter == 6.0  # the page's default diameter
    error_voxels = np.abs(np.array([x, y, z]) - nodule) / SPACING_XYZ
    assert np.all(error_voxels <= 1.0), f"finding at {(x, y, z)}, nodule at {nodule}"
    # A sign error in x or y would land twice the coordinate away; the phantom keeps its
    # nodules far enough from 0 that such an error is many voxels.
    assert np.all(np.abs(nodule[:2]) > 3 * SPACING_XYZ[:2])

    # x answers the second scan "no nodule": answered, and no finding of the reader in it.
    _body_keys(driver, "x")
    _wait(
        driver,
        lambda: "2 / 3 answered" in _text(driver, "progress-text"),
        "the no-nodule answer",
    )
    assert _findings_in_db(server.db_url, second) == []
    driver.save_screenshot(str(shots / "3-next.png"))
    print(f"screenshots: {shots}")

    # Nothing went wrong in the page: no script error, no refused request, no CSP violation
    # (the refused forged token at sign-in is the only error the browser logged).
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 1 and "401" in errors[0], errors
