"""Entry point of the ``activecad`` command.

The contract every command follows (README, "Command line"):

* exit 0 on success; 1 on bad input (an :class:`~activecad.errors.ActivecadError`, a file
  that cannot be read or written), printed as one ``error: ...`` line; 2 on usage errors
  (unknown option, missing argument, a value out of range), printed as one ``error: ...``
  line that points to ``--help``;
* no traceback without ``-v``; ``-v``/``--verbose`` is accepted anywhere on the line
  (``activecad info -v x.mhd``) and adds INFO logs and tracebacks;
* warnings are ``warning: ...`` lines on stderr (see :mod:`activecad.cli._common`).

Commands register themselves with one line each, at the bottom (``X.register(app)``).
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer import rich_utils
from typer._click import exceptions as click_exceptions
from typer.core import TyperArgument, TyperGroup, TyperOption

import activecad
from activecad.cli import (
    al,
    cache,
    demo,
    detect,
    detector,
    eval,
    importer,
    info,
    mine,
    phantom,
    search,
    serve,
    users,
)
from activecad.cli import eval_boxes as _eval_boxes  # noqa: F401  (registers 'eval boxes')
from activecad.cli import train_cxr as _train_cxr  # noqa: F401  (registers 'train cxr')
from activecad.cli import train_fpr as _train_fpr  # noqa: F401  (registers 'train fpr')
from activecad.cli import train_meld as _train_meld  # noqa: F401  (registers 'train meld')
from activecad.cli._common import setup_logging
from activecad.errors import ActivecadError

_VERBOSE = ("-v", "--verbose")


def _verbose_in(args: Sequence[str]) -> bool:
    for arg in args:
        if arg == "--":
            return False
        if arg in _VERBOSE:
            return True
    return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _ActivecadGroup(TyperGroup):
    """The root command: ``-v`` anywhere, and every error as one line with its exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # `-v` after the sub-command (`activecad info -v x.mhd`) is moved to the front,
        # where the root option lives; nothing after `--` is touched.
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in _VERBOSE]
        rest = [a for a in args[:end] if a not in _VERBOSE]
        return super().parse_args(ctx, flags[:1] + rest + args[end:])

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        verbose = _verbose_in(args)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error(_one_line(exc.format_message()).rstrip(".") + hint + ".")
            sys.exit(exc.exit_code)
        except typer.Abort:
            _error("aborted")
            sys.exit(1)
        except ActivecadError as exc:
            _fail(exc, str(exc), verbose)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(
                exc,
                f"{where}{exc.strerror or exc}. Check the path and its permissions.",
                verbose,
            )
        except Exception as exc:
            _fail(
                exc,
                f"unexpected {type(exc).__name__}: {_one_line(str(exc))}. This is a bug; rerun "
                "with -v for the traceback and report it.",
                verbose,
            )
        sys.exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _fail(exc: BaseException, message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    _error(_one_line(message))
    sys.exit(1)


# Usage lines and option tables show names (`PATH`, `SCANS...`, `--out PATH`), not typer
# 0.29's `{path}` / `<list[Path]>`, and flags show no type. typer's major version is pinned.
def _argument_usage(self: TyperArgument) -> str:
    name = (self.metavar or self.name or "arg").upper()
    if self.nargs != 1:
        name += "..."
    return name if self.required else f"[{name}]"


def _argument_name(self: TyperArgument) -> str:
    name = (self.metavar or self.name or "arg").upper()
    return name + "..." if self.nargs != 1 else name


def _argument_hint(self: TyperArgument) -> str:
    return f"'{_argument_name(self)}'"


def _argument_type(self: TyperArgument, ctx: Any) -> str | None:
    return None


def _option_type(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag or self.count:
        return None
    if self.metavar is not None:
        return self.metavar
    shown = TyperOption.display_type(self, ctx).strip("<>")
    if shown.startswith("list[") and shown.endswith("]"):
        shown = shown[5:-1]
    return shown.upper() + ("..." if self.nargs != 1 else "")


def _unwrap(paragraph: str) -> str:
    # Docstrings wrap at 100 columns; the terminal wraps again. Keep `\b` blocks verbatim.
    return paragraph if paragraph.startswith("\b") else " ".join(paragraph.split())


_typer_command_help = rich_utils._make_command_help


def _command_help(*, help_text: str, markup_mode: Any) -> Any:
    first = inspect.cleandoc(help_text).split("\n\n")[0]
    return _typer_command_help(help_text=_unwrap(first), markup_mode=markup_mode)


def _paragraphs(paragraphs: list[str], markup_mode: Any) -> str:
    return "\n\n".join(_unwrap(p) for p in paragraphs)


# typer 0.29's rich help keeps a docstring's single line breaks ("lesions and" / "radiographs").
rich_utils._make_command_help = _command_help
rich_utils._fix_linebreaks = _paragraphs
TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
TyperArgument._rich_display_name = _argument_name  # type: ignore[method-assign]
TyperArgument.display_type_rich = _argument_type
TyperArgument.get_error_hint = _argument_hint  # type: ignore[method-assign]  # type: ignore[method-assign]
TyperOption.display_type_rich = _option_type  # type: ignore[method-assign]


app = typer.Typer(
    name="activecad",
    cls=_ActivecadGroup,
    help="Annotation-efficient computer-aided detection of lung nodules in CT and chest "
    "radiographs. Every command: -v (anywhere) for details and tracebacks; exit 0 ok, "
    "1 bad input, 2 usage error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"activecad {activecad.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log details and show tracebacks (anywhere on the line)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    setup_logging(verbose)


info.register(app)
phantom.register(app)
eval.register(app)
detector.register(app)
detect.register(app)
cache.register(app)
demo.register(app)
importer.register(app)
al.register(app)
serve.register(app)
users.register(app)
search.register(app)
mine.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the command line (see the module docstring for exit codes and messages)."""
    app(args=argv, prog_name="activecad")


if __name__ == "__main__":
    main()
