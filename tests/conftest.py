"""Fixtures shared by the whole suite: the command line and a tiny generated cohort."""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from activecad.cli.main import main


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests' preprocessed scans out of the user's own cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACTIVECAD_CACHE", str(tmp_path_factory.mktemp("activecad-cache")))
        yield


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """Run ``activecad ARGS`` in-process and capture exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = int(exc.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few small-preset phantom patients written in the real formats (generated once)."""
    from activecad.phantom import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, patients=4, seed=0, preset="small")
    return out


@pytest.fixture(scope="session")
def postgresql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server for the test session (pgserver's wheel), as a psycopg URL.

    It must start, in CI too: a failure to start fails the tests that use it, never skips.
    """
    folder = tmp_path_factory.mktemp("pg")
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime folder on import, which warns when
        # XDG_RUNTIME_DIR is unset (CI containers); the server does not use that folder.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver

        server = pgserver.get_server(folder, cleanup_mode="stop")
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    try:
        yield f"postgresql+psycopg://postgres:@/postgres?host={socket_dir}"
    finally:
        server.cleanup()


_pg_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database per test: a SQLite file, or a fresh database on the session's server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    import psycopg

    base = request.getfixturevalue("postgresql_url")
    name = f"test_{next(_pg_databases)}"
    conninfo = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return base.replace("@/postgres?", f"@/{name}?")
