"""The activecad database: SQLite in the run folder by default, PostgreSQL for teams.

Open a store with :func:`open_store` (it migrates the schema to the newest revision with
Alembic, configured in code: no alembic.ini) and use one session per unit of work::

    from activecad.store import open_store

    store = open_store("sqlite:///runs/a/activecad.db")   # or "postgresql+psycopg://..."
    with store.session() as session:                         # commits, or rolls back on error
        session.add(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from activecad.errors import InputError
from activecad.store.models import (
    Annotation,
    Base,
    Cycle,
    Finding,
    Item,
    ModelVersion,
    Project,
    Query,
    Scan,
)

__all__ = [
    "MIGRATIONS",
    "Annotation",
    "Base",
    "Cycle",
    "Finding",
    "Item",
    "ModelVersion",
    "Project",
    "Query",
    "Scan",
    "Store",
    "alembic_config",
    "open_store",
    "sqlite_url",
]

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute, so it does not depend on the cwd)."""
    return f"sqlite:///{Path(path).resolve()}"


def alembic_config(url: str) -> Config:
    """An Alembic configuration built in code for the store at ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_foreign_keys(dbapi_connection: object, _record: object) -> None:
    # SQLite ignores foreign keys unless each connection asks for them.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass
class Store:
    """An open database: its engine and a session factory.

    Attributes:
        url: the SQLAlchemy URL (password hidden in ``repr``).
        engine: the engine.
    """

    url: str
    engine: Engine

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and a parent folder check.

    Raises:
        InputError: the URL cannot be parsed, or names a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InputError(
            f"cannot read the database URL {url!r}",
            fix="use e.g. sqlite:///run/activecad.db or postgresql+psycopg://user@host/db",
        ) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise InputError(
                "the folder of the SQLite database does not exist",
                path=folder,
                fix="create the folder or pass another --db",
            )
    try:
        engine = create_engine(url)
    except ImportError as exc:
        raise InputError(
            f"the database driver of {parsed.drivername!r} is not installed ({exc.name})",
            fix="install it (PostgreSQL: pip install 'psycopg[binary]') or use sqlite:///",
        ) from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the database at ``url``, migrated to the newest schema when ``migrate``.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/activecad.db`` or
            ``postgresql+psycopg://user:password@host/db`` (or ``...?host=/socket/dir``).
        migrate: run Alembic's upgrade to head first (safe to repeat).

    Raises:
        InputError: bad URL, missing driver, or a database that cannot be reached.
    """
    engine = create_store_engine(url)
    if migrate:
        try:
            with engine.begin() as connection:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            engine.dispose()
            shown = make_url(url).render_as_string(hide_password=True)
            reason = " ".join(str(exc.orig).split())[:200]
            raise InputError(
                f"cannot open the database {shown}: {reason}",
                fix="check that the server runs and the URL, user and password are right",
            ) from exc
    return Store(url, engine)
