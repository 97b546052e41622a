"""The run folder of an active-learning run, and the queries it records.

Layout (the loop of ``activecad al run`` fills the ``cycles/`` part)::

    RUN_DIR/
      run.json         what the run is: format, project, item kind, database URL (null: the
                       SQLite file below)
      config.yaml      the resolved configuration
      versions.json    Python and package versions
      seeds.json       the seeds
      activecad.db     the SQLite store (unless run.json names a PostgreSQL URL)
      selections.csv   cycle, strategy, seed, item, score, rank: one row per selected item,
                       ordered by cycle then rank, rewritten from the store after each query
      cycles/<r>/      per cycle: model, pool scores, metrics (written by the loop)

:func:`create_run` makes the folder and its store; :func:`propose_query` records a query
(the heuristic's selection) as cycle r; :func:`current_query` reads the latest one back.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from activecad.active.heuristics import Selection, get_heuristic
from activecad.active.items import ItemKind, ItemScores
from activecad.active.pool import Pool
from activecad.errors import InputError
from activecad.store import Cycle, Item, Query, Store, open_store, sqlite_url

__all__ = [
    "SELECTION_COLUMNS",
    "QueryRow",
    "QueryView",
    "Run",
    "create_run",
    "current_query",
    "open_run",
    "propose_query",
]

RUN_FORMAT = 1
DB_NAME = "activecad.db"
SELECTION_COLUMNS = ("cycle", "strategy", "seed", "item", "score", "rank")
_PACKAGES = ("activecad", "numpy", "torch", "monai", "sqlalchemy", "alembic", "pandas")


@dataclass
class Run:
    """An open run folder: its paths, store and pool."""

    folder: Path
    store: Store
    pool: Pool

    @property
    def selections_csv(self) -> Path:
        return self.folder / "selections.csv"

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and move it into place (a kill leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def create_run(
    folder: str | Path,
    seriesuids: Iterable[str],
    *,
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, int] | None = None,
    db_url: str | None = None,
    item_kind: ItemKind = "scan",
    project: str | None = None,
) -> Run:
    """Make a run folder with its store, and put the scans in the pool.

    Args:
        folder: the run folder; it must not hold a run yet.
        seriesuids: the pool's scans.
        config: the resolved configuration, written to ``config.yaml``.
        seeds: the seeds, written to ``seeds.json``.
        db_url: a PostgreSQL (or other) URL; None keeps a SQLite file in the folder.
        item_kind: ``"scan"`` or ``"candidate"``.
        project: the project's name in the store (default: the folder's name).

    Raises:
        InputError: the folder already holds a run, or the database cannot be opened.
    """
    folder = Path(folder)
    if (folder / "run.json").exists():
        raise InputError(
            "this folder already holds a run",
            path=folder,
            fix="choose another folder (a run is continued with --resume, not created again)",
        )
    folder.mkdir(parents=True, exist_ok=True)
    project = project or folder.resolve().name
    store = open_store(db_url or sqlite_url(folder / DB_NAME))
    pool = Pool(store, project, item_kind=item_kind)
    pool.add_scans(seriesuids)
    _write_atomic(folder / "config.yaml", yaml.safe_dump(dict(config or {}), sort_keys=True))
    _write_atomic(folder / "versions.json", json.dumps(_versions(), indent=2) + "\n")
    _write_atomic(folder / "seeds.json", json.dumps(dict(seeds or {}), indent=2) + "\n")
    info = {
        "format": RUN_FORMAT,
        "project": project,
        "item_kind": item_kind,
        "db": db_url,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    run = Run(folder, store, pool)
    _write_selections(run)
    # run.json last: a folder without it is not a run, so a failed creation is not mistaken
    # for one.
    _write_atomic(folder / "run.json", json.dumps(info, indent=2) + "\n")
    return run


def open_run(folder: str | Path, *, db_url: str | None = None) -> Run:
    """Open an existing run folder.

    Args:
        folder: the run folder.
        db_url: overrides the URL in ``run.json`` (e.g. the same PostgreSQL server at
            another address).

    Raises:
        InputError: not a run folder, or an unreadable ``run.json``.
    """
    folder = Path(folder)
    info_path = folder / "run.json"
    if not folder.exists():
        raise InputError(
            "the run folder does not exist",
            path=folder,
            fix="pass the folder given to 'activecad al run --out'",
        )
    if not info_path.is_file():
        raise InputError(
            "not an active-learning run folder (no run.json)",
            path=folder,
            fix="pass the folder given to 'activecad al run --out'",
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        project, kind, url = info["project"], info["item_kind"], info.get("db")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"run.json cannot be read ({exc})", path=info_path, fix="restore it from a backup"
        ) from exc
    if db_url is None and url is None and not (folder / DB_NAME).is_file():
        raise InputError(f"the run's database {DB_NAME} is missing", path=folder, fix="restore it")
    store = open_store(db_url or url or sqlite_url(folder / DB_NAME))
    return Run(folder, store, Pool(store, project, item_kind=kind))


@dataclass(frozen=True)
class QueryRow:
    """One queried item: key, score (NaN when not finite), rank (1 = first), labelled?"""

    item: str
    score: float
    rank: int
    labelled: bool


@dataclass(frozen=True)
class QueryView:
    """The latest query of a run."""

    cycle: int
    strategy: str
    seed: int
    rows: tuple[QueryRow, ...]

    @property
    def answered(self) -> bool:
        return all(r.labelled for r in self.rows)

    @property
    def pending(self) -> list[str]:
        return [r.item for r in self.rows if not r.labelled]


def propose_query(
    run: Run,
    scores: Sequence[ItemScores] | None,
    *,
    heuristic: str = "random",
    options: Mapping[str, Any] | None = None,
    budget: int,
    seed: int = 0,
) -> QueryView | None:
    """Choose the next items with a heuristic and record them as the next cycle's query.

    Args:
        run: the open run.
        scores: the detector's outputs for the unlabelled items (labelled ones are given to
            diversity heuristics as centres); None: bare items, enough for ``random``.
        heuristic: a registered heuristic's name; ``options`` its keyword options.
        budget: how many items to ask for; fewer when fewer remain unlabelled.
        seed: the seed of this cycle's random choices.

    Returns:
        the recorded query, or None when no unlabelled item remains (the pool is used up).

    Raises:
        InputError: the previous query is not answered yet, an unknown heuristic, or
            scores for items that are not in the pool.
    """
    previous = current_query(run)
    if previous is not None and not previous.answered:
        raise InputError(
            f"the query of cycle {previous.cycle} still waits for {len(previous.pending)} labels",
            path=run.folder,
            fix=f"answer it first: activecad al label {run.folder} --annotations A.csv",
        )
    chooser = get_heuristic(heuristic, **dict(options or {}))
    states = run.pool.items()
    unlabelled = {i.key for i in states if not i.labelled}
    if not unlabelled:
        return None
    if scores is None:
        scores = [ItemScores(k, kind=run.pool.item_kind) for k in sorted(unlabelled)]
    unknown = sorted({s.item for s in scores} - {i.key for i in states})
    if unknown:
        raise InputError(
            f"{len(unknown)} scored items are not in the pool (e.g. {unknown[0]!r})",
            fix="score only the run's pool",
        )
    candidates = [s for s in scores if s.item in unlabelled]
    labelled = [s for s in scores if s.item not in unlabelled]
    selection = chooser.select(candidates, budget, labelled=labelled, seed=seed)
    number = 0 if previous is None else previous.cycle + 1
    _record(run, selection, number=number, seed=seed, budget=budget)
    _write_selections(run)
    return current_query(run)


def _record(run: Run, selection: Selection, *, number: int, seed: int, budget: int) -> None:
    with run.store.session() as session:
        cycle = Cycle(
            project_id=run.pool.project_id,
            number=number,
            strategy=selection.strategy,
            seed=seed,
            budget=budget,
        )
        session.add(cycle)
        session.flush()
        ids = dict(
            session.execute(
                select(Item.key, Item.id).where(
                    Item.project_id == run.pool.project_id, Item.key.in_(selection.items)
                )
            ).all()
        )
        session.add_all(
            Query(
                cycle_id=cycle.id,
                item_id=ids[key],
                strategy=selection.strategy,
                score=score if math.isfinite(score) else None,
                rank=rank,
            )
            for key, score, rank in zip(
                selection.items, selection.scores, selection.ranks, strict=True
            )
        )


def current_query(run: Run) -> QueryView | None:
    """The latest cycle's query with each item's label state; None before the first query."""
    with run.store.session() as session:
        number = session.scalar(
            select(func.max(Cycle.number)).where(Cycle.project_id == run.pool.project_id)
        )
        if number is None:
            return None
        cycle = session.scalars(
            select(Cycle).where(Cycle.project_id == run.pool.project_id, Cycle.number == number)
        ).one()
        rows = session.execute(
            select(Item.key, Query.score, Query.rank)
            .join(Item, Query.item_id == Item.id)
            .where(Query.cycle_id == cycle.id)
            .order_by(Query.rank)
        ).all()
        strategy, seed = cycle.strategy, cycle.seed
    labelled = set(run.pool.labelled())
    return QueryView(
        number,
        strategy,
        seed,
        tuple(
            QueryRow(key, math.nan if score is None else score, rank, key in labelled)
            for key, score, rank in rows
        ),
    )


def _write_selections(run: Run) -> None:
    with run.store.session() as session:
        rows = session.execute(
            select(Cycle.number, Query.strategy, Cycle.seed, Item.key, Query.score, Query.rank)
            .join(Cycle, Query.cycle_id == Cycle.id)
            .join(Item, Query.item_id == Item.id)
            .where(Cycle.project_id == run.pool.project_id)
            .order_by(Cycle.number, Query.rank)
        ).all()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SELECTION_COLUMNS)
    for number, strategy, seed, key, score, rank in rows:
        writer.writerow([number, strategy, seed, key, "" if score is None else repr(score), rank])
    _write_atomic(run.selections_csv, text.getvalue())
