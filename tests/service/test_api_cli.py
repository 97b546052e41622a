"""``activecad users add|list|revoke`` and ``activecad serve`` (a real uvicorn process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.service.conftest import SCANS


def test_users_add_list_revoke(run_cli, run_dir: Path, db_url: str) -> None:
    res = run_cli("users", "add", "alice", "--role", "reviewer", "--db", db_url)
    assert res.exit_code == 0, res.stderr
    token = res.stdout.strip()
    assert token.startswith("acd_") and len(token) > 40
    res = run_cli("users", "add", "bob", "--role", "annotator", "--db", db_url, "--json")
    assert json.loads(res.stdout)["role"] == "annotator"
    listed = json.loads(run_cli("users", "list", "--db", db_url, "--json").stdout)
    assert [(u["name"], u["role"], u["tokens"]) for u in listed] == [
        ("alice", "reviewer", 1),
        ("bob", "annotator", 1),
    ]
    res = run_cli("users", "revoke", "alice", "--db", db_url, "--json")
    assert json.loads(res.stdout) == {"name": "alice", "revoked": 1}
    listed = json.loads(run_cli("users", "list", "--db", db_url, "--json").stdout)
    assert listed[0]["tokens"] == 0


def test_users_bad_input_is_one_line(run_cli, run_dir: Path, db_url: str, tmp_path: Path) -> None:
    db = db_url
    for args, words in (
        (["add", "alice", "--role", "boss", "--db", db], "unknown role"),
        (["add", "../alice", "--role", "annotator", "--db", db], "not a valid user name"),
        (["revoke", "nobody", "--db", db], "no such user"),
        (["list", "--db", tmp_path / "none.db"], "does not exist"),
    ):
        res = run_cli("users", *args)
        assert res.exit_code == 1, (args, res.stderr)
        assert words in res.stderr and "Traceback" not in res.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_uvicorn_with_json_logs(run_cli, data_dir: Path, tmp_path: Path) -> None:
    from activecad.active.run import create_run, propose_query

    with create_run(tmp_path / "run", list(SCANS)) as run:
        propose_query(run, None, budget=2, seed=0)
    db = tmp_path / "run" / "activecad.db"
    token = run_cli("users", "add", "ann", "--role", "annotator", "--db", db).stdout.strip()
    port = _free_port()
    env = {**os.environ, "ACTIVECAD_DB": str(db)}  # --db from the environment
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "activecad",
            "serve",
            "--data",
            str(data_dir),
            "--run",
            str(tmp_path / "run"),
            "--port",
            str(port),
            "--lease-minutes",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/me", headers=headers).json()["name"] == "ann"
        lease = httpx.post(f"{url}/api/queue/next", headers=headers).json()
        assert lease["rank"] == 1 and lease["seriesuid"] in SCANS
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e.get("msg") == "serving" for e in lines)
    assert any(e.get("path") == "/api/queue/next" and e.get("user") == "ann" for e in lines)
    assert token not in err
