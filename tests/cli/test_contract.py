"""The command-line contract, checked on every command the ``activecad`` app registers.

Each command is found by walking the typer app (so a new command is checked the day it is
registered) and run with a bad ``--out``, with inputs that do not exist, and with a value
of the wrong type. Every case must end with exit 1 (bad input) or 2 (usage), one ``error:``
line on stderr and no traceback (README, "Command line").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import typer.main

from activecad.cli.main import app

# `--out` is a file for commands that write one table, a folder for every other command.
FILE_OUT = {"detect", "mine"}
# Options that keep a run short if a command wrongly starts work despite a bad --out.
CHEAP = {"train detector": ["--epochs", "1", "--steps", "1", "--preset", "cpu"]}


def _commands() -> dict[str, object]:
    found: dict[str, object] = {}

    def walk(command: object, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _commands()


def test_the_walk_finds_the_commands_of_the_readme() -> None:
    assert {"info", "phantom", "demo", "eval froc", "eval auc", "train detector", "detect"} <= set(
        COMMANDS
    )


ANNOTATIONS = "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,0,0,0,10\n"
PREDICTIONS = "seriesuid,coordX,coordY,coordZ,probability\nA,0,0,0,0.9\nA,40,0,0,0.2\n"


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory, tiny_cohort: Path) -> dict[str, Path]:
    """A valid value for each input parameter (by name) of the known commands."""
    from activecad.io import write_scan
    from activecad.models.detector3d import NoduleDetector, preset_config, save_bundle
    from tests.io.helpers import make_scan

    root = tmp_path_factory.mktemp("valid")
    files = {
        "annotations": ANNOTATIONS,
        "predictions": PREDICTIONS,
        "labels": "id,label\na,0\nb,1\n",
        "scores": "id,score\na,0.2\nb,0.7\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = root / f"{name}.csv"
        paths[name].write_text(text)
    # A tiny scan, so that a command that wrongly starts work before checking --out costs
    # a second, not minutes.
    scan = write_scan(make_scan(shape=(16, 40, 40), direction=np.eye(3)), root / "tiny.mhd")
    paths["path"] = scan
    paths["scans"] = scan
    paths["data_dir"] = tiny_cohort
    tiny = {
        "preprocess": {"spacing": (1.0, 1.0, 1.0), "lung_crop": False},
        "backbone_widths": (4, 8, 8, 8),
        "fpn_channels": 8,
        "loss_hidden": 4,
        "patch_size": (32, 32, 32),
        "base_anchor_shapes": ((4.0, 4.0, 4.0),),
        "sw_roi_size": (32, 32, 32),
    }
    paths["model"] = save_bundle(root / "model", NoduleDetector(preset_config("cpu", **tiny)))
    return paths


def _option(param: object) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return opts[0] if opts else ""


def _required_inputs(command: object) -> list[object]:
    return [
        p
        for p in command.params  # type: ignore[attr-defined]
        if p.required and p.name != "out"
    ]


def _args(name: str, command: object, values: dict[str, Path | str]) -> list[str]:
    """Command line with ``values`` for the required inputs (arguments first)."""
    args = name.split()
    for param in _required_inputs(command):
        value = str(values[param.name])  # type: ignore[attr-defined]
        if param.bare_type() in ("int", "float"):  # type: ignore[attr-defined]
            value = "0"  # a required number (search --x): the inputs under test are paths
        if param.param_type_name == "argument":  # type: ignore[attr-defined]
            args.append(value)
        else:
            args += [_option(param), value]
    return args


def _has_out(command: object) -> bool:
    return any(_option(p) == "--out" for p in command.params)  # type: ignore[attr-defined]


def _assert_one_error_line(res, expected_codes=(1, 2)) -> str:
    assert res.exit_code in expected_codes, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    # Nothing else but warnings: no progress bar, no panel, no second message.
    assert all(line.startswith(("error:", "warning:")) for line in lines), res.stderr
    return errors[0]


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if _has_out(c)))
def test_bad_out_is_one_line_and_writes_nothing(run_cli, tmp_path, valid, name) -> None:
    command = COMMANDS[name]
    known = all(p.name in valid for p in _required_inputs(command))  # type: ignore[attr-defined]
    values = {p.name: valid.get(p.name, tmp_path / "missing.csv") for p in command.params}  # type: ignore[attr-defined]
    if name in FILE_OUT:
        bad = tmp_path / "existing_folder"
        bad.mkdir()
        (bad / "keep.txt").write_text("keep")
    else:
        bad = tmp_path / "existing_file"
        bad.write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_cli(*_args(name, command, values), "--out", bad, *CHEAP.get(name, []))
    line = _assert_one_error_line(res)
    if known:
        # The inputs are valid: the error is about --out and says what it must be.
        assert "--out" in line and str(bad) in line, line
        assert ("must be a file" if name in FILE_OUT else "must be a folder") in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "left files behind"
    if bad.is_dir():
        assert [p.name for p in bad.iterdir()] == ["keep.txt"]
    else:
        assert bad.read_text() == "keep"


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if _required_inputs(c)))
def test_missing_input_is_one_line(run_cli, tmp_path, name) -> None:
    command = COMMANDS[name]
    missing = tmp_path / "no_such_input.csv"
    values = {p.name: missing for p in command.params}  # type: ignore[attr-defined]
    out = ["--out", str(tmp_path / ("new.csv" if name in FILE_OUT else "new_out"))]
    res = run_cli(*_args(name, command, values), *(out if _has_out(command) else []))
    line = _assert_one_error_line(res)
    assert res.exit_code == 1
    # Names the path, says it is not there (not "not a data folder") and gives a fix.
    assert str(missing) in line, line
    assert "no such" in line.lower() or "does not exist" in line, line
    assert line.rstrip(".").count(". ") >= 1, f"no fix in: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed command wrote files"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_wrong_type_is_a_usage_error(run_cli, tmp_path, name) -> None:
    command = COMMANDS[name]
    numeric = [
        p
        for p in command.params  # type: ignore[attr-defined]
        if p.param_type_name == "option" and p.bare_type() in ("int", "float")
    ]
    wrong = [_option(numeric[0]), "abc"] if numeric else ["--no-such-option"]
    values = {p.name: tmp_path / "x" for p in command.params}  # type: ignore[attr-defined]
    res = run_cli(*_args(name, command, values), *wrong)
    _assert_one_error_line(res, expected_codes=(2,))
    assert f"activecad {name} --help" in res.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_verbose_is_accepted_after_the_sub_command(run_cli, name) -> None:
    res = run_cli(*name.split(), "-v", "--help")
    assert res.exit_code == 0, res.stderr
    assert "Usage: activecad " + name in " ".join(res.stdout.split())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_line_shows_names_not_types(run_cli, name) -> None:
    res = run_cli(*name.split(), "--help")
    usage = next(line for line in res.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage, usage
    assert "<list[" not in res.stdout and "<bool>" not in res.stdout


def test_top_level_help_does_not_break_mid_sentence(run_cli) -> None:
    # Every command's one-line description ends with a full stop before the next command.
    res = run_cli("--help")
    assert res.exit_code == 0
    text = res.stdout
    panel = text[text.index("Commands") :]
    rows = [line.strip("│ ").rstrip() for line in panel.splitlines()[1:] if line.startswith("│")]
    names = {n.split()[0] for n in COMMANDS}
    descriptions: list[str] = []
    for row in rows:
        first = row.split(" ", 1)[0]
        if first in names:
            descriptions.append(row.split(" ", 1)[1].strip())
        elif descriptions:
            descriptions[-1] += " " + row.strip()
    assert len(descriptions) == len(names)
    assert all(d.endswith(".") for d in descriptions), descriptions


def test_verbose_adds_a_traceback_only_when_asked(run_cli, tmp_path) -> None:
    quiet = run_cli("info", tmp_path / "missing.mhd")
    loud = run_cli("info", "-v", tmp_path / "missing.mhd")
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-1] == quiet.stderr.rstrip()


def test_unexpected_errors_are_one_line_without_v(run_cli, monkeypatch, tmp_path) -> None:
    import activecad.cli.info as info

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(info, "read_image", boom)
    res = run_cli("info", tmp_path)
    line = _assert_one_error_line(res, expected_codes=(1,))
    assert "RuntimeError: something broke on two lines" in line and "-v" in line


def test_warnings_are_warning_lines_on_stderr(run_cli, tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\na,0\nb,1\nc,1\nd,0\ne,1\n")
    scores = tmp_path / "scores.csv"
    scores.write_text("id,score\na,0.2\nb,0.7\nd,0.5\ne,0.4\n")
    res = run_cli("eval", "auc", "--labels", labels, "--scores", scores, "--json")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"warning: 1 of 5 identifiers of the labels ({labels}) are not in the scores "
        f"({scores}) and are ignored (e.g. 'c')"
    ]


@pytest.mark.parametrize("name", ["", *sorted(COMMANDS)])
def test_help_cites_papers_by_name_not_by_path(run_cli, name) -> None:
    # Users have no papers/ folder and no DESIGN.md: help cites authors, title and venue.
    res = run_cli(*name.split(), "--help")
    assert res.exit_code == 0
    assert "papers/" not in res.stdout and "DESIGN.md" not in res.stdout, res.stdout


def test_the_modules_of_this_contract_cite_no_paths() -> None:
    import activecad

    root = Path(activecad.__file__).parent
    mine = [
        *root.glob("metrics/*.py"),
        *root.glob("io/*.py"),
        *(root / "cli" / f"{n}.py" for n in ("main", "_common", "eval", "info", "phantom")),
        root / "cli" / "demo.py",
        root / "errors.py",
        root / "identifiers.py",
    ]
    cited = [p.name for p in mine if "papers/" in p.read_text() or "DESIGN.md" in p.read_text()]
    assert cited == []


@pytest.mark.parametrize("name", ["detect", "info"])
def test_a_folder_of_mhd_files_suggests_the_files(run_cli, tmp_path, valid, name) -> None:
    # `activecad detect data/ct/` used to say "no DICOM image files found".
    ct = tmp_path / "ct"
    ct.mkdir()
    shutil.copy(valid["scans"], ct / "a.mhd")
    shutil.copy(valid["scans"].with_suffix(".raw"), ct / "tiny.raw")
    args = [name, ct]
    if name == "detect":
        args += ["--model", valid["model"], "--out", tmp_path / "d.csv"]
    res = run_cli(*args)
    line = _assert_one_error_line(res, expected_codes=(1,))
    assert "holds 1 scan file(s) such as a.mhd" in line
    assert f"{ct / 'a.mhd'}" in line and f"{ct}/*.mhd" in line


@pytest.mark.parametrize(
    "args",
    [
        ["phantom", "--out", "x", "--patients", "0"],  # exited 1 before
        ["phantom", "--out", "x", "--seed", "-1"],
        ["phantom", "--out", "x", "--preset", "huge"],
        ["phantom", "--out", "x", "--formats", "png"],
        ["phantom"],  # no folder at all
        ["info", "x.csv", "--kind", "nonsense"],
        ["eval", "auc", "--labels", "l.csv", "--scores", "s.csv", "--confidence", "1.5"],
        ["eval", "froc", "--annotations", "a.csv", "--predictions", "p.csv", "--max-marks", "-1"],
        ["demo", "--seed", "abc"],
    ],
    ids=lambda a: " ".join(a),
)
def test_wrong_values_exit_2(run_cli, tmp_path, monkeypatch, args) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_cli(*args)
    _assert_one_error_line(res, expected_codes=(2,))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if _has_out(c)))
def test_out_help_says_file_or_folder(name) -> None:
    out = next(p for p in COMMANDS[name].params if _option(p) == "--out")  # type: ignore[attr-defined]
    text = (out.help or "").lower()
    if name in FILE_OUT:
        assert "csv" in text or "file" in text, text
    else:
        assert "folder" in text, text


def test_library_warnings_are_one_warning_line(run_cli, monkeypatch, tmp_path) -> None:
    import warnings

    import activecad.cli.info as info
    from activecad.errors import InputError

    def noisy(*args, **kwargs):
        warnings.warn("Degrees of freedom <= 0\nfor slice", RuntimeWarning, stacklevel=1)
        raise InputError("stop here", path=tmp_path, fix="Nothing to fix")

    monkeypatch.setattr(info, "read_image", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the suite turns warnings into errors
        res = run_cli("info", tmp_path)
    lines = res.stderr.splitlines()
    assert lines[0] == "warning: RuntimeWarning: Degrees of freedom <= 0 for slice"
    assert lines[1].startswith("error:") and len(lines) == 2
