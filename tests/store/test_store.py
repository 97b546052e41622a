"""The store on SQLite and on a real PostgreSQL server: schema, migrations, constraints."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from activecad.errors import InputError
from activecad.store import (
    Annotation,
    Base,
    Cycle,
    Item,
    Project,
    Query,
    Scan,
    open_store,
)


def _scan_item(session, project_name: str = "p") -> Item:
    project = Project(name=project_name)
    session.add(project)
    session.flush()
    scan = Scan(project_id=project.id, seriesuid="1.2.3")
    session.add(scan)
    session.flush()
    item = Item(project_id=project.id, scan_id=scan.id, kind="scan", key="1.2.3")
    session.add(item)
    session.flush()
    return item


def test_migrated_schema_equals_the_models(db_url):
    store = open_store(db_url)
    try:
        with store.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert diff == []
            names = set(inspect(connection).get_table_names())
        assert {t for t in Base.metadata.tables} <= names
        assert "alembic_version" in names
    finally:
        store.close()
    # Opening again (upgrade to head once more) changes nothing and does not fail.
    open_store(db_url).close()


def test_a_label_is_never_recorded_twice(db_url):
    store = open_store(db_url)
    try:
        with store.session() as session:
            item_id = _scan_item(session).id
            session.add(Annotation(item_id=item_id, annotator="alice"))
        with pytest.raises(IntegrityError), store.session() as session:
            session.add(Annotation(item_id=item_id, annotator="alice"))
        with store.session() as session:
            # another reader of the same item is allowed; the duplicate left nothing behind
            session.add(Annotation(item_id=item_id, annotator="bob"))
        with store.session() as session:
            who = session.scalars(select(Annotation.annotator).order_by(Annotation.annotator))
            assert list(who) == ["alice", "bob"]
    finally:
        store.close()


def test_queries_hold_one_row_per_item_and_rank_and_foreign_keys_hold(db_url):
    store = open_store(db_url)
    try:
        with store.session() as session:
            item = _scan_item(session)
            cycle = Cycle(project_id=item.project_id, number=0, strategy="random", seed=0, budget=1)
            session.add(cycle)
            session.flush()
            session.add(Query(cycle_id=cycle.id, item_id=item.id, strategy="random", rank=1))
            ids = (cycle.id, item.id, item.project_id)
        with pytest.raises(IntegrityError), store.session() as session:
            session.add(Query(cycle_id=ids[0], item_id=ids[1], strategy="random", rank=2))
        with pytest.raises(IntegrityError), store.session() as session:
            session.add(Annotation(item_id=9999, annotator="alice"))
        with pytest.raises(IntegrityError), store.session() as session:
            session.add(Cycle(project_id=ids[2], number=0, strategy="random", seed=0, budget=1))
    finally:
        store.close()


def test_a_bad_url_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(InputError, match="cannot read the database URL"):
        open_store("not a url")


def test_the_first_revision_downgrades_and_upgrades_again(db_url):
    from alembic import command

    from activecad.store import alembic_config

    open_store(db_url).close()
    command.downgrade(alembic_config(db_url), "base")
    store = open_store(db_url, migrate=False)
    try:
        with store.engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        store.close()
    open_store(db_url).close()  # back to head
