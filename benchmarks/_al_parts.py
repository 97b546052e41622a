"""Running an experiment as parts: each part is one ``activecad al run`` folder under the work
folder, continued with ``--resume`` when it exists, its wall time logged to timings.jsonl.
Shared by benchmarks/active.py (scans) and benchmarks/acft.py (candidates)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_part(work: Path, part: str, config: Path) -> None:
    """Run (or continue) the loop of ``config`` in ``work/part``; -v keeps a traceback."""
    out = work / part
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
