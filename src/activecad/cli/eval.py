"""``activecad eval``: FROC/CPM the LUNA16 way and ROC/AUC with DeLong, from CSV files.

This module is the only part of the evaluation that knows file formats: it reads the
tables, validates them with messages that name the file, the column and the line, and hands
plain arrays to :mod:`activecad.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from activecad.errors import InputError
from activecad.io.tables import read_table
from activecad.metrics import (
    FrocBootstrap,
    delong_interval,
    delong_test,
    luna16_summary,
    match_luna16,
    roc_curve,
    sensitivity_specificity_score,
    youden_threshold,
)

_WORLD = ["coordX", "coordY", "coordZ"]

eval_app = typer.Typer(
    help="Evaluate detections (FROC/CPM, LUNA16 rules) and scores (ROC/AUC, DeLong).",
    no_args_is_help=True,
)
_out = Console()
_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command group to ``app``."""
    app.add_typer(eval_app, name="eval")


def _check_finite_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = df[column].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"column '{column}' holds {values[first]} at line {first + 2}",
            path=path,
            fix=f"Give every '{column}' a finite number",
        )
    return values


def _read_seriesuids(path: Path) -> np.ndarray:
    """Read a LUNA16 ``seriesuids.csv``: one UID per line, with or without a header."""
    if not path.is_file():
        raise InputError("no such file", path=path, fix="Check the path")
    try:
        df = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True)
    except pd.errors.EmptyDataError as exc:
        raise InputError("the file is empty", path=path, fix="List one seriesuid per line") from exc
    except pd.errors.ParserError as exc:
        raise InputError(
            "not a readable CSV", path=path, fix="List one seriesuid per line"
        ) from exc
    uids = df.iloc[:, 0].str.strip()
    if len(uids) and uids.iloc[0] == "seriesuid":
        uids = uids.iloc[1:]
    if uids.isna().any() or uids.eq("").any():
        raise InputError("a line has no seriesuid", path=path, fix="Remove empty lines")
    duplicated = uids[uids.duplicated()]
    if len(duplicated):
        raise InputError(
            f"seriesuid {duplicated.iloc[0]!r} is listed more than once",
            path=path,
            fix="List each scan once",
        )
    if len(uids) == 0:
        raise InputError("the file lists no seriesuid", path=path, fix="List one per line")
    return uids.to_numpy(dtype=str)


def _warn_outside(what: str, ids: np.ndarray, scans: np.ndarray, list_path: Path) -> None:
    outside = ~np.isin(ids, scans)
    if outside.any():
        n_scans = len(np.unique(ids[outside]))
        _err.print(
            f"[yellow]warning:[/] {int(outside.sum())} {what} in {n_scans} scan(s) not listed "
            f"in {list_path} are ignored (the LUNA16 script evaluates only listed scans).",
            highlight=False,
            soft_wrap=True,
        )


