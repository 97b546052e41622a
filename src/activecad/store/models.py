"""The database schema: projects, scans, pool items, findings, annotations, cycles, queries,
model versions; and for the annotation service: users, API tokens, leases, audit events.

Invariants are held by the database, not by care: foreign keys everywhere; one item per key
in a project; one annotation per (item, annotator), so a label is never recorded twice; one
query row per (cycle, item) and per (cycle, rank); one cycle per number in a project; one
active lease per (item, reader) and per user, so two annotators never hold the same item
(partial unique indexes, on SQLite and PostgreSQL alike); audit events are append-only
(triggers refuse UPDATE and DELETE). Findings are in world mm, x-y-z (LUNA16 columns).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ROLES",
    "Annotation",
    "ApiToken",
    "AuditEvent",
    "Base",
    "Cycle",
    "Finding",
    "Item",
    "Lease",
    "ModelVersion",
    "Project",
    "Query",
    "Scan",
    "User",
]

#: The roles of the annotation service, least to most rights.
ROLES = ("annotator", "reviewer", "admin")
#: The states of a finding made in the annotation service (NULL for other findings).
FINDING_STATUSES = ("proposed", "accepted", "rejected", "deleted")
#: The states of a lease; only ``active`` holds an item.
LEASE_STATES = ("active", "answered", "released", "expired")

# Named constraints, so migrations can drop and alter them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Project(Base):
    """One active-learning run or annotation project."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    item_kind: Mapped[str] = mapped_column(String(20), default="scan")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (CheckConstraint("item_kind IN ('scan', 'candidate')", name="item_kind"),)


class Scan(Base):
    """A CT series of a project, by seriesuid."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    seriesuid: Mapped[str] = mapped_column(String(200))
    path: Mapped[str | None] = mapped_column(String(1000))

    __table_args__ = (UniqueConstraint("project_id", "seriesuid"),)


class Item(Base):
    """A unit of annotation in the pool: a whole scan, or one candidate inside a scan.

    ``key`` is the seriesuid for a scan and ``<seriesuid>#<n>`` for a candidate, whose
    centre is in world mm (x, y, z).
    """

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    key: Mapped[str] = mapped_column(String(250))
    coord_x: Mapped[float | None] = mapped_column(Float)
    coord_y: Mapped[float | None] = mapped_column(Float)
    coord_z: Mapped[float | None] = mapped_column(Float)

    scan: Mapped[Scan] = relationship()

    __table_args__ = (
        UniqueConstraint("project_id", "key"),
        CheckConstraint("kind IN ('scan', 'candidate')", name="kind"),
    )


class Cycle(Base):
    """One round r of the loop: its strategy, seed, budget and the model that chose."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(100))
    seed: Mapped[int] = mapped_column(Integer)
    budget: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("project_id", "number"),
        CheckConstraint("number >= 0", name="number"),
        CheckConstraint("budget >= 0", name="budget"),
    )


class Query(Base):
    """One item asked for in a cycle, with its score (NULL when not finite) and rank (1 = first)."""

    __tablename__ = "queries"

    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    strategy: Mapped[str] = mapped_column(String(100))
    score: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)

    item: Mapped[Item] = relationship()
    cycle: Mapped[Cycle] = relationship()

    __table_args__ = (
        UniqueConstraint("cycle_id", "item_id"),
        UniqueConstraint("cycle_id", "rank"),
        CheckConstraint("rank >= 1", name="rank"),
    )


class Annotation(Base):
    """A label of one item by one annotator (who, when, in which cycle, and from which source).

    ``n_findings`` is 0 for a labelled negative. The unique (item, annotator) constraint is
    what keeps a label from being recorded twice, whatever the caller does.
    """

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id", ondelete="SET NULL"))
    annotator: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20), default="human")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    n_findings: Mapped[int] = mapped_column(Integer, default=0)
    minutes: Mapped[float | None] = mapped_column(Float)

    item: Mapped[Item] = relationship()
    findings: Mapped[list[Finding]] = relationship(
        back_populates="annotation", cascade="all, delete-orphan"
    )

    __table_args__ = (
        UniqueConstraint("item_id", "annotator"),
        CheckConstraint("source IN ('human', 'simulated', 'import')", name="source"),
        CheckConstraint("n_findings >= 0", name="n_findings"),
    )


