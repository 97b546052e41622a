"""The README's "Command line" section lists every command and every option that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_contract import COMMANDS

README = Path(__file__).resolve().parents[2] / "README.md"


def command_blocks(text: str) -> dict[str, str]:
    """``"eval froc"`` -> its lines in the "Command line" section of a README.

    A block starts at a line ``activecad NAME [SUB] ...`` and runs to the next such line;
    ``activecad cache info|clear`` documents both sub-commands.
    """
    start = text.index("\n## Command line")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    blocks: dict[str, list[str]] = {}
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("activecad "):
            paths: list[list[str]] = [[]]
            for word in line.split()[1:3]:
                if not re.fullmatch(r"[a-z]+(\|[a-z]+)*", word):
                    break
                paths = [[*p, alt] for p in paths for alt in word.split("|")]
            names = [" ".join(p) for p in paths if p]
            for name in names:
                blocks[name] = []
        for name in names:
            blocks[name].append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_readme_lists_the_command_and_every_option(name: str) -> None:
    blocks = command_blocks(README.read_text())
    # `activecad train detector DATA_DIR` is found as "train detector" (a word too many is
    # no harm: "phantom --out" stops at the option).
    found = [b for b in blocks if b == name or b.startswith(name + " ")]
    assert found, f"README's Command line section has no 'activecad {name}'"
    block = blocks[found[0]]
    for param in COMMANDS[name].params:  # type: ignore[attr-defined]
        if param.param_type_name != "option":
            continue
        option = next(o for o in param.opts if o.startswith("--"))
        assert re.search(rf"{re.escape(option)}\b", block), f"{name}: {option} not in README"