@eval_app.command("froc")
def froc(
    annotations: Path = typer.Option(..., help="Ground truth, LUNA16 annotations.csv columns."),
    predictions: Path = typer.Option(..., help="Detections, LUNA16 submission columns."),
    excluded: Path | None = typer.Option(
        None, help="Findings whose marks are neither TP nor FP (annotations_excluded.csv)."
    ),
    seriesuids: Path | None = typer.Option(
        None,
        help="Scans to evaluate, one seriesuid per line; default: every UID in the "
        "annotations and predictions.",
    ),
    max_marks: int = typer.Option(100, help="Marks kept per scan (0: no cap)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples of the scans (0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    out: Path | None = typer.Option(None, help="Write froc.json, froc.csv and froc.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """FROC and CPM counted exactly as the LUNA16 evaluation script counts them."""
    if max_marks < 0:
        raise InputError(f"--max-marks must be 0 or more, got {max_marks}")
    if bootstrap < 0:
        raise InputError(f"--bootstrap must be 0 or more, got {bootstrap}")
    gt = read_table(annotations, "annotations")
    marks = read_table(predictions, "submission")
    exc = read_table(excluded, "excluded") if excluded is not None else None
    probs = _check_finite_column(marks, "probability", predictions)
    scans = _read_seriesuids(seriesuids) if seriesuids is not None else None
    if scans is not None and seriesuids is not None:
        _warn_outside("prediction(s)", marks["seriesuid"].to_numpy(str), scans, seriesuids)
        _warn_outside("annotation(s)", gt["seriesuid"].to_numpy(str), scans, seriesuids)
    match = match_luna16(
        marks["seriesuid"].to_numpy(str),
        marks[_WORLD].to_numpy(np.float64),
        probs,
        gt["seriesuid"].to_numpy(str),
        gt[_WORLD].to_numpy(np.float64),
        gt["diameter_mm"].to_numpy(np.float64),
        excluded_ids=None if exc is None else exc["seriesuid"].to_numpy(str),
        excluded_centers=None if exc is None else exc[_WORLD].to_numpy(np.float64),
        excluded_diameters=None if exc is None else exc["diameter_mm"].to_numpy(np.float64),
        scans=scans,
        max_marks=max_marks or None,
    )
    if match.n_scans == 0:
        raise InputError(
            "no scan to evaluate: the annotations and predictions are empty",
            path=annotations,
            fix="Pass --seriesuids with the scans to evaluate",
        )
    summary, curve, boot = luna16_summary(
        match, n_bootstrap=bootstrap, seed=seed, progress=not as_json
    )
    if out is not None:
        _write_froc(out, summary, curve, boot)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_froc(summary)


def _print_froc(summary: dict) -> None:
    table = Table(title=f"FROC (LUNA16 rules)  CPM = {summary['cpm']:.4f}")
    table.add_column("FPs per scan", justify="right")
    table.add_column("sensitivity", justify="right")
    ci = summary["ci"].get("sensitivities", {})
    if ci:
        table.add_column(f"{100 * summary['ci']['confidence']:g}% interval", justify="right")
    for rate, sens in summary["sensitivities"].items():
        row = [rate, f"{sens:.4f}"]
        if ci:
            lo, hi = ci[rate]
            row.append("-" if lo is None else f"{lo:.4f} - {hi:.4f}")
        table.add_row(*row)
    _out.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    _out.print(counts, highlight=False)


def _write_froc(
    out: Path, summary: dict, curve: tuple[np.ndarray, ...], boot: FrocBootstrap | None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "froc.json").write_text(json.dumps(summary, indent=2) + "\n")
    fps, sens, thresholds = curve
    pd.DataFrame({"fps_per_scan": fps, "sensitivity": sens, "threshold": thresholds}).to_csv(
        out / "froc.csv", index=False
    )
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if boot is not None:
        ax.fill_between(
            boot.grid,
            boot.band_lower,
            boot.band_upper,
            color="tab:blue",
            alpha=0.2,
            label=f"{100 * boot.confidence:g}% bootstrap band",
        )
    rates = np.array([float(r) for r in summary["sensitivities"]])
    points = np.array(list(summary["sensitivities"].values()))
    lo_x = min(rates.min() / 2, 1 / 16)
    hi_x = max(rates.max() * 2, 16)
    # The curve keeps only its bends, so its ends are read off the interpolation.
    shown = (fps > lo_x) & (fps < hi_x)
    ends = np.array([lo_x, max(lo_x, min(hi_x, fps[-1]))])
    ax.plot(
        np.r_[ends[0], fps[shown], ends[1]],
        np.r_[np.interp(ends[0], fps, sens), sens[shown], np.interp(ends[1], fps, sens)],
        lw=1.5,
        label="FROC",
    )
    ax.plot(rates, points, "o", color="tab:red", label=f"CPM {summary['cpm']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(0, 1)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "froc.png", dpi=120)


def _read_id_table(path: Path, column: str) -> pd.DataFrame:
    """Read an ``id,<column>`` CSV with ids as text and a finite numeric column."""
    if not path.is_file():
        raise InputError("no such file", path=path, fix="Check the path")
    try:
        df = pd.read_csv(path, dtype={"id": str}, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            "the file is empty", path=path, fix=f"Write a header: id,{column}"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError("not a readable CSV", path=path, fix="Check quoting") from exc
    for needed in ("id", column):
        if needed not in df.columns:
            raise InputError(
                f"column '{needed}' is missing (found {', '.join(map(str, df.columns))})",
                path=path,
                fix=f"Use the header id,{column}",
            )
    if df["id"].isna().any():
        first = int(np.flatnonzero(df["id"].isna().to_numpy())[0])
        raise InputError(f"column 'id' is empty at line {first + 2}", path=path)
    duplicated = df["id"][df["id"].duplicated()]
    if len(duplicated):
        raise InputError(
            f"id {duplicated.iloc[0]!r} appears more than once",
            path=path,
            fix="Give one row per id",
        )
    numbers = pd.to_numeric(df[column], errors="coerce")
    bad = numbers.isna() | ~np.isfinite(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"column '{column}' holds {df[column].iloc[first]!r} at line {first + 2}",
            path=path,
            fix=f"Give every '{column}' a finite number",
        )
    return pd.DataFrame({"id": df["id"].astype(str), column: numbers.astype(np.float64)})


def _aligned_scores(labels: pd.DataFrame, path: Path, labels_path: Path) -> np.ndarray:
    scores = _read_id_table(path, "score")
    missing = ~labels["id"].isin(scores["id"])
    extra = ~scores["id"].isin(labels["id"])
    if missing.any() or extra.any():
        parts = []
        if missing.any():
            parts.append(
                f"{int(missing.sum())} id(s) of {labels_path} have no score "
                f"(e.g. {labels['id'][missing].iloc[0]!r})"
            )
        if extra.any():
            parts.append(
                f"{int(extra.sum())} scored id(s) have no label "
                f"(e.g. {scores['id'][extra].iloc[0]!r})"
            )
        raise InputError(
            "ids differ between labels and scores: " + "; ".join(parts),
            path=path,
            fix="Score exactly the labelled cases",
        )
    return scores.set_index("id").loc[labels["id"], "score"].to_numpy(np.float64)


@eval_app.command("auc")
def auc(
    labels: Path = typer.Option(..., help="CSV with columns id,label (1 positive, 0 negative)."),
    scores: Path = typer.Option(..., help="CSV with columns id,score."),
    compare: Path | None = typer.Option(
        None, help="Scores of a second model (id,score) to compare by DeLong's test."
    ),
    threshold: float | None = typer.Option(
        None, help="Operating threshold (score >= threshold is positive); default Youden's."
    ),
    confidence: float = typer.Option(0.95, help="Level of the intervals."),
    out: Path | None = typer.Option(None, help="Write roc.png and auc.json here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """ROC AUC with DeLong's interval, an operating point, and an optional DeLong test."""
    if not 0 < confidence < 1:
        raise InputError(f"--confidence must lie between 0 and 1, got {confidence}")
    lab = _read_id_table(labels, "label")
    y = lab["label"].to_numpy()
    if not np.all((y == 0) | (y == 1)):
        first = int(np.flatnonzero((y != 0) & (y != 1))[0])
        raise InputError(
            f"column 'label' holds {y[first]:g} at line {first + 2}",
            path=labels,
            fix="Use 1 for positive and 0 for negative",
        )
    if y.min() == y.max():
        raise InputError(
            f"every label is {int(y[0])}; ROC analysis needs positives and negatives",
            path=labels,
        )
    s = _aligned_scores(lab, scores, labels)
    ci = delong_interval(y, s, confidence)
    if threshold is None:
        thr, sens, spec = youden_threshold(y, s)
    else:
        thr = threshold
        sens, spec = sensitivity_specificity_score(y, s, threshold)
    result: dict[str, object] = {
        "auc": ci.auc,
        "ci": [ci.lower, ci.upper],
        "sensitivity": sens,
        "specificity": spec,
        "threshold": thr,
        "comparison": None,
    }
    s2 = None
    if compare is not None:
        s2 = _aligned_scores(lab, compare, labels)
        ci2 = delong_interval(y, s2, confidence)
        test = delong_test(y, s, s2)
        result["comparison"] = {
            "auc": ci2.auc,
            "ci": [ci2.lower, ci2.upper],
            "p_value": test.p_value,
        }
    if out is not None:
        _write_auc(out, result, y, s, s2)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_auc(result, confidence)


def _print_auc(result: dict, confidence: float) -> None:
    level = f"{100 * confidence:g}%"
    lo, hi = result["ci"]
    _out.print(f"AUC {result['auc']:.4f} ({level} CI {lo:.4f} - {hi:.4f}, DeLong)")
    _out.print(
        f"threshold {result['threshold']:.4g}: sensitivity {result['sensitivity']:.4f}, "
        f"specificity {result['specificity']:.4f}",
        highlight=False,
    )
    cmp = result["comparison"]
    if cmp is not None:
        lo2, hi2 = cmp["ci"]
        p = cmp["p_value"]
        p_text = f"{p:.4g}" if p >= 1e-4 or p == 0 else f"{p:.2e}"
        _out.print(
            f"compared: AUC {cmp['auc']:.4f} ({level} CI {lo2:.4f} - {hi2:.4f}), "
            f"DeLong p = {p_text}",
            highlight=False,
        )


def _write_auc(
    out: Path, result: dict, y: np.ndarray, s: np.ndarray, s2: np.ndarray | None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "auc.json").write_text(json.dumps(result, indent=2) + "\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.8))
    ax = fig.add_subplot()
    curves = [("scores", s, result["auc"])]
    if s2 is not None:
        curves.append(("compared", s2, result["comparison"]["auc"]))
    for name, values, area in curves:
        fpr, tpr, _ = roc_curve(y, values)
        ax.plot(
            fpr,
            tpr,
            lw=1.5,
            drawstyle="steps-post" if False else "default",
            label=f"{name} (AUC {area:.3f})",
        )
    ax.plot(
        [1 - result["specificity"]],
        [result["sensitivity"]],
        "o",
        color="tab:red",
        label=f"threshold {result['threshold']:.3g}",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
