"""Running an experiment as parts: each part is one ``activecad al run`` folder under the work
folder, continued with ``--resume`` when it exists, its wall time logged to timings.jsonl.
Shared by benchmarks/active.py (scans) and benchmarks/acft.py (candidates)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def committed_complete(results: Path, part: str, config: Path) -> bool:
    """Whether ``results/part`` holds every strategy and seed of ``config`` up to its last
    cycle (a part finished on an earlier machine)."""
    import yaml

    metrics = results / part / "metrics.jsonl"
    if not metrics.is_file():
        return False
    spec = yaml.safe_load(config.read_text())
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    done = {(r["strategy"], r["seed"]) for r in rows if r["cycle"] == spec["cycles"] - 1}
    return all((s, seed) in done for s in spec["strategies"] for seed in spec["seeds"])


def run_part(work: Path, part: str, config: Path, results: Path) -> None:
    """Run (or continue) the loop of ``config`` in ``work/part``; -v keeps a traceback.

    A part with no work folder whose finished results are committed under ``results`` is
    skipped: work folders do not outlive a machine, and rerunning would cost hours.
    """
    out = work / part
    if not (out / "loop.yaml").exists() and committed_complete(results, part, config):
        print(f"{part}: finished on an earlier machine ({results / part}); skipped", flush=True)
        return
    command = [sys.executable, "-m", "activecad", "-v", "al", "run", str(config), "--out", str(out)]
    if (out / "loop.yaml").exists():
        command.append("--resume")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    entry = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "part": part,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with (work / "timings.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def part_folder(work: Path, results: Path, part: str) -> Path | None:
    """Where a part's finished cycles are: the work folder while it holds them, else the copy
    committed under ``results`` by an earlier session (work folders do not outlive a machine)."""
    for folder in (work / part, results / part):
        if (folder / "metrics.jsonl").is_file() and (folder / "metrics.jsonl").read_text().strip():
            return folder
    return None


def keep_results(work: Path, results: Path, part: str, names: tuple[str, ...]) -> None:
    """Copy a part's result files from the work folder into ``results``, and add the work
    folder's timings to the committed ones (each line once)."""
    for name in names:
        if (work / part / name).is_file():
            (results / part).mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / part / name, results / part / name)
    lines: list[str] = []
    for timings in (results / "timings.jsonl", work / "timings.jsonl"):
        if timings.is_file():
            lines += [line for line in timings.read_text().splitlines() if line.strip()]
    if lines:
        (results / "timings.jsonl").write_text("\n".join(dict.fromkeys(lines)) + "\n")
