"""Fixtures shared by the whole suite: the command line and a tiny generated cohort."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from activecad.cli.main import main


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


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
