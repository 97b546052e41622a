"""``activecad al report``: learning curves, ALC, labels saved and the size-vs-loss scatter.

Reads one or more loop folders (``activecad al run --out``; an experiment may be split over
several folders, e.g. one per seed, so they can run side by side) and writes into ``out``:

* ``curves.png``: CPM and sensitivity at 4 FPs per scan against % of the pool labelled and
  against simulated annotation minutes; per strategy the mean over seeds with its 95%
  Student-t interval (shaded; needs two seeds) and each seed as a thin line.
* ``scatter.png``: for the scans each scoring strategy selected, the diameter of their
  largest nodule (0: no nodule) against the loss the detector predicted for them (l_scan) when
  they were chosen, coloured by cycle (Liu, Cao & Tian, "Deep Active Learning for Effective
  Pulmonary Nodule Detection", MICCAI 2020, Fig. 4).
* ``report.json`` and ``report.md``: per strategy the seeds, the final metrics, the area under
  the learning curve (ALC, normalised to the metric's scale; Zhou et al., Medical Image
  Analysis 2021) of CPM and of sensitivity, and the labels needed to reach a target CPM against
  random's (annotation saved).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from activecad.errors import InputError
from activecad.metrics import annotation_saved, area_under_learning_curve, summarize_over_seeds

__all__ = ["Curves", "read_curves", "write_report"]

SCAN_METRICS = ("cpm", "sens_at_4")
CANDIDATE_METRICS = ("auc",)
UNIT = (0.0, 1.0)  # every curve metric (CPM, sensitivity, AUC) and its ALC lies in it
_LABELS = {
    "cpm": "CPM",
    "sens_at_4": "sensitivity at 4 FPs/scan",
    "auc": "AUC of the test candidates",
}


@dataclass(frozen=True)
class Curves:
    """The learning curves of an experiment.

    Attributes:
        pool_size: items in the pool (the denominator of "% labelled").
        labelled: (P,) labelled items after each cycle (the same for every run).
        runs: strategy -> seed -> DataFrame indexed by cycle with ``labelled``, ``minutes``,
            ``cpm``, ``sens_at_4``.
        folders: strategy -> seed -> the loop folder it came from.
        metrics: the test metrics the runs report: CPM and sensitivity at 4 FPs per scan for
            scan-level loops, the AUC of the test candidates for candidate-level ones; the
            first is the one targets and annotation saved are measured on.
        baseline: the strategy the others are compared with (``random``; ``RFT`` for
            ACFT's learning strategies).
    """

    pool_size: int
    labelled: np.ndarray
    runs: dict[str, dict[int, pd.DataFrame]]
    folders: dict[str, dict[int, Path]]
    metrics: tuple[str, ...] = SCAN_METRICS
    baseline: str = "random"


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the metrics: {exc}", path=path) from exc


def read_curves(folders: list[Path]) -> Curves:
    """Collect every (strategy, seed) of the loop folders; the runs must share one pool.

    Raises:
        InputError: a folder is not a loop folder, the folders have different pools or
            data, a (strategy, seed) appears twice, or no cycle has test metrics.
    """
    runs: dict[str, dict[int, pd.DataFrame]] = defaultdict(dict)
    where: dict[str, dict[int, Path]] = defaultdict(dict)
    pool: list[str] | None = None
    data: str | None = None
    for folder in folders:
        if not folder.exists():
            raise InputError("no such folder", path=folder, fix="check the path")
        if not (folder / "loop.yaml").is_file() or not (folder / "split.json").is_file():
            raise InputError(
                "not a loop folder (no loop.yaml / split.json)",
                path=folder,
                fix="give folders written by 'activecad al run --out'",
            )
        split = json.loads((folder / "split.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((folder / "loop.yaml").read_text(encoding="utf-8"))
        if pool is None:
            pool, data = split["pool"], config["data"]
        elif split["pool"] != pool or config["data"] != data:
            raise InputError(
                "this loop has another pool or data folder than the first one",
                path=folder,
                fix="report loops of one experiment together",
            )
        metrics_path = folder / "metrics.jsonl"
        rows = _read_jsonl(metrics_path) if metrics_path.exists() else []
        if not rows:
            continue
        for (strategy, seed), group in pd.DataFrame(rows).groupby(["strategy", "seed"]):
            if seed in runs[strategy]:
                raise InputError(
                    f"{strategy} seed {seed} is in two of the folders",
                    path=folder,
                    fix="report each run once",
                )
            runs[strategy][int(seed)] = group.set_index("cycle").sort_index()
            where[strategy][int(seed)] = folder
    if pool is None or not runs:
        raise InputError("no finished cycle in these folders", fix="run 'activecad al run' first")
    counts = [frame["labelled"].to_numpy() for seeds in runs.values() for frame in seeds.values()]
    longest = max(counts, key=len)
    if any(not np.array_equal(c, longest[: len(c)]) for c in counts):
        raise InputError(
            "the runs labelled different numbers of scans per cycle",
            fix="report runs of one loop configuration together",
        )
    columns = {c for seeds in runs.values() for frame in seeds.values() for c in frame.columns}
    metrics = SCAN_METRICS if "cpm" in columns or "auc" not in columns else CANDIDATE_METRICS
    baseline = "RFT" if "RFT" in runs else "random"
    return Curves(len(pool), longest, dict(runs), dict(where), metrics, baseline)


def _matrix(curves: Curves, strategy: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(cycles,) labelled counts and (seeds, cycles) values over the cycles every seed has."""
    frames = [curves.runs[strategy][s] for s in sorted(curves.runs[strategy])]
    n = min(len(f) for f in frames)
    if any(metric not in f.columns for f in frames):
        return curves.labelled[:n], np.full((len(frames), n), np.nan)
    values = np.array([f[metric].to_numpy(dtype=float)[:n] for f in frames])
    return curves.labelled[:n], values


def _minutes(curves: Curves, strategy: str) -> np.ndarray:
    frames = [curves.runs[strategy][s] for s in sorted(curves.runs[strategy])]
    n = min(len(f) for f in frames)
    if any("minutes" not in f.columns for f in frames):
        return np.full((len(frames), n), np.nan)
    return np.array([f["minutes"].to_numpy(dtype=float)[:n] for f in frames])


def summarise(
    curves: Curves, *, target_fraction: float = 0.95, full_cpm: float | None = None
) -> dict[str, object]:
    """Numbers of the report (see the module docs); JSON-ready (NaN as None)."""
    main, baseline = curves.metrics[0], curves.baseline
    reference = full_cpm
    reference_note = f"full-data {_LABELS[main]} given by the user"
    if reference is None and baseline in curves.runs:
        _, base_values = _matrix(curves, baseline, main)
        reference = float(np.nanmean(base_values[:, -1]))
        reference_note = (
            f"{baseline}'s mean {_LABELS[main]} at its last cycle (no full-data value given)"
        )
    target = None if reference is None else target_fraction * reference
    strategies: dict[str, object] = {}
    for strategy in sorted(curves.runs):
        entry: dict[str, object] = {"seeds": sorted(curves.runs[strategy])}
        for metric in curves.metrics:
            x, y = _matrix(curves, strategy, metric)
            percent = 100.0 * x / curves.pool_size
            final = summarize_over_seeds(y[:, -1], bounds=UNIT)
            alc = (
                summarize_over_seeds(area_under_learning_curve(percent, y), bounds=UNIT)
                if len(x) >= 2 and np.isfinite(y).all()
                else None
            )
            entry[metric] = {
                "percent_labelled": percent.tolist(),
                "mean": np.nanmean(y, axis=0).tolist() if np.isfinite(y).any() else None,
                "final": final.__dict__,
                "alc": None if alc is None else alc.__dict__,
            }
        if target is not None and strategy != baseline and baseline in curves.runs:
            x, y = _matrix(curves, strategy, main)
            xr, yr = _matrix(curves, baseline, main)
            if len(x) >= 2 and len(xr) >= 2:
                saved = annotation_saved(x, y, xr, np.nanmean(yr, axis=0), target=target)
                entry["labels_to_target"] = {
                    "per_seed": saved.labels_a.tolist(),
                    "baseline": float(saved.labels_b[0]),
                    "saved": summarize_over_seeds(saved.saved).__dict__,
                }
        strategies[strategy] = entry
    payload = {
        "pool_size": curves.pool_size,
        "labelled": curves.labelled.tolist(),
        "metrics": list(curves.metrics),
        "baseline": baseline,
        "target": {
            "fraction": target_fraction,
            "reference": reference,
            "metric": main,
            "value": target,
            "reference_is": reference_note,
        },
        "strategies": strategies,
    }
    return _jsonable(payload)  # type: ignore[return-value]


def _jsonable(value: object) -> object:
    """``value`` with numpy scalars as Python numbers and NaN as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot_curves(curves: Curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(curves.metrics)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), sharey="row", squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, strategy in enumerate(sorted(curves.runs)):
        colour = colours[i % len(colours)]
        minutes = _minutes(curves, strategy)
        for row, metric in enumerate(curves.metrics):
            x, y = _matrix(curves, strategy, metric)
            if not np.isfinite(y).any():
                continue
            for col, xs in enumerate((np.tile(100.0 * x / curves.pool_size, (len(y), 1)), minutes)):
                ax = axes[row, col]
                for seed_x, seed_y in zip(xs, y, strict=True):
                    ax.plot(seed_x, seed_y, color=colour, alpha=0.25, linewidth=0.8)
                mean_x = np.nanmean(xs, axis=0)
                summaries = [summarize_over_seeds(y[:, j], bounds=UNIT) for j in range(y.shape[1])]
                mean = [s.mean for s in summaries]
                label = f"{strategy} ({len(y)} seeds)"
                ax.plot(mean_x, mean, color=colour, linewidth=2, marker="o", label=label)
                if len(y) >= 2:
                    ax.fill_between(
                        mean_x,
                        [s.lower for s in summaries],
                        [s.upper for s in summaries],
                        color=colour,
                        alpha=0.15,
                    )
    for row, metric in enumerate(curves.metrics):
        axes[row, 0].set_ylabel(_LABELS[metric])
        axes[row, 0].set_xlabel("% of the pool labelled")
        axes[row, 1].set_xlabel("simulated annotation minutes")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Learning curves on the held-out test split (mean, 95% t-interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _selected_sizes(curves: Curves) -> pd.DataFrame:
    """Selected scans of the scoring strategies with their l_scan and largest nodule (mm)."""
    rows = []
    annotations: pd.DataFrame | None = None
    for strategy, seeds in curves.runs.items():
        for seed, folder in curves.folders[strategy].items():
            run_dir = folder / "runs" / f"{strategy}-seed{seed}"
            if not (run_dir / "selections.csv").is_file():
                continue  # a loop folder's results copied without its runs (no pool scores)
            if annotations is None:
                from activecad.data.folders import read_luna_folder

                config = yaml.safe_load((folder / "loop.yaml").read_text(encoding="utf-8"))
                annotations = read_luna_folder(config["data"]).annotations
            with (run_dir / "selections.csv").open(newline="", encoding="utf-8") as handle:
                selected = list(csv.DictReader(handle))
            for cycle in seeds[seed].index:
                scores_path = run_dir / "cycles" / str(cycle) / "scores.csv"
                if not scores_path.is_file():
                    continue
                scores = pd.read_csv(scores_path).set_index("item")
                for row in selected:
                    if int(row["cycle"]) == int(cycle) and row["item"] in scores.index:
                        rows.append(
                            (
                                strategy,
                                seed,
                                int(cycle),
                                row["item"],
                                float(scores.loc[row["item"], "l_scan"]),
                            )
                        )
    table = pd.DataFrame(rows, columns=["strategy", "seed", "cycle", "item", "l_scan"])
    if annotations is not None and len(table):
        largest = annotations.groupby("seriesuid")["diameter_mm"].max()
        table["diameter_mm"] = table["item"].map(largest).fillna(0.0)
    else:
        table["diameter_mm"] = []
    return table


def _plot_scatter(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = sorted(table["strategy"].unique())
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.5 * len(strategies), 4), squeeze=False)
    for ax, strategy in zip(axes[0], strategies, strict=True):
        part = table[table["strategy"] == strategy]
        points = ax.scatter(
            part["diameter_mm"], part["l_scan"], c=part["cycle"], cmap="viridis", s=18, alpha=0.8
        )
        ax.set_title(strategy)
        ax.set_xlabel("largest nodule diameter, mm (0: none)")
        ax.grid(alpha=0.3)
        fig.colorbar(points, ax=ax, label="cycle")
    axes[0, 0].set_ylabel("predicted loss l_scan when selected")
    fig.suptitle("Selected scans: nodule size against predicted loss (Liu et al. 2020, Fig. 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(summary: dict[str, object] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    mean, lower, upper = summary["mean"], summary.get("lower"), summary.get("upper")
    if lower is None or (isinstance(lower, float) and math.isnan(lower)):
        return f"{mean:.3f}"
    return f"{mean:.3f} ({lower:.3f}–{upper:.3f})"


def _markdown(summary: dict[str, object], scatter: bool) -> str:
    target = summary["target"]
    metrics, baseline = summary["metrics"], summary["baseline"]
    main = _LABELS[metrics[0]]
    header = " | ".join(
        [f"final {_LABELS[m]}" for m in metrics] + [f"ALC ({_LABELS[m]})" for m in metrics]
    )
    lines = [
        "# Active-learning report",
        "",
        f"Pool: {summary['pool_size']} items; labelled after each cycle: "
        f"{', '.join(map(str, summary['labelled']))}.",
        "Mean over seeds with a 95% Student-t interval (a single seed has none).",
        "",
        f"| strategy | seeds | {header} | labels to target {main} ({baseline}) |",
        "|---|---|" + "---|" * (2 * len(metrics)) + "---|",
    ]
    for strategy, entry in summary["strategies"].items():
        reach = entry.get("labels_to_target")
        reach_text = "–"
        if reach:
            per_seed = ", ".join("never" if v is None else f"{v:.0f}" for v in reach["per_seed"])
            reach_text = f"{per_seed} ({baseline} {reach['baseline']})"
        cells = [_fmt(entry[m]["final"]) for m in metrics] + [
            _fmt(entry[m]["alc"]) for m in metrics
        ]
        lines.append(f"| {strategy} | {len(entry['seeds'])} | {' | '.join(cells)} | {reach_text} |")
    if target["value"] is not None:
        lines += [
            "",
            f"Target {main} {target['value']:.3f} = {target['fraction']:.2f} x "
            f"{target['reference']:.3f} ({target['reference_is']}); "
            "'never' means the run did not reach it.",
        ]
    lines += ["", "![learning curves](curves.png)"]
    if scatter:
        lines += ["", "![nodule size against predicted loss](scatter.png)"]
    return "\n".join(lines) + "\n"


def write_report(
    folders: list[Path],
    out: Path,
    *,
    target_fraction: float = 0.95,
    full_cpm: float | None = None,
) -> dict[str, object]:
    """Write curves.png, scatter.png (when a strategy scored the pool), report.json and
    report.md into ``out``; returns the numbers of report.json."""
    curves = read_curves(folders)
    summary = summarise(curves, target_fraction=target_fraction, full_cpm=full_cpm)
    out.mkdir(parents=True, exist_ok=True)
    _plot_curves(curves, out / "curves.png")
    # The size-vs-predicted-loss scatter is about scans (candidates have no l_scan).
    table = _selected_sizes(curves) if curves.metrics == SCAN_METRICS else pd.DataFrame()
    if len(table):
        _plot_scatter(table, out / "scatter.png")
        table.to_csv(out / "selected.csv", index=False)
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(summary, bool(len(table))), encoding="utf-8")
    return summary
