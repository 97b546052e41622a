"""``activecad al run|next|label|report``: the loop, its current query, the answers, the report.

``al next RUN_DIR`` prints the scans the run asks to be labelled (with scores and ranks);
``al label RUN_DIR --annotations A.csv`` records the answers (LUNA16 annotations columns,
world mm; a queried scan without a row is a labelled negative), all or nothing. The loop
(``al run``) continues once every queried scan is labelled.
``al report RUN_DIR... --out DIR`` draws the learning curves of finished loops.
"""

from __future__ import annotations

import getpass
import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from activecad.cli._common import warn

al_app = typer.Typer(
    help="Active learning: run the loop, show its query, record answers, report the curves.",
    no_args_is_help=True,
    add_completion=False,
)

_RunDir = Annotated[
    Path,
    typer.Argument(metavar="RUN_DIR", help="The run folder (holds run.json).", show_default=False),
]
_Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL instead of the one in run.json, e.g. postgresql+psycopg://user@host/db.",
        show_default=False,
    ),
]


def _score(value: float) -> float | None:
    return value if math.isfinite(value) else None


@al_app.command("next")
def next_command(
    run_dir: _RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the query as JSON.")] = False,
    db: _Db = None,
) -> None:
    """Print the current query: the items to label, best first, with scores and ranks."""
    from activecad.active.run import current_query, open_run

    with open_run(run_dir, db_url=db) as run:
        query = current_query(run)
        kind = run.pool.item_kind
    if query is None:
        if as_json:
            typer.echo(json.dumps({"cycle": None, "answered": None, "items": []}))
        else:
            typer.echo("no query yet: the run has not chosen any scans")
        return
    if as_json:
        payload = {
            "cycle": query.cycle,
            "strategy": query.strategy,
            "seed": query.seed,
            "item_kind": kind,
            "answered": query.answered,
            "pending": len(query.pending),
            "items": [
                {"item": r.item, "score": _score(r.score), "rank": r.rank, "labelled": r.labelled}
                for r in query.rows
            ],
        }
        typer.echo(json.dumps(payload))
        return
    state = "answered" if query.answered else f"{len(query.pending)} of {len(query.rows)} to label"
    typer.echo(f"cycle {query.cycle} ({query.strategy}, seed {query.seed}): {state}")
    width = max((len(r.item) for r in query.rows), default=4)
    typer.echo(f"{'rank':>4}  {kind:<{width}}  {'score':>10}  labelled")
    for r in query.rows:
        shown = "nan" if not math.isfinite(r.score) else f"{r.score:.4g}"
        typer.echo(f"{r.rank:>4}  {r.item:<{width}}  {shown:>10}  {'yes' if r.labelled else 'no'}")
    if query.answered:
        typer.echo(
            "every scan is labelled; continue the loop with: "
            f"activecad al run CONFIG.yaml --out {run_dir} --resume"
        )
    else:
        typer.echo(f"record the labels with: activecad al label {run_dir} --annotations A.csv")


@al_app.command("label")
def label_command(
    run_dir: _RunDir,
    annotations: Annotated[
        Path,
        typer.Option(
            "--annotations",
            help="LUNA16 annotations CSV (seriesuid, coordX, coordY, coordZ, diameter_mm; "
            "world mm) answering the current query; a queried scan without a row is a "
            "labelled negative.",
            show_default=False,
        ),
    ],
    annotator: Annotated[
        str | None,
        typer.Option(
            "--annotator", help="Who labelled (default: the login name).", show_default=False
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was recorded as JSON.")
    ] = False,
    db: _Db = None,
) -> None:
    """Record the answers to the current query, all or nothing (never twice)."""
    from activecad.active.pool import LabelRecord
    from activecad.active.run import current_query, open_run
    from activecad.errors import InputError
    from activecad.identifiers import check_overlap
    from activecad.io.tables import read_table

    who = (annotator or _login()).strip()
    if not who:
        raise InputError("--annotator is empty", fix="pass --annotator NAME")
    table = read_table(annotations, "annotations")
    with open_run(run_dir, db_url=db) as run:
        if run.pool.item_kind != "scan":
            raise InputError(
                "this run queries candidates; al label records scan labels only",
                path=run_dir,
                fix="answer candidate queries through the annotation service",
            )
        query = current_query(run)
        if query is None:
            raise InputError(
                "the run has no query to answer yet",
                path=run_dir,
                fix="start the loop first: activecad al run CONFIG.yaml --out RUN_DIR",
            )
        queried = [r.item for r in query.rows]
        uids = sorted(set(table["seriesuid"].astype(str)))
        outside = sorted(set(uids) - set(queried))
        if uids and not set(uids) & set(queried):
            # none in common: check_overlap's error names an example of each side
            check_overlap(
                uids,
                queried,
                ours_name=annotations.name,
                theirs_name=f"the query of cycle {query.cycle}",
                path=annotations,
            )
        if outside:
            shown = ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else "")
            raise InputError(
                f"{len(outside)} scans of the table are not in the query of cycle "
                f"{query.cycle}: {shown}",
                path=annotations,
                fix=f"label only the scans 'activecad al next {run_dir}' lists",
            )
        columns = ["coordX", "coordY", "coordZ", "diameter_mm"]
        groups = {str(k): g[columns].to_numpy(float) for k, g in table.groupby("seriesuid")}
        records = [LabelRecord(k, groups.get(k, np.zeros((0, 4)))) for k in queried]
        result = run.pool.record_labels(records, annotator=who, cycle=query.cycle, source="human")
        after = current_query(run)
        negatives = [k for k in result.recorded if k not in set(uids)]
        if uids and negatives:
            warn(
                "%d of %d queried scans have no row in %s and are recorded as negatives",
                len(negatives),
                len(queried),
                annotations.name,
            )
    answered = after is not None and after.answered
    if as_json:
        payload = {
            "cycle": query.cycle,
            "annotator": who,
            "recorded": list(result.recorded),
            "already_labelled": list(result.already),
            "answered": answered,
        }
        typer.echo(json.dumps(payload))
        return
    if not result.recorded:
        typer.echo(
            f"the query of cycle {query.cycle} was already answered; nothing recorded "
            f"({len(result.already)} scans already labelled)"
        )
        return
    positives = sum(1 for k in result.recorded if len(groups.get(k, ())))
    typer.echo(
        f"recorded {len(result.recorded)} scans for cycle {query.cycle} by {who} "
        f"({positives} with nodules, {len(result.recorded) - positives} negative)"
    )
    if result.already:
        typer.echo(f"{len(result.already)} scans were already labelled and were left as they are")
    if answered:
        typer.echo(
            "the query is answered; continue the loop with: "
            f"activecad al run CONFIG.yaml --out {run_dir} --resume"
        )


