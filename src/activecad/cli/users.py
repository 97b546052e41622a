"""``activecad users add|list|revoke``: the people of the annotation service and their tokens.

``users add NAME --role annotator|reviewer|admin --db URL`` prints a new API token once (the
database keeps only its SHA-256); adding an existing user changes its role and gives it one
more token. ``users revoke NAME`` revokes every token of a user. ``--db`` takes a SQLAlchemy
URL or the path of a SQLite file (a run's ``activecad.db``); ``$ACTIVECAD_DB`` is its default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from activecad.errors import InputError

users_app = typer.Typer(
    help="Users and API tokens of the annotation service (activecad serve).",
    no_args_is_help=True,
    add_completion=False,
)

_Db = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="URL",
        envvar="ACTIVECAD_DB",
        help="The store: a SQLite file (a run's activecad.db), sqlite:///PATH or "
        "postgresql+psycopg://user@host/db (default: $ACTIVECAD_DB).",
        show_default=False,
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def database_url(value: str) -> str:
    """A ``--db`` value as a SQLAlchemy URL; a SQLite file must exist.

    Raises:
        InputError: a SQLite file that does not exist (a typo would otherwise make an empty
            database).
    """
    from sqlalchemy.engine import make_url

    from activecad.store import sqlite_url

    if "://" not in value:
        path = Path(value)
        if not path.is_file():
            raise InputError(
                "the database file does not exist",
                path=path,
                fix="pass the run's activecad.db (made by 'activecad al run') or a "
                "postgresql+psycopg:// URL",
            )
        return sqlite_url(path)
    try:
        url = make_url(value)
    except Exception as exc:
        raise InputError(
            f"cannot read the database URL {value!r}",
            fix="use e.g. sqlite:///run/activecad.db or postgresql+psycopg://user@host/db",
        ) from exc
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        if not path.is_file():
            raise InputError(
                "the database file does not exist",
                path=path,
                fix="pass the run's activecad.db (made by 'activecad al run')",
            )
    return value


@users_app.command("add")
def add_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user's name (as annotator).")],
    role: Annotated[
        str,
        typer.Option("--role", metavar="ROLE", help="annotator, reviewer or admin."),
    ],
    db: _Db,
    as_json: _Json = False,
) -> None:
    """Add a user (or change its role) and print a new API token, shown only this once."""
    from activecad.service.auth import add_user
    from activecad.store import open_store

    store = open_store(database_url(db))
    try:
        token = add_user(store, name, role)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"name": name, "role": role, "token": token}))
    else:
        typer.echo(token)
        typer.echo(
            f"token of {name} ({role}), shown only now; send 'Authorization: Bearer <token>'",
            err=True,
        )


@users_app.command("list")
def list_command(db: _Db, as_json: _Json = False) -> None:
    """List the users: name, role, when added, how many live tokens."""
    from activecad.service.auth import list_users
    from activecad.store import open_store

    store = open_store(database_url(db))
    try:
        users = list_users(store)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(users, indent=2))
        return
    for user in users:
        typer.echo(f"{user['name']}\t{user['role']}\t{user['created']}\t{user['tokens']} tokens")


@users_app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user whose tokens to revoke.")],
    db: _Db,
    as_json: _Json = False,
) -> None:
    """Revoke every token of a user (its answers and audit trail stay)."""
    from activecad.service.auth import revoke_user
    from activecad.store import open_store

    store = open_store(database_url(db))
    try:
        revoked = revoke_user(store, name)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"name": name, "revoked": revoked}))
    else:
        typer.echo(f"revoked {revoked} tokens of {name}")


def register(app: typer.Typer) -> None:
    """Add the ``users`` command group to ``app``."""
    app.add_typer(users_app, name="users")
