"""Fixtures of the MELD command tests: a tiny lesion cohort and a model trained on it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from activecad.cli.main import main

# Shared cores: torch's default thread count made a training step 20 times slower here.
THREADS = 1
# Slices at the small phantom's own 2.8 mm pixels: a quarter of the cpu preset's 1.4 mm
# pixels, so that training and detection take seconds.
FAST = ["--pixel-mm", "2.8", "--slice-mm", "2.5"]


@contextmanager
def single_thread() -> Iterator[None]:
    """Torch on ``THREADS`` threads inside the block (fixtures of wider scope set it up
    before the function-scoped ``one_thread``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def run_main(*args: str | Path) -> tuple[int, str, str]:
    """``activecad ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def lesion_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three DeepLesion patients (train, validation, test) and one patient per other set."""
    from activecad.phantom.lesion_sets import write_lesion_sets

    out = tmp_path_factory.mktemp("lesion_sets")
    write_lesion_sets(
        out, patients_per_set={"deeplesion": 3, "luna": 1, "lits": 1, "nih_ln": 1}, seed=0
    )
    return out


@pytest.fixture(scope="session")
def meld_model(
    tmp_path_factory: pytest.TempPathFactory, lesion_cohort: Path
) -> tuple[Path, dict[str, object]]:
    """``train meld`` for 2 epochs of 2 steps on every set: the folder and its JSON summary."""
    out = tmp_path_factory.mktemp("meld") / "model"
    with single_thread():
        code, stdout, stderr = run_main(
            "train", "meld", lesion_cohort, "--out", out, "--epochs", "2",
            "--steps-per-epoch", "2", *FAST, "--json",
        )  # fmt: skip
    assert code == 0, stderr
    return out, json.loads(stdout)
