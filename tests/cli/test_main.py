"""The command line contract: --version, --help everywhere, exit code 2 for usage errors."""

from __future__ import annotations

import activecad


def test_version(run_cli) -> None:
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"activecad {activecad.__version__}"


def test_unknown_command_is_a_usage_error(run_cli) -> None:
    result = run_cli("no-such-command")
    assert result.exit_code == 2


def test_every_command_has_help(run_cli) -> None:
    from typer.main import get_command

    from activecad.cli.main import app

    root = get_command(app)
    paths: list[list[str]] = []

    def walk(command, prefix: list[str]) -> None:  # type: ignore[no-untyped-def]
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(root, [])
    for path in paths:
        result = run_cli(*path, "--help")
        assert result.exit_code == 0, (path, result.stderr)
        assert "Usage" in result.stdout
