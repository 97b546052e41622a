"""The demo runs the whole path (phantom -> train -> detect -> eval) and keeps patients apart."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from activecad.cli import demo


def test_demo_writes_every_stage_and_holds_out_whole_patients(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The smallest run that still has a held-out split (split_series holds out from 5 groups).
    monkeypatch.setattr(
        demo,
        "QUICK",
        demo.DemoSize(patients=5, epochs=1, steps_per_epoch=1, bootstrap=10, al_steps_per_cycle=1),
    )
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert 0.0 <= summary["cpm"] <= 1.0
    for path in (
        "cohort/manifest.json",
        "model/weights.pt",
        "detections.csv",
        "froc/froc.png",
        "al/selections.csv",
        "al_report/curves.png",
    ):
        assert (out / path).exists(), path

    patients = pd.read_csv(out / "cohort" / "patients.csv", dtype=str)
    patient_of = dict(zip(patients["seriesuid"], patients["patient"], strict=True))
    split = json.loads((out / "model" / "split.json").read_text())
    heldout = pd.read_csv(out / "heldout.csv", dtype=str)["seriesuid"]
    assert {patient_of[u] for u in split["train"]}.isdisjoint({patient_of[u] for u in heldout})


def test_demo_loop_is_the_al_quick_example() -> None:
    import yaml

    example = Path(__file__).parents[2] / "examples" / "al-quick.yaml"
    settings = yaml.safe_load(example.read_text())
    settings.pop("data")
    assert settings == demo.AL_QUICK
