"""The pool: every item of a project, unlabelled or labelled at cycle r (by whom, when).

Items are scans (key: the seriesuid) or candidates inside scans (key:
:func:`~activecad.active.items.candidate_key`, centre in world mm, x-y-z); the pool, the
queries and the labels work the same for both. The state lives in the store (one
transaction per call), so a pool is shared by the loop, ``al label`` and the annotation
service, and survives a crash.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from activecad.active.items import ItemKind, candidate_key
from activecad.errors import InputError
from activecad.store import Annotation, Cycle, Finding, Item, Project, Scan, Store

__all__ = ["LabelRecord", "Pool", "PoolItem", "RecordedLabels"]

# Finding states (set by the annotation service) that are not part of an answer.
_NOT_COUNTED = ("rejected", "deleted")


@dataclass(frozen=True)
class PoolItem:
    """One item and its label state.

    Attributes:
        key: the item's key.
        kind: ``"scan"`` or ``"candidate"``.
        seriesuid: the scan it is (in).
        cycle: the cycle r in which it was first labelled; None while unlabelled.
        annotator: who labelled it first; None while unlabelled.
        labelled_at: when (UTC); None while unlabelled.
    """

    key: str
    kind: ItemKind
    seriesuid: str
    cycle: int | None = None
    annotator: str | None = None
    labelled_at: datetime | None = None

    @property
    def labelled(self) -> bool:
        return self.cycle is not None or self.annotator is not None


@dataclass(frozen=True)
class LabelRecord:
    """A label to record: the findings of one item (none: a labelled negative).

    Attributes:
        item: the item's key.
        findings: (N, 4) world mm x, y, z and diameter mm; N = 0 for a negative.
        minutes: annotation time, if known (simulated cost or measured).
    """

    item: str
    findings: np.ndarray
    minutes: float | None = None


@dataclass(frozen=True)
class RecordedLabels:
    """What :meth:`Pool.record_labels` did: the items it recorded and those already labelled."""

    recorded: tuple[str, ...]
    already: tuple[str, ...]


class Pool:
    """The items of one project in a store.

    Args:
        store: the open store.
        project: the project's name (created with ``item_kind`` when missing).
        item_kind: ``"scan"`` or ``"candidate"``; must match an existing project's.
    """

    def __init__(self, store: Store, project: str, *, item_kind: ItemKind = "scan"):
        self.store = store
        self.project = project
        with store.session() as session:
            found = session.scalar(select(Project).where(Project.name == project))
            if found is None:
                found = Project(name=project, item_kind=item_kind)
                session.add(found)
                session.flush()
            elif found.item_kind != item_kind:
                raise InputError(
                    f"project {project!r} holds {found.item_kind} items, not {item_kind} items",
                    fix=f"open it with item_kind={found.item_kind!r} or use another project",
                )
            self.project_id = found.id
        self.item_kind = item_kind

    def add_scans(self, seriesuids: Iterable[str], paths: Mapping[str, str] | None = None) -> int:
        """Add scans (and, for a scan-level project, their items); known ones are kept.

        Returns:
            how many scans were new.
        """
        paths = paths or {}
        uids = list(dict.fromkeys(str(s) for s in seriesuids))
        with self.store.session() as session:
            known = set(
                session.scalars(select(Scan.seriesuid).where(Scan.project_id == self.project_id))
            )
            new = [u for u in uids if u not in known]
            scans = [Scan(project_id=self.project_id, seriesuid=u, path=paths.get(u)) for u in new]
            session.add_all(scans)
            session.flush()
            if self.item_kind == "scan":
                session.add_all(
                    Item(project_id=self.project_id, scan_id=s.id, kind="scan", key=s.seriesuid)
                    for s in scans
                )
        return len(new)

    def add_candidates(self, seriesuid: str, centers: np.ndarray) -> list[str]:
        """Add candidates of a scan (the scan is added if new); returns their keys.

        Args:
            seriesuid: the scan.
            centers: (N, 3) world mm, x-y-z; numbered after the scan's existing candidates.
        """
        if self.item_kind != "candidate":
            raise InputError(
                f"project {self.project!r} is scan-level; it holds no candidates",
                fix="create a project with item_kind='candidate'",
            )
        self.add_scans([seriesuid])
        centers = np.asarray(centers, dtype=float).reshape(-1, 3)
        with self.store.session() as session:
            scan = session.scalars(
                select(Scan).where(Scan.project_id == self.project_id, Scan.seriesuid == seriesuid)
            ).one()
            start = session.scalar(select(func.count()).where(Item.scan_id == scan.id)) or 0
            keys = [candidate_key(seriesuid, start + k) for k in range(len(centers))]
            session.add_all(
                Item(
                    project_id=self.project_id,
                    scan_id=scan.id,
                    kind="candidate",
                    key=key,
                    coord_x=float(c[0]),
                    coord_y=float(c[1]),
                    coord_z=float(c[2]),
                )
                for key, c in zip(keys, centers, strict=True)
            )
        return keys

    def items(self) -> list[PoolItem]:
        """Every item, by key, with its first label (cycle, annotator, time) if any."""
        with self.store.session() as session:
            first = (
                select(
                    Annotation.item_id,
                    func.min(Annotation.id).label("annotation_id"),
                )
                .group_by(Annotation.item_id)
                .subquery()
            )
            rows = session.execute(
                select(Item.key, Item.kind, Scan.seriesuid, Cycle.number, Annotation)
                .join(Scan, Item.scan_id == Scan.id)
                .outerjoin(first, first.c.item_id == Item.id)
                .outerjoin(Annotation, Annotation.id == first.c.annotation_id)
                .outerjoin(Cycle, Cycle.id == Annotation.cycle_id)
                .where(Item.project_id == self.project_id)
                .order_by(Item.key)
            ).all()
        return [
            PoolItem(
                key,
                kind,  # type: ignore[arg-type]
                uid,
                number if ann is not None else None,
                ann.annotator if ann is not None else None,
                ann.created_at if ann is not None else None,
            )
            for key, kind, uid, number, ann in rows
        ]

    def unlabelled(self) -> list[str]:
        return [i.key for i in self.items() if not i.labelled]

    def labelled(self) -> list[str]:
        return [i.key for i in self.items() if i.labelled]

    def record_labels(
        self,
        labels: Sequence[LabelRecord],
        *,
        annotator: str,
        cycle: int | None,
        source: str = "human",
    ) -> RecordedLabels:
        """Record labels, all or nothing, in one transaction.

        Items already labelled (by anyone) are skipped and reported, so answering a query
        twice records nothing the second time. Were two writers to race, the unique
        (item, annotator) constraint still keeps a label from being stored twice.

        Raises:
            InputError: an item is not in the pool, or a finding is not finite.
        """
        by_key = {r.item: r for r in labels}
        if len(by_key) != len(labels):
            raise InputError("a label names the same item twice", fix="give each item once")
        try:
            return self._record(by_key, annotator=annotator, cycle=cycle, source=source)
        except IntegrityError as exc:
            # Another writer labelled one of these items between our check and our insert;
            # the unique (item, annotator) constraint refused the duplicate and nothing of
            # this call was stored.
            raise InputError(
                f"{annotator} recorded labels for these items at the same moment elsewhere; "
                "nothing was recorded by this call",
                fix="run the command again (already recorded labels are skipped)",
            ) from exc

    def _record(
        self, by_key: Mapping[str, LabelRecord], *, annotator: str, cycle: int | None, source: str
    ) -> RecordedLabels:
        with self.store.session() as session:
            items = {
                i.key: i
                for i in session.scalars(
                    select(Item).where(Item.project_id == self.project_id, Item.key.in_(by_key))
                )
            }
            missing = sorted(set(by_key) - set(items))
            if missing:
                raise InputError(
                    f"{len(missing)} labelled items are not in the pool (e.g. {missing[0]!r})",
                    fix="label only items of the current query",
                )
            done = set(
                session.scalars(
                    select(Item.key)
                    .join(Annotation, Annotation.item_id == Item.id)
                    .where(Item.id.in_([i.id for i in items.values()]))
                )
            )
            cycle_id = None
            if cycle is not None:
                cycle_id = session.scalar(
                    select(Cycle.id).where(
                        Cycle.project_id == self.project_id, Cycle.number == cycle
                    )
                )
            recorded = []
            for key in sorted(by_key):
                if key in done:
                    continue
                record = by_key[key]
                findings = np.asarray(record.findings, dtype=float).reshape(-1, 4)
                if not np.isfinite(findings).all():
                    raise InputError(
                        f"a finding of {key!r} is not a finite number", fix="fix the table"
                    )
                minutes = record.minutes
                annotation = Annotation(
                    item_id=items[key].id,
                    cycle_id=cycle_id,
                    annotator=annotator,
                    source=source,
                    n_findings=len(findings),
                    minutes=None if minutes is None or not math.isfinite(minutes) else minutes,
                )
                annotation.findings = [
                    Finding(
                        scan_id=items[key].scan_id,
                        coord_x=f[0],
                        coord_y=f[1],
                        coord_z=f[2],
                        diameter_mm=f[3],
                    )
                    for f in findings.tolist()
                ]
                session.add(annotation)
                recorded.append(key)
        return RecordedLabels(tuple(recorded), tuple(sorted(done)))

    def labels(self) -> dict[str, np.ndarray]:
        """The answer of every labelled item: item key -> (N, 4) world mm x, y, z, diameter.

        N = 0 is a labelled negative. Findings a reviewer rejected, or that were deleted in
        the annotation service, are left out. An item labelled by several readers gives its first
        answer (the one that counts in the loop, as :meth:`items` reports it), so a second
        reader's opinion never changes what a cycle trained on.
        """
        with self.store.session() as session:
            first = (
                select(Annotation.item_id, func.min(Annotation.id).label("annotation_id"))
                .join(Item, Item.id == Annotation.item_id)
                .where(Item.project_id == self.project_id)
                .group_by(Annotation.item_id)
                .subquery()
            )
            keys = dict(
                session.execute(
                    select(first.c.annotation_id, Item.key).join(Item, Item.id == first.c.item_id)
                ).all()
            )
            rows = session.execute(
                select(
                    Finding.annotation_id,
                    Finding.coord_x,
                    Finding.coord_y,
                    Finding.coord_z,
                    Finding.diameter_mm,
                )
                .where(
                    Finding.annotation_id.in_(keys),
                    # a reviewer's rejection or the reader's deletion takes a finding out
                    or_(Finding.status.is_(None), Finding.status.notin_(_NOT_COUNTED)),
                )
                .order_by(Finding.id)
            ).all()
        found: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in keys.values()}
        for annotation_id, *values in rows:
            found[keys[annotation_id]].append(tuple(values))  # type: ignore[arg-type]
        return {
            key: np.asarray(values, dtype=float).reshape(-1, 4)
            for key, values in sorted(found.items())
        }

    def annotation_minutes(self) -> float | None:
        """Total minutes of every item's first answer; None when an answer has no time."""
        with self.store.session() as session:
            first = (
                select(func.min(Annotation.id).label("annotation_id"))
                .join(Item, Item.id == Annotation.item_id)
                .where(Item.project_id == self.project_id)
                .group_by(Annotation.item_id)
                .subquery()
            )
            minutes = session.scalars(
                select(Annotation.minutes).where(Annotation.id.in_(select(first.c.annotation_id)))
            ).all()
        if any(m is None for m in minutes):
            return None
        return float(sum(minutes))

    def labels_table(self) -> pd.DataFrame:
        """Every recorded finding as a LUNA16 annotations table (plus annotator and cycle)."""
        with self.store.session() as session:
            rows = session.execute(
                select(
                    Scan.seriesuid,
                    Finding.coord_x,
                    Finding.coord_y,
                    Finding.coord_z,
                    Finding.diameter_mm,
                    Annotation.annotator,
                    Cycle.number,
                )
                .join(Annotation, Finding.annotation_id == Annotation.id)
                .join(Scan, Finding.scan_id == Scan.id)
                .outerjoin(Cycle, Annotation.cycle_id == Cycle.id)
                .where(Scan.project_id == self.project_id)
                .order_by(Scan.seriesuid, Finding.id)
            ).all()
        columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "annotator", "cycle"]
        return pd.DataFrame(rows, columns=columns)