@al_app.command("run")
def run_command(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="Loop config YAML.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="The loop's folder.", show_default=False)],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the loop in --out where it stopped.")
    ] = False,
) -> None:
    """Run the active-learning loop of CONFIG into --out.

    The 3D detector is trained, scores the pool and is evaluated (CPM, sensitivity at 4 FPs
    per scan) every cycle when CONFIG has a ``detector:`` mapping or a strategy needs scores;
    a random-only CONFIG without ``detector:`` records the selections and labels only.
    """
    from activecad.active.candidate_learner import CandidateLearner
    from activecad.active.config import LoopConfig
    from activecad.active.detector_learner import DetectorLearner, needs_tta
    from activecad.active.loop import run_loop
    from activecad.config import load_config

    loop_config = load_config(LoopConfig, config)
    learner: DetectorLearner | CandidateLearner | None = None
    if loop_config.items == "candidate":
        learner = CandidateLearner(
            loop_config.data, candidates=loop_config.candidates, fpr=loop_config.fpr
        )
    elif loop_config.detector is not None or loop_config.strategies != ["random"]:
        learner = DetectorLearner(
            loop_config.data,
            detector=loop_config.detector,
            tta=needs_tta(loop_config.strategies),
        )
    from rich.console import Console

    # A live status line (stage and elapsed time) on a terminal, and one timestamped line per
    # stage on stderr either way, so a log of a long run says where each hour went.
    console = Console(stderr=True, log_path=False)
    with console.status("starting the loop") as status:
        if learner is not None:
            learner.status = status.update

        def say(message: str) -> None:
            status.update(message)
            console.log(message)

        result = run_loop(loop_config, out, resume=resume, learner=learner, progress=say)
    for name, cycles in result.cycles.items():
        typer.echo(f"{name}: {cycles} cycles finished")
    if result.waiting:
        typer.echo(
            f"waiting for labels in {', '.join(result.waiting)}: "
            f"answer with 'activecad al label', then 'activecad al run {config} --out {out} "
            "--resume'"
        )


@al_app.command("report")
def report_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="Loop folders of one experiment (al run --out), e.g. one per seed.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for curves.png, scatter.png, report.json and report.md.",
            show_default=False,
        ),
    ],
    target_fraction: Annotated[
        float,
        typer.Option(
            "--target-fraction",
            min=0.0,
            max=1.0,
            help="Labels saved are counted to reach this share of the reference CPM.",
        ),
    ] = 0.95,
    full_cpm: Annotated[
        float | None,
        typer.Option(
            "--full-cpm",
            min=0.0,
            max=1.0,
            help="CPM of the detector trained on the whole pool (default: random's last mean).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
) -> None:
    """Learning curves (CPM, sensitivity at 4 FPs/scan; for candidates the test AUC) against %
    labelled and minutes, ALC per strategy, labels saved against random (RFT for ACFT's
    strategies), and nodule size against predicted loss."""
    from activecad.active.report import write_report
    from activecad.cli._common import atomic_output, output_folder

    output_folder(out, writes="curves.png, scatter.png, report.json and report.md")
    with atomic_output(out, folder=True) as tmp:
        summary = write_report(run_dirs, tmp, target_fraction=target_fraction, full_cpm=full_cpm)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    main = summary["metrics"][0]  # type: ignore[index]
    for strategy, entry in summary["strategies"].items():  # type: ignore[union-attr]
        final = entry[main]["final"]["mean"]
        alc = entry[main]["alc"]
        alc_text = "–" if alc is None else f"{alc['mean']:.3f}"
        final_text = "–" if final is None else f"{final:.3f}"
        typer.echo(
            f"{strategy}: {len(entry['seeds'])} seeds, final {main} {final_text}, ALC {alc_text}"
        )
    typer.echo(f"report written to {out / 'report.md'}")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register(app: typer.Typer) -> None:
    """Add the ``al`` command group to ``app``."""
    app.add_typer(al_app, name="al")