class Finding(Base):
    """A nodule (or other lesion) of a scan, in world mm, x-y-z, with its diameter in mm.

    Ground truth imported from a table has no annotation; a label's findings belong to it.
    A finding made in the annotation service also has a ``status`` (``proposed`` until a
    reviewer accepts or rejects it; ``deleted`` when taken back: its row stays), an
    ``author``, optional ``malignancy`` (1-5, as LIDC rates it) and the ``lease`` it was
    made under; it joins its annotation when the item is submitted.
    """

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    annotation_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotations.id", ondelete="CASCADE"), index=True
    )
    coord_x: Mapped[float] = mapped_column(Float)
    coord_y: Mapped[float] = mapped_column(Float)
    coord_z: Mapped[float] = mapped_column(Float)
    diameter_mm: Mapped[float] = mapped_column(Float)
    status: Mapped[str | None] = mapped_column(String(20))
    author: Mapped[str | None] = mapped_column(String(200))
    malignancy: Mapped[int | None] = mapped_column(Integer)
    lease_id: Mapped[int | None] = mapped_column(
        ForeignKey("leases.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    annotation: Mapped[Annotation | None] = relationship(back_populates="findings")

    __table_args__ = (
        CheckConstraint("diameter_mm >= 0", name="diameter_mm"),
        CheckConstraint(
            "status IS NULL OR status IN ('proposed', 'accepted', 'rejected', 'deleted')",
            name="status",
        ),
        CheckConstraint(
            "malignancy IS NULL OR (malignancy >= 1 AND malignancy <= 5)", name="malignancy"
        ),
    )


class ModelVersion(Base):
    """A trained model of a project: where its files are, what it was trained on, its metrics."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    cycle_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))
    n_labelled: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "path"),)


class User(Base):
    """A person of the annotation service, with a role (annotator < reviewer < admin).

    ``name`` is what an annotation records as its annotator.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (CheckConstraint("role IN ('annotator', 'reviewer', 'admin')", name="role"),)


class ApiToken(Base):
    """An API token of a user, kept only as its SHA-256 (hex); revoked when ``revoked_at``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship()


class Lease(Base):
    """One item handed to one user until ``expires_at`` (UTC), for one query's cycle.

    ``reader`` is 1 for the queue's first reader and 2, 3, ... for readers a reviewer
    assigns on purpose. While ``state`` is ``active`` no other lease of the same
    (item, reader) can be active, and the user holds no other active lease: both are
    partial unique indexes, so the database refuses a second holder whatever the callers
    race. An active lease past ``expires_at`` is expired by the next queue request.
    """

    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id", ondelete="SET NULL"))
    reader: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(20), default="active")
    leased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    item: Mapped[Item] = relationship()
    user: Mapped[User] = relationship()

    __table_args__ = (
        CheckConstraint("state IN ('active', 'answered', 'released', 'expired')", name="state"),
        CheckConstraint("reader >= 1", name="reader"),
        Index(
            "uq_leases_active_item_reader",
            "item_id",
            "reader",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        Index(
            "uq_leases_active_user",
            "user_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )


class AuditEvent(Base):
    """One change made through the annotation service: who, when, what, before and after.

    Append-only: the migration adds triggers that refuse UPDATE and DELETE on this table.
    There is no foreign key, so the trail outlives what it describes.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    entity: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    before: Mapped[dict[str, object] | None] = mapped_column(JSON)
    after: Mapped[dict[str, object] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_events_entity", "entity", "entity_id"),)
