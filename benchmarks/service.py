"""Benchmark: the annotation service under load and faults, on loopback, with PostgreSQL.

Run: ``.venv/bin/python benchmarks/service.py [--annotators 20] [--submissions 500]
[--out benchmarks/results/service.json]``

What it does (bounded by ``--deadline`` seconds; it stops by itself and cleans up):

1. starts a PostgreSQL server (pgserver's wheel) in a temporary folder, writes a LUNA16-style
   folder of tiny scans (one per queued item), creates a run on that server whose cycle 0
   queries every scan, and adds the users with their tokens;
2. starts ``activecad serve`` (uvicorn, one process) on 127.0.0.1;
3. tries bad inputs (malformed JSON, a finding outside the scan, an unknown scan, traversal
   paths, an oversized body, a forged token) and checks each status and that nothing was
   stored;
4. runs ``--annotators`` threads, each leasing, marking half of its items with a finding,
   and submitting, until ``--submissions`` items are answered; when half are acknowledged,
   the server is killed with SIGKILL and started again, and the clients retry;
5. checks in the database that every acknowledged submission is stored exactly as
   acknowledged (0 lost) and that no item was answered twice (0 duplicated), and reports
   p50/p95 latencies of the successful requests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from activecad.active.run import create_run, propose_query
from activecad.io.ct import write_scan
from activecad.io.scan import Scan
from activecad.io.tables import write_table
from activecad.service.auth import add_user
from activecad.store import open_store

SHAPE = (8, 16, 16)
SPACING = (2.0, 2.0, 2.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_data(root: Path, n: int) -> list[str]:
    (root / "ct").mkdir(parents=True)
    array = np.full(SHAPE, -850.0, dtype=np.float32)
    array[3:5, 7:9, 7:9] = 40.0
    uids = [f"1.2.826.0.1.3680043.77.{k + 1}" for k in range(n)]
    rows = []
    for uid in uids:
        write_scan(
            Scan(array=array, spacing=SPACING, origin=(0.0, 0.0, 0.0), seriesuid=uid),
            root / "ct" / f"{uid}.mhd",
        )
        rows.append(
            {"seriesuid": uid, "coordX": 16.0, "coordY": 16.0, "coordZ": 8.0, "diameter_mm": 4.0}
        )
    write_table(pd.DataFrame(rows), root / "annotations.csv", "annotations")
    return uids


class Server:
    """``activecad serve`` as a child process that can be killed and started again."""

    def __init__(self, db_url: str, data: Path, run: Path, port: int, log: Path):
        self.cmd = [
            sys.executable,
            "-m",
            "activecad",
            "serve",
            "--db",
            db_url,
            "--data",
            str(data),
            "--run",
            str(run),
            "--port",
            str(port),
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        began = time.perf_counter()
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(self.cmd, stdout=handle, stderr=handle)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: see {self.log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - began
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def _counts(db_url: str) -> dict[str, int]:
    store = open_store(db_url, migrate=False)
    try:
        with store.engine.connect() as connection:
            return {
                table: int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar())
                for table in ("findings", "annotations", "audit_events")
            }
    finally:
        store.close()


def bad_inputs(server: Server, token: str, db_url: str) -> dict[str, Any]:
    """Each bad request, its status, the status expected, and whether anything was stored."""
    auth = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=server.url, timeout=30)
    lease = client.post("/api/queue/next", headers=auth).json()
    before = _counts(db_url)
    good = {"lease_id": lease["lease_id"], "x": 16.0, "y": 16.0, "z": 8.0, "diameter_mm": 4.0}
    cases: list[tuple[str, int, httpx.Response]] = []

    def case(name: str, expected: int, response: httpx.Response) -> None:
        cases.append((name, expected, response))

    json_header = {**auth, "Content-Type": "application/json"}
    case(
        "malformed JSON",
        422,
        client.post("/api/findings", content=b'{"lease_id": 1, "x": ', headers=json_header),
    )
    case(
        "finding outside the scan",
        422,
        client.post("/api/findings", json={**good, "z": 900.0}, headers=auth),
    )
    case(
        "finding with NaN",
        422,
        client.post(
            "/api/findings",
            content=json.dumps(good).replace("16.0", "NaN", 1).encode(),
            headers=json_header,
        ),
    )
    case("unknown field", 422, client.post("/api/findings", json={**good, "evil": 1}, headers=auth))
    case("unknown scan", 404, client.get("/api/scans/1.2.3.4.5/volume.nii.gz", headers=auth))
    for path in (
        "/api/scans/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/scans/..%2Fannotations.csv/volume.nii.gz",
        "/api/scans/%2Fetc%2Fpasswd/slices/axial/0.png",
    ):
        case(f"traversal {path}", 404, client.get(path, headers=auth))
    case(
        "oversized body (100 kB)",
        413,
        client.post("/api/findings", json={**good, "pad": "x" * 100_000}, headers=auth),
    )
    forged = {"Authorization": "Bearer acd_" + "Q" * 43}
    case("forged token", 401, client.post("/api/findings", json=good, headers=forged))
    case("no token", 401, client.post("/api/queue/next"))
    after = _counts(db_url)
    client.post(f"/api/leases/{lease['lease_id']}/release", headers=auth)
    client.close()
    results = [
        {
            "case": name,
            "expected": expected,
            "status": r.status_code,
            "ok": r.status_code == expected,
        }
        for name, expected, r in cases
    ]
    return {
        "cases": results,
        "all_refused_as_expected": all(r["ok"] for r in results),
        "nothing_stored": before == after,
    }


class Annotator(threading.Thread):
    """Leases, marks every other item with a finding at the scan's centre, submits; retries
    through connection errors (the server being killed)."""

    def __init__(self, name: str, token: str, url: str, shared: dict[str, Any]):
        super().__init__(daemon=True)
        self.name_ = name
        self.headers = {"Authorization": f"Bearer {token}"}
        self.url = url
        self.shared = shared
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.acked: list[dict[str, Any]] = []
        self.errors: dict[str, int] = defaultdict(int)

    def _call(
        self, client: httpx.Client, kind: str, method: str, path: str, body: Any = None
    ) -> httpx.Response | None:
        began = time.perf_counter()
        try:
            response = client.request(method, path, json=body, headers=self.headers)
        except httpx.TransportError:
            self.errors["connection"] += 1
            time.sleep(0.2)
            return None
        if response.status_code < 300:
            self.latency[kind].append(time.perf_counter() - began)
        else:
            self.errors[f"{kind} {response.status_code}"] += 1
        return response

    def _has_finding(self, client: httpx.Client, info: dict[str, Any]) -> bool | None:
        """Whether a finding of this lease is stored already (its response may have been
        lost); None when the server did not answer."""
        listed = self._call(client, "list", "GET", f"/api/findings?seriesuid={info['seriesuid']}")
        if listed is None or listed.status_code != 200:
            return None
        return any(f["lease_id"] == info["lease_id"] for f in listed.json())

    def run(self) -> None:
        shared = self.shared
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while time.monotonic() < shared["deadline"]:
                with shared["lock"]:
                    if shared["acked"] >= shared["target"]:
                        return
                lease = self._call(client, "next", "POST", "/api/queue/next")
                if lease is None:
                    continue
                if lease.status_code == 204:
                    return
                if lease.status_code != 200:
                    time.sleep(0.05)
                    continue
                info = lease.json()
                # Every other item gets a finding; decided by the item, so that a retry after
                # a lost response answers the item the same way.
                mark = int(info["item_key"].rsplit(".", 1)[1]) % 2 == 0
                has = self._has_finding(client, info) if mark else False
                if has is None:
                    continue  # the next lease is this one again
                if mark and not has:
                    made = self._call(
                        client,
                        "finding",
                        "POST",
                        "/api/findings",
                        {
                            "lease_id": info["lease_id"],
                            "x": 16.0,
                            "y": 16.0,
                            "z": 8.0,
                            "diameter_mm": 4.0,
                            "malignancy": 3,
                        },
                    )
                    if made is None or made.status_code != 201:
                        continue  # the next lease is this one again
                submitted = self._call(
                    client,
                    "submit",
                    "POST",
                    f"/api/leases/{info['lease_id']}/submit",
                    {"no_nodule": not mark},
                )
                if submitted is None or submitted.status_code != 200:
                    continue
                answer = submitted.json()
                self.acked.append(
                    {
                        "item": info["item_key"],
                        "annotator": self.name_,
                        "n_findings": answer["n_findings"],
                        "annotation_id": answer["annotation_id"],
                    }
                )
                with shared["lock"]:
                    shared["acked"] += 1


def _percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--submissions", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds, in all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/service.json"))
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.deadline

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver

    tmp = Path(tempfile.mkdtemp(prefix="activecad-bench-service-"))
    os.chmod(tmp, 0o755)
    pg = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    server: Server | None = None
    try:
        socket_dir = pg.get_uri().split("host=")[1].split("&")[0]
        db_url = f"postgresql+psycopg://postgres:@/postgres?host={socket_dir}"
        uids = _write_data(tmp / "data", args.submissions)
        with create_run(tmp / "run", uids, db_url=db_url) as run:
            propose_query(run, None, heuristic="random", budget=len(uids), seed=0)
        store = open_store(db_url)
        tokens = {
            f"reader{k:02d}": add_user(store, f"reader{k:02d}", "annotator")
            for k in range(args.annotators)
        }
        prober = add_user(store, "prober", "annotator")
        store.close()
        server = Server(db_url, tmp / "data", tmp / "run", _free_port(), tmp / "server.log")
        first_start = server.start()
        refused = bad_inputs(server, prober, db_url)

        shared: dict[str, Any] = {
            "lock": threading.Lock(),
            "acked": 0,
            "target": args.submissions,
            "deadline": deadline,
        }
        workers = [Annotator(name, token, server.url, shared) for name, token in tokens.items()]
        load_began = time.perf_counter()
        for worker in workers:
            worker.start()
        while shared["acked"] < args.submissions // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        acked_at_kill = shared["acked"]
        server.kill()
        killed_at = time.perf_counter()
        restart_seconds = server.start()
        for worker in workers:
            worker.join(timeout=max(deadline - time.monotonic(), 1.0))
        load_seconds = time.perf_counter() - load_began
        server.stop()

        acked = [a for w in workers for a in w.acked]
        store = open_store(db_url, migrate=False)
        with store.engine.connect() as connection:
            stored = {
                (item, annotator): (int(n), int(aid))
                for item, annotator, n, aid in connection.exec_driver_sql(
                    "SELECT i.key, a.annotator, a.n_findings, a.id FROM annotations a "
                    "JOIN items i ON i.id = a.item_id"
                )
            }
            per_item = connection.exec_driver_sql(
                "SELECT count(*) FROM (SELECT item_id FROM annotations GROUP BY item_id "
                "HAVING count(*) > 1) t"
            ).scalar()
            findings_of_answers = connection.exec_driver_sql(
                "SELECT count(*) FROM findings WHERE annotation_id IS NOT NULL"
            ).scalar()
        store.close()
        lost = [
            a
            for a in acked
            if stored.get((a["item"], a["annotator"])) != (a["n_findings"], a["annotation_id"])
        ]
        acked_items = [a["item"] for a in acked]
        matched = {(a["item"], a["annotator"]) for a in acked}
        latency: dict[str, list[float]] = defaultdict(list)
        errors: dict[str, int] = defaultdict(int)
        for worker in workers:
            for kind, values in worker.latency.items():
                latency[kind] += values
            for kind, count in worker.errors.items():
                errors[kind] += count
        result = {
            "what": "activecad serve (uvicorn, 1 process) + PostgreSQL (pgserver) on loopback",
            "command": "python benchmarks/service.py "
            f"--annotators {args.annotators} --submissions {args.submissions}",
            "annotators": args.annotators,
            "target_submissions": args.submissions,
            "acknowledged_submissions": len(acked),
            "stored_annotations": len(stored),
            "lost_acknowledged": len(lost),
            # Committed, but the reply died with the server: the client never counted them.
            "stored_unacknowledged": len(set(stored) - matched),
            "duplicated_items": int(per_item or 0) + (len(acked_items) - len(set(acked_items))),
            "findings_in_answers": int(findings_of_answers or 0),
            "expected_findings_in_answers": sum(a["n_findings"] for a in acked),
            "fault": {
                "signal": "SIGKILL",
                "acknowledged_before_kill": acked_at_kill,
                "restart_seconds": round(restart_seconds, 2),
                "killed_after_load_seconds": round(killed_at - load_began, 2),
            },
            "load_seconds": round(load_seconds, 2),
            "throughput_submissions_per_s": round(len(acked) / load_seconds, 1),
            "latency": {kind: _percentiles(v) for kind, v in sorted(latency.items())},
            "client_errors": dict(sorted(errors.items())),
            "bad_inputs": refused,
            "server_first_start_seconds": round(first_start, 2),
            "finished_in_seconds": round(time.monotonic() - started, 1),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
    finally:
        if server is not None:
            server.kill()
        pg.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "acknowledged_submissions",
                    "stored_annotations",
                    "lost_acknowledged",
                    "duplicated_items",
                    "latency",
                    "bad_inputs",
                )
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
