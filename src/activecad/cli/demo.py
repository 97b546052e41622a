"""Command(s) of the `activecad` CLI for this area. Filled in by the owning module."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
