"""Helpers every ``activecad`` command shares: ``--out``, atomic writing, ``-v``, warnings.

The command-line contract (README, "Command line") in code:

* ``--out`` is a **file** for commands that write one table (``detect``): use
  :func:`output_file`. It is a **folder** for commands that write several files (``eval``,
  ``train``, ``phantom``, ``demo``): use :func:`output_folder`. Both check the path before
  any work starts, so a wrong ``--out`` fails in a second, not after an hour.
* A failed command leaves nothing half-written: write through :func:`atomic_output`, which
  hands out a temporary path next to the target and moves it into place only on success.
* Warnings go to stderr as ``warning: ...`` through the ``activecad`` logger
  (:func:`warn`); ``-v`` adds ``info: ...`` lines and tracebacks (:func:`setup_logging`).
* Errors are :class:`~activecad.errors.InputError` (exit 1, one line); wrong option values
  are usage errors (exit 2): raise :func:`usage_error` from a check or a callback.

Typical use in a command::

    from activecad.cli._common import atomic_output, output_folder

    out = output_folder(out, writes="froc.json, froc.csv and froc.png")
    ...  # all the work and every check
    with atomic_output(out) as tmp:  # tmp: a fresh folder beside out
        (tmp / "froc.json").write_text(text)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from activecad.errors import InputError

__all__ = [
    "FILE_SUFFIXES",
    "atomic_output",
    "output_file",
    "output_folder",
    "setup_logging",
    "usage_error",
    "warn",
]

logger = logging.getLogger("activecad")

# Suffixes that name a file, never a folder: `--out results.json` on a command that writes a
# folder is a mistake that used to create a folder called results.json.
FILE_SUFFIXES = frozenset(
    {".csv", ".json", ".png", ".txt", ".yaml", ".yml", ".pt", ".mhd", ".nii", ".gz", ".dcm"}
)


def output_file(path: Path, *, option: str = "--out") -> Path:
    """Check that ``path`` can be written as one file, and create its parent folder.

    An existing file is replaced (only when the command succeeds, if written through
    :func:`atomic_output`); an existing folder is refused.

    Args:
        path: the file the command will write, e.g. ``detections.csv``.
        option: the option's name, used in the message.

    Returns:
        ``path`` unchanged.

    Raises:
        InputError: ``path`` is an existing folder, or its parent is an existing file or
            cannot be created.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{option} must be a file, but this is a folder",
            path=path,
            fix=f"pass a file name, e.g. {option} {path / 'out.csv'}",
        )
    _make_parent(path, option)
    return path


def output_folder(path: Path, *, writes: str = "", option: str = "--out") -> Path:
    """Check that ``path`` can be used as an output folder, and say what goes in it.

    The folder need not exist; an existing one is reused (files of the same names are
    replaced, others are kept). Nothing is created here: :func:`atomic_output` creates the
    folder when the command succeeds, so a failed command leaves no empty folder behind.

    Args:
        path: the folder the command will write into.
        writes: what the command writes in it, e.g. ``"froc.json, froc.csv and froc.png"``;
            logged at INFO level (shown with ``-v``) and named in the error messages.
        option: the option's name, used in the message.

    Returns:
        ``path`` unchanged.

    Raises:
        InputError: ``path`` is an existing file, ends in a file suffix such as ``.json``
            (a folder of that name is almost always a mistake), or its parent is a file.
    """
    path = Path(path)
    what = f" ({writes} are written in it)" if writes else ""
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{option} must be a folder{what}, but this is a file",
            path=path,
            fix=f"pass a folder, e.g. {option} {path.with_suffix('')}_out",
        )
    if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
        raise InputError(
            f"{option} is a folder{what}, but this names a {path.suffix} file",
            path=path,
            fix=f"pass a folder, e.g. {option} {path.with_suffix('')}",
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(
                    f"{option}: {parent} is a file, not a folder",
                    path=path,
                    fix=f"choose another {option}",
                )
            break
    if writes:
        logger.info("writing %s in %s", writes, path)
    return path


def _make_parent(path: Path, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(
            f"{option}: a part of the folder {path.parent} is a file",
            path=path,
            fix=f"choose another {option}",
        ) from exc
    except PermissionError as exc:
        raise InputError(
            f"{option}: no permission to create {path.parent}",
            path=path,
            fix=f"choose another {option}",
        ) from exc


@contextlib.contextmanager
def atomic_output(path: Path, *, folder: bool | None = None) -> Iterator[Path]:
    """Write a file or a folder so that a failed command leaves nothing half-written.

    Yields a temporary path in the same folder as ``path`` (so the final rename stays on
    one file system). Write the file, or the folder's files, there. When the block ends
    without an exception the result is moved into place: a file replaces ``path`` in one
    ``os.replace``; a folder's files are moved into ``path`` one by one (replacing files of
    the same names, keeping other files already there). When the block raises, the
    temporary path is removed and ``path`` is left as it was.

    Args:
        path: the final file or folder.
        folder: ``True`` to yield a freshly created empty folder, ``False`` for a file path
            that does not exist yet; ``None`` (default) guesses: a folder when ``path`` is
            an existing folder or has no file suffix.

    Yields:
        the temporary path to write.
    """
    path = Path(path)
    if folder is None:
        folder = path.is_dir() or not path.suffix
    created = [p for p in path.parents if not p.exists()]  # deepest first
    _make_parent(path, "--out")
    prefix = f".{path.name}.tmp-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(handle)
        tmp = Path(name)
        tmp.unlink()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        for parent in created:  # folders made only for this output, if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    try:
        if folder and path.is_dir():
            for child in tmp.iterdir():
                target = path / child.name
                if target.is_dir() and not child.is_dir():
                    raise InputError(
                        f"{target} is a folder; cannot write the file {child.name} there",
                        path=path,
                        fix="remove it or choose another --out",
                    )
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(child, target)
            tmp.rmdir()
        elif tmp.exists():
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink(missing_ok=True)


def usage_error(message: str, *, option: str | None = None) -> typer.BadParameter:
    """A usage error (exit 2) for a wrong option value; ``raise usage_error(...)``.

    Args:
        message: what is wrong and what is accepted, e.g. ``"must be 1 or more, got 0"``.
        option: the option's name, e.g. ``"--patients"``.
    """
    return typer.BadParameter(message, param_hint=f"'{option}'" if option else None)


class _StderrHandler(logging.Handler):
    """Writes ``warning: ...`` lines to the *current* ``sys.stderr`` (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and logger.isEnabledFor(logging.INFO):
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            sys.stderr.write(f"{record.levelname.lower()}: {message}\n")
            sys.stderr.flush()
        except Exception:  # logging must never break a command
            self.handleError(record)


def setup_logging(verbose: bool) -> None:
    """Show the ``activecad`` logger's warnings on stderr; with ``verbose`` its INFO too.

    Idempotent: one handler, whatever the number of calls. Records still propagate to the
    root logger (so pytest's ``caplog`` sees them).
    """
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    # Python warnings of the libraries underneath (numpy, torch, ...) as one line too.
    warnings.showwarning = _show_warning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    text = " ".join(str(message).split())
    where = f" ({filename}:{lineno})" if logger.isEnabledFor(logging.INFO) else ""
    logger.warning("%s: %s%s", category.__name__, text, where)


def warn(message: str, *args: object) -> None:
    """Print ``warning: <message>`` on stderr (the one way commands warn)."""
    logger.warning(message, *args)
