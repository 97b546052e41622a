"""``activecad eval``: FROC/CPM the LUNA16 way and ROC/AUC with DeLong, from CSV files.

This module is the only part of the evaluation that knows file formats: it reads the
tables, validates them with messages that name the file, the column and the line, and hands
plain arrays to :mod:`activecad.metrics`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from activecad.cli._common import atomic_output, output_folder, usage_error, warn
from activecad.errors import InputError
from activecad.identifiers import check_overlap
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
logger = logging.getLogger("activecad")

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


def _read_split(path: Path, key: str | None) -> np.ndarray:
    """The series of one part of a ``split.json`` (written by ``train detector``)."""
    if not path.is_file():
        raise InputError("no such file", path=path, fix="Check the path")
    try:
        split = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"not readable JSON ({exc})", path=path, fix="Pass the split.json of a model folder"
        ) from exc
    if isinstance(split, list):
        if key is not None:
            raise InputError(
                f"the file holds one list, not parts such as '{key}'",
                path=path,
                fix=f"Pass --seriesuids {path} without ':{key}'",
            )
        uids = split
    elif isinstance(split, dict):
        parts = [k for k, v in split.items() if isinstance(v, list)]
        if key is None or key not in parts:
            what = "name the part to evaluate" if key is None else f"it has no part '{key}'"
            raise InputError(
                f"{what} (parts: {', '.join(parts) or 'none'})",
                path=path,
                fix=f"Pass e.g. --seriesuids {path}:{parts[-1] if parts else 'val'}",
            )
        uids = split[key]
    else:
        raise InputError(
            "expected a JSON object of lists", path=path, fix="Pass a model folder's split.json"
        )
    uids = [str(u).strip() for u in uids]
    if not uids:
        raise InputError(
            f"the part '{key}' lists no series" if key else "the file lists no series",
            path=path,
            fix="Pick a part that holds the held-out scans (val or test)",
        )
    if len(set(uids)) != len(uids):
        raise InputError("a series is listed more than once", path=path, fix="List each once")
    return np.asarray(uids, dtype=str)


def read_seriesuids(path: Path) -> np.ndarray:
    """Read the scans to evaluate.

    Either a LUNA16 ``seriesuids.csv`` (one UID per line, with or without a header), or
    ``split.json:KEY``, one part (``train``, ``val``, ``test``) of the ``split.json`` that
    ``activecad train detector`` writes into the model folder, or a JSON list of UIDs.
    """
    text = str(path)
    name, sep, key = text.rpartition(":")
    if sep and name.lower().endswith(".json") and "/" not in key and "\\" not in key:
        return _read_split(Path(name), key or None)
    if path.suffix.lower() == ".json":
        return _read_split(path, None)
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


def _check_froc_ids(
    mark_ids: np.ndarray,
    gt_ids: np.ndarray,
    scans: np.ndarray | None,
    *,
    predictions: Path,
    annotations: Path,
    seriesuids: Path | None,
) -> None:
    """Predictions, annotations and the list of scans must name the same series.

    Predictions that match no listed (or, without a list, no annotated) scan are an error
    (a ``.mhd`` suffix left on the predictions' seriesuids used to give CPM 0 over twice
    the scans); predictions outside the list are a warning (the LUNA16 script ignores
    them). Listed scans none of which is annotated are a warning, not an error: a small
    held-out part may hold no nodule. Annotations outside the list are normal
    (annotations.csv covers the whole data set, the list one part of it) and only logged.
    """
    if scans is not None:
        listed = f"the scans listed in {seriesuids}"
        check_overlap(
            mark_ids, scans, ours_name="the predictions", theirs_name=listed, path=predictions
        )
        gt_set, scan_set = set(gt_ids), set(scans)
        if gt_set and not gt_set & scan_set:
            # Not an error: the listed scans may all be free of nodules (a small held-out
            # part of a split). But the sensitivity is then undefined, so say it.
            warn(
                "none of the %d scans listed in %s has an annotation in %s (e.g. %r listed vs "
                "%r annotated); check that both name the same series",
                len(scan_set),
                seriesuids,
                annotations,
                str(min(scan_set)),
                str(min(gt_set)),
            )
        outside = gt_set - scan_set
        if outside:
            logger.info(
                "%d of %d annotated scans are not in %s and are not evaluated",
                len(outside),
                len(gt_set),
                listed,
            )
        return
    mark_set, gt_set = set(mark_ids), set(gt_ids)
    if mark_set and gt_set and not mark_set & gt_set:
        check_overlap(
            mark_set,
            gt_set,
            ours_name="the predictions",
            theirs_name=f"the annotations ({annotations})",
            path=predictions,
        )
    unannotated = mark_set - gt_set
    if unannotated:
        warn(
            "%d of %d scans of the predictions have no annotation and count as scans without "
            "nodules (e.g. %r); pass --seriesuids to name the scans to evaluate",
            len(unannotated),
            len(mark_set),
            min(unannotated),
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
        help="Scans to evaluate: a CSV with one seriesuid per line, or MODEL/split.json:val "
        "(a part of the split 'train detector' wrote); default: every UID in the "
        "annotations and predictions.",
    ),
    max_marks: int = typer.Option(100, min=0, help="Marks kept per scan (0: no cap)."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples of the scans (0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    out: Path | None = typer.Option(
        None, help="Folder to write froc.json, froc.csv and froc.png into."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """FROC and CPM counted exactly as the LUNA16 evaluation script counts them.

    Identifiers must match: predictions, annotations and --seriesuids that share no series
    are an error (a '.mhd' suffix left on a seriesuid, the wrong file); a partial overlap is
    a warning with counts, and only the listed (or, without a list, the seen) scans count.
    """
    if out is not None:
        out = output_folder(out, writes="froc.json, froc.csv and froc.png")
    gt = read_table(annotations, "annotations")
    marks = read_table(predictions, "submission")
    exc = read_table(excluded, "excluded") if excluded is not None else None
    probs = _check_finite_column(marks, "probability", predictions)
    scans = read_seriesuids(seriesuids) if seriesuids is not None else None
    _check_froc_ids(
        marks["seriesuid"].to_numpy(str),
        gt["seriesuid"].to_numpy(str),
        scans,
        predictions=predictions,
        annotations=annotations,
        seriesuids=seriesuids,
    )
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
        with atomic_output(out, folder=True) as tmp:
            _write_froc(tmp, summary, curve, boot)
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
        raise InputError(
            f"column 'id' is empty at line {first + 2}", path=path, fix="Give every row an id"
        )
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


def _scores_by_id(path: Path) -> pd.Series:
    scores = _read_id_table(path, "score")
    return scores.set_index("id")["score"]


def _check_confidence(value: float) -> float:
    if not 0 < value < 1:
        raise usage_error(
            f"must lie strictly between 0 and 1, got {value:g}", option="--confidence"
        )
    return value


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
    confidence: float = typer.Option(
        0.95, callback=_check_confidence, help="Level of the intervals (between 0 and 1)."
    ),
    out: Path | None = typer.Option(None, help="Folder to write auc.json and roc.png into."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """ROC AUC with DeLong's interval, an operating point, and an optional DeLong test.

    Cases are joined by id: ids of --labels and --scores (and --compare) that share none are
    an error; a partial overlap is a warning with counts, and only the common ids count.
    """
    if out is not None:
        out = output_folder(out, writes="auc.json and roc.png")
    lab = _read_id_table(labels, "label")
    score_tables = [(scores, _scores_by_id(scores))]
    if compare is not None:
        score_tables.append((compare, _scores_by_id(compare)))
    common = set(lab["id"])
    for path, table in score_tables:
        common &= check_overlap(
            table.index, lab["id"], ours_name=f"the scores ({path})",
            theirs_name=f"the labels ({labels})", path=path,
        )  # fmt: skip
        check_overlap(
            lab["id"], table.index, ours_name=f"the labels ({labels})",
            theirs_name=f"the scores ({path})", path=labels,
        )  # fmt: skip
    lab = lab[lab["id"].isin(common)].reset_index(drop=True)
    y = lab["label"].to_numpy()
    if not np.all((y == 0) | (y == 1)):
        first = int(np.flatnonzero((y != 0) & (y != 1))[0])
        raise InputError(
            f"column 'label' holds {y[first]:g} (id {lab['id'].iloc[first]!r})",
            path=labels,
            fix="Use 1 for positive and 0 for negative",
        )
    if y.min() == y.max():
        raise InputError(
            f"every scored label is {int(y[0])}; ROC analysis needs positives and negatives",
            path=labels,
            fix="Label (and score) cases of both kinds",
        )
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < 2:
        # DeLong's variance divides by (m - 1) and (n - 1): one case of a kind gives NaN.
        raise InputError(
            f"{n_pos} positive and {n_neg} negative scored case(s); DeLong's interval needs "
            "at least 2 of each",
            path=labels,
            fix="Label and score more cases",
        )
    s = score_tables[0][1].loc[lab["id"]].to_numpy(np.float64)
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
        s2 = score_tables[1][1].loc[lab["id"]].to_numpy(np.float64)
        ci2 = delong_interval(y, s2, confidence)
        test = delong_test(y, s, s2)
        result["comparison"] = {
            "auc": ci2.auc,
            "ci": [ci2.lower, ci2.upper],
            "p_value": test.p_value,
        }
    if out is not None:
        with atomic_output(out, folder=True) as tmp:
            _write_auc(tmp, result, y, s, s2)
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
