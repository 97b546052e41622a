"""Matching identifiers (series UIDs, image ids) between two sources, one way for every command.

A table whose identifiers match nothing on the other side is almost always a mistake (a
``.mhd`` suffix left on, the wrong folder), and used as it is it gives a silent wrong result:
zero nodules trained on, a CPM of 0. So zero overlap is an error that shows an example from
each side, and partial overlap is a warning with counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from activecad.errors import InputError

__all__ = ["check_overlap"]

logger = logging.getLogger("activecad")


def check_overlap(
    ours: Iterable[str],
    theirs: Iterable[str],
    *,
    ours_name: str,
    theirs_name: str,
    path: str | Path | None = None,
    require_all_ours: bool = False,
) -> set[str]:
    """The identifiers found on both sides; none in common is an error, some a warning.

    Args:
        ours: identifiers of the first source (e.g. the series of ``annotations.csv``).
        theirs: identifiers of the second source (e.g. the scans found in ``ct/``).
        ours_name: how the message names the first source, e.g. ``"annotations.csv"``.
        theirs_name: how the message names the second source, e.g. ``"the scans in ct/"``.
        path: the file the first source came from, named in the error.
        require_all_ours: every identifier of ``ours`` must be in ``theirs`` (an error
            otherwise, naming the first missing one), not only some.

    Returns:
        the identifiers present on both sides.

    Raises:
        InputError: no identifier is shared (and both sides hold some), or
            ``require_all_ours`` and one of ``ours`` is missing from ``theirs``.
    """
    ours_set = {str(x) for x in ours}
    theirs_set = {str(x) for x in theirs}
    common = ours_set & theirs_set
    if ours_set and theirs_set and not common:
        raise InputError(
            f"no identifier of {ours_name} matches {theirs_name} "
            f"(e.g. {min(ours_set)!r} vs {min(theirs_set)!r})",
            path=path,
            fix="check that both name the same series (no file suffix, no extra spaces)",
        )
    missing = ours_set - common
    if missing and require_all_ours:
        raise InputError(
            f"{len(missing)} of {len(ours_set)} identifiers of {ours_name} are not in "
            f"{theirs_name} (e.g. {min(missing)!r})",
            path=path,
            fix="remove them or add what they refer to",
        )
    if missing:
        logger.warning(
            "%d of %d identifiers of %s are not in %s and are ignored (e.g. %r)",
            len(missing),
            len(ours_set),
            ours_name,
            theirs_name,
            min(missing),
        )
    return common
