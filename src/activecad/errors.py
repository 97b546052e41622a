"""Exceptions that the command line turns into one-line messages and exit code 1."""

from __future__ import annotations

from pathlib import Path


class ActivecadError(Exception):
    """Base class of every error activecad raises on purpose."""


class InputError(ActivecadError, ValueError):
    """Bad input from the user: a file, a field or a value that cannot be used.

    The message names what was wrong, where, and how to fix it, so the command line can
    print it on one line without a traceback.

    Args:
        problem: what is wrong, e.g. ``"column 'coordX' is missing"``.
        path: the file or folder concerned, if any.
        fix: how the user can fix it, if there is an obvious way.
    """

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = Path(path) if path is not None else None
        self.fix = fix
        parts = [f"{self.path}: {problem}" if self.path is not None else problem]
        if fix:
            # The fix is a sentence of its own: "x.csv: column 'id' is missing. Use the header ..."
            parts.append(fix[:1].upper() + fix[1:])
        super().__init__(". ".join(p.rstrip(".") for p in parts) + ".")
