"""Entry point of the ``activecad`` command.

Exit codes: 0 success, 1 bad input (an :class:`~activecad.errors.ActivecadError`, printed as
one line; ``-v`` adds the traceback), 2 usage errors (typer/click's own).
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

import activecad
from activecad.cli import demo, detector, eval, info, phantom
from activecad.errors import ActivecadError

app = typer.Typer(
    name="activecad",
    help="Annotation-efficient computer-aided detection in CT and chest radiographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
_state = {"verbose": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"activecad {activecad.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details and show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


info.register(app)
phantom.register(app)
eval.register(app)
detector.register(app)
demo.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; bad input exits 1 with a one-line message.

    Usage errors (unknown command or option, missing argument) are click's own and exit 2.
    """
    try:
        app(args=argv, prog_name="activecad")
    except ActivecadError as exc:
        if _state["verbose"]:
            err_console.print_exception()
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
