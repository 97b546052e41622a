"""Candidate-level active learning (ACFT's learning strategies) through the one loop."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from activecad.active.acft import misclassified_candidates
from activecad.active.candidate_learner import candidate_pool

CONFIG = """
data: {data}
candidates: {candidates}
items: candidate
strategies: [RFT, ACFT(HQ)]
seeds: [0]
initial_fraction: 0.3
query_size: 4
cycles: 2
test_fraction: 0.5
steps_per_cycle: 4
annotation_cost: {{base_minutes: 0.1, per_nodule_minutes: 0.0, per_10mm_minutes: 0.0}}
fpr: {{preset: cpu, patch_size: 16, widths: [4, 8], patches_per_candidate: 2, batch_size: 8}}
"""


def test_the_pool_keys_every_candidate_of_a_scan_and_drops_excluded_ones(
    tiny_cohort: Path,
) -> None:
    table = candidate_pool(tiny_cohort)
    first = table[table.seriesuid == table.seriesuid.iloc[0]]
    assert first.key.iloc[0].endswith("#0")
    assert set(table.label) <= {0, 1} and (table.label == 1).any()
    assert table.key.is_unique


def _few_candidates(data: Path, out: Path) -> Path:
    """Every nodule and the first five mimics of each scan (the phantom's candidates.csv has
    about 150 mimics per nodule: too few nodules for a two-cycle loop)."""
    table = pd.read_csv(data / "candidates.csv")
    keep = pd.concat(
        [table[table["class"] == 1], table[table["class"] == 0].groupby("seriesuid").head(5)]
    )
    keep.to_csv(out, index=False)
    return out


def test_rft_and_acft_hq_run_through_al_run(tiny_cohort: Path, tmp_path: Path, run_cli) -> None:
    config = tmp_path / "loop.yaml"
    candidates = _few_candidates(tiny_cohort, tmp_path / "candidates.csv")
    config.write_text(CONFIG.format(data=tiny_cohort, candidates=candidates))
    result = run_cli("al", "run", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    metrics = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    by = {(m["strategy"], m["cycle"]): m for m in metrics}
    assert set(by) == {("RFT", 0), ("RFT", 1), ("ACFT(HQ)", 0), ("ACFT(HQ)", 1)}
    assert all(0.0 <= m["auc"] <= 1.0 for m in metrics)
    # RFT trains on everything labelled; ACFT(HQ) on the 4 new ones plus the misclassified.
    assert by[("RFT", 1)]["trained_on"] == by[("RFT", 1)]["labelled"]
    assert 4 <= by[("ACFT(HQ)", 1)]["trained_on"] <= by[("ACFT(HQ)", 1)]["labelled"]
    selections = pd.read_csv(tmp_path / "run" / "selections.csv")
    assert selections["item"].str.contains("#").all()
    # each candidate costs 0.1 minutes
    assert by[("RFT", 1)]["minutes"] == pytest.approx(0.1 * by[("RFT", 1)]["labelled"])
    # al report reads candidate loops too: test AUC curves, compared with RFT
    report = run_cli("al", "report", tmp_path / "run", "--out", tmp_path / "report", "--json")
    assert report.exit_code == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["metrics"] == ["auc"] and summary["baseline"] == "RFT"
    assert (tmp_path / "report" / "curves.png").is_file()
    assert not (tmp_path / "report" / "scatter.png").exists()


def test_h_is_exactly_the_misclassified_labelled_candidates() -> None:
    labels = {"a#0": 1, "a#1": 0, "a#2": 1, "a#3": 0}
    patches = {"a#0": [0.9, 0.8], "a#1": [0.7, 0.6], "a#2": [0.2, 0.4], "a#3": [0.1, 0.3]}
    assert misclassified_candidates(labels, patches) == ["a#1", "a#2"]
