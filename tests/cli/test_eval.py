"""``activecad eval froc`` and ``activecad eval auc``: results, files and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ANNOTATIONS = """seriesuid,coordX,coordY,coordZ,diameter_mm
A,0,0,0,10
A,6,0,0,10
D,0,0,0,8
"""
EXCLUDED = """seriesuid,coordX,coordY,coordZ,diameter_mm
A,50,0,0,-1
"""
PREDICTIONS = """seriesuid,coordX,coordY,coordZ,probability
A,3,0,0,0.9
A,0,1,0,0.5
A,52,0,0,0.8
A,100,0,0,0.7
B,0,0,0,0.6
"""
# LUNA16's seriesuids.csv has no header line.
SERIESUIDS = "A\nB\nC\nD\n"


@pytest.fixture
def luna(tmp_path: Path) -> dict[str, Path]:
    files = {
        "annotations": ANNOTATIONS,
        "excluded": EXCLUDED,
        "predictions": PREDICTIONS,
        "seriesuids": SERIESUIDS,
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def _froc_args(luna: dict[str, Path], *extra: str) -> list[str | Path]:
    args: list[str | Path] = ["eval", "froc"]
    for name in ("annotations", "predictions", "excluded", "seriesuids"):
        args += [f"--{name}", luna[name]]
    return [*args, *extra]


def test_froc_json_matches_the_hand_count(run_cli, luna):
    # The worked example of tests/metrics/test_froc.py: 2 of 3 nodules found before any FP,
    # so every operating point reads 2/3; one mark ignored, one double hit, 4 scans.
    res = run_cli(*_froc_args(luna, "--json", "--bootstrap", "20"))
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["cpm"] == pytest.approx(2 / 3)
    assert list(out["sensitivities"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert out["counts"] == {
        "nodules": 3,
        "detected": 2,
        "tp": 2,
        "fp": 2,
        "ignored": 1,
        "double_hits": 1,
        "scans": 4,
    }
    assert set(out["ci"]) >= {"cpm", "sensitivities"}


def test_froc_out_writes_json_csv_and_plot(run_cli, luna, tmp_path):
    out_dir = tmp_path / "froc"
    res = run_cli(*_froc_args(luna, "--bootstrap", "30", "--out", out_dir))
    assert res.exit_code == 0, res.stderr
    assert "CPM" in res.stdout
    assert json.loads((out_dir / "froc.json").read_text())["cpm"] == pytest.approx(2 / 3)
    assert (out_dir / "froc.csv").read_text().startswith("fps_per_scan,sensitivity,threshold")
    assert (out_dir / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_froc_warns_about_predictions_outside_the_list(run_cli, luna):
    luna["predictions"].write_text(PREDICTIONS + "Z,0,0,0,0.9\nZ,5,0,0,0.4\n")
    res = run_cli(*_froc_args(luna, "--json", "--bootstrap", "0"))
    assert res.exit_code == 0
    # One line, with counts (of series: 1 of the 3 predicted scans is not listed).
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "1 of 3 identifiers of the predictions are not in the scans listed" in warning[0]
    assert json.loads(res.stdout)["counts"]["fp"] == 2


def test_froc_empty_prediction_file(run_cli, luna):
    luna["predictions"].write_text("seriesuid,coordX,coordY,coordZ,probability\n")
    res = run_cli(*_froc_args(luna, "--json", "--bootstrap", "10"))
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["cpm"] == 0.0 and out["counts"]["fp"] == 0


def test_froc_without_seriesuids_uses_the_uids_seen(run_cli, luna):
    res = run_cli(
        "eval", "froc", "--annotations", luna["annotations"], "--predictions",
        luna["predictions"], "--json", "--bootstrap", "0",
    )  # fmt: skip
    assert res.exit_code == 0
    # Scans A, B and D appear in the files; C is unknown without the list (and no excluded
    # file, so the mark at 52 mm counts as an FP).
    assert json.loads(res.stdout)["counts"]["scans"] == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("predictions", "seriesuid,coordX,coordY,coordZ\nA,0,0,0\n", "probability"),
        ("predictions", PREDICTIONS + "A,1,1,1,nan\n", "probability"),
        ("annotations", "seriesuid,coordX,coordY,coordZ\nA,0,0,0\n", "diameter_mm"),
        ("seriesuids", "A\nA\n", "more than once"),
    ],
)
def test_froc_bad_input_exits_1(run_cli, luna, name, text, message):
    luna[name].write_text(text)
    res = run_cli(*_froc_args(luna, "--json"))
    assert res.exit_code == 1
    assert message in res.stderr
    assert str(luna[name]) in res.stderr.replace("\n", "")


def test_froc_missing_option_is_a_usage_error(run_cli, luna):
    assert run_cli("eval", "froc", "--predictions", luna["predictions"]).exit_code == 2


LABELS = "id,label\nc1,0\nc2,0\nc3,1\nc4,0\nc5,1\nc6,1\n"
SCORES = "id,score\nc1,0.1\nc2,0.4\nc3,0.35\nc4,0.8\nc5,0.7\nc6,0.9\n"


@pytest.fixture
def roc(tmp_path: Path) -> dict[str, Path]:
    paths = {"labels": tmp_path / "labels.csv", "scores": tmp_path / "scores.csv"}
    paths["labels"].write_text(LABELS)
    # Rows in another order than the labels: the CLI aligns them by id.
    lines = SCORES.splitlines()
    paths["scores"].write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    return paths


def test_auc_json_by_hand(run_cli, roc):
    # Positives .35 .7 .9 vs negatives .1 .4 .8: 6 of 9 pairs ordered -> AUC 2/3. Youden's
    # J ties at 1/3 for .9, .7 and .35; the highest threshold wins (hand).
    res = run_cli("eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"], "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) == {"auc", "ci", "sensitivity", "specificity", "threshold", "comparison"}
    assert out["auc"] == pytest.approx(2 / 3)
    assert (out["threshold"], out["sensitivity"], out["specificity"]) == pytest.approx(
        (0.9, 1 / 3, 1.0)
    )
    assert out["ci"][0] <= out["auc"] <= out["ci"][1]
    assert out["comparison"] is None


def test_auc_compare_identical_scores_gives_p_one(run_cli, roc, tmp_path):
    out_dir = tmp_path / "roc"
    res = run_cli(
        "eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"],
        "--compare", roc["scores"], "--json", "--out", out_dir,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    cmp = json.loads(res.stdout)["comparison"]
    assert set(cmp) == {"auc", "ci", "p_value"}
    assert cmp["p_value"] == 1.0
    assert (out_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_auc_threshold_option(run_cli, roc):
    res = run_cli(
        "eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"],
        "--threshold", "0.7", "--json",
    )  # fmt: skip
    out = json.loads(res.stdout)
    assert (out["sensitivity"], out["specificity"]) == pytest.approx((2 / 3, 2 / 3))


@pytest.mark.parametrize(
    ("which", "text", "message"),
    [
        ("scores", "id,score\nx1,0.1\nx2,0.4\n", "no identifier of the scores"),
        ("scores", SCORES.replace("0.35", "nan"), "column 'score' holds"),
        ("scores", "id,prob\nc1,0.1\n", "column 'score' is missing"),
        ("labels", LABELS.replace("c6,1", "c6,2"), "column 'label' holds 2"),
        ("labels", "id,label\nc1,1\nc2,1\n", "needs positives and negatives"),
        ("labels", LABELS + "c1,1\n", "appears more than once"),
    ],
)
def test_auc_bad_input_exits_1(run_cli, roc, which, text, message):
    roc[which].write_text(text)
    res = run_cli("eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"])
    assert res.exit_code == 1
    assert message in res.stderr.replace("\n", "")


def test_froc_on_the_phantom_cohort_through_the_real_tables(run_cli, tiny_cohort, tmp_path):
    # A perfect CAD: one mark on every nodule, one on every excluded finding. Every nodule
    # is found before any FP can occur and excluded marks are never FPs, so CPM = 1.
    ann = pd.read_csv(tiny_cohort / "annotations.csv", dtype={"seriesuid": str})
    exc = pd.read_csv(tiny_cohort / "annotations_excluded.csv", dtype={"seriesuid": str})
    marks = pd.concat([ann.assign(probability=0.9), exc.assign(probability=0.8)])
    cols = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    marks[cols].to_csv(tmp_path / "pred.csv", index=False)
    uids = pd.read_csv(tiny_cohort / "patients.csv", dtype={"seriesuid": str})["seriesuid"]
    uids.drop_duplicates().to_csv(tmp_path / "uids.csv", index=False, header=False)
    res = run_cli(
        "eval", "froc", "--annotations", tiny_cohort / "annotations.csv",
        "--excluded", tiny_cohort / "annotations_excluded.csv",
        "--predictions", tmp_path / "pred.csv", "--seriesuids", tmp_path / "uids.csv",
        "--json", "--bootstrap", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["cpm"] == 1.0
    assert out["counts"]["detected"] == out["counts"]["nodules"] == len(ann)
    assert out["counts"]["fp"] == 0
    assert out["counts"]["scans"] == uids.nunique()


# --- Identifiers that match nothing, --out, usage errors (issue 16) ---------------------


@pytest.mark.parametrize("with_list", [True, False])
def test_froc_predictions_matching_no_scan_is_an_error(run_cli, luna, with_list):
    # A `.mhd` suffix left on every seriesuid used to give CPM 0 over 2x the scans, exit 0.
    lines = PREDICTIONS.splitlines()
    luna["predictions"].write_text(
        "\n".join([lines[0], *(f"{r.split(',')[0]}.mhd,{r.split(',', 1)[1]}" for r in lines[1:])])
    )
    args = _froc_args(luna) if with_list else [
        "eval", "froc", "--annotations", luna["annotations"], "--predictions", luna["predictions"],
    ]  # fmt: skip
    res = run_cli(*args, "--bootstrap", "0")
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    # An example from each side, so the user sees the suffix.
    assert "'A.mhd'" in res.stderr and "'A'" in res.stderr
    assert "Traceback" not in res.stderr


def test_froc_listed_scans_without_any_annotation_warn(run_cli, luna):
    # A small held-out part may hold no nodule: not an error, but never silent.
    luna["seriesuids"].write_text("X\nY\n")
    luna["predictions"].write_text("seriesuid,coordX,coordY,coordZ,probability\nX,0,0,0,0.5\n")
    res = run_cli(*_froc_args(luna, "--bootstrap", "0", "--json"))
    assert res.exit_code == 0, res.stderr
    assert res.stderr.startswith("warning: none of the 2 scans listed in")
    assert "(e.g. 'X' listed vs 'A' annotated)" in res.stderr
    assert json.loads(res.stdout)["counts"]["fp"] == 1


def test_froc_without_list_warns_about_unannotated_scans(run_cli, luna):
    res = run_cli(
        "eval", "froc", "--annotations", luna["annotations"], "--predictions",
        luna["predictions"], "--json", "--bootstrap", "0",
    )  # fmt: skip
    assert res.exit_code == 0
    # Predicted scans A, B; annotated A, D: B has no annotation.
    assert "warning: 1 of 2 scans of the predictions have no annotation" in res.stderr


def test_froc_seriesuids_from_split_json(run_cli, luna, tmp_path):
    split = tmp_path / "model" / "split.json"
    split.parent.mkdir()
    split.write_text(json.dumps({"train": ["E", "F"], "val": ["A", "B", "C", "D"]}))
    by_csv = run_cli(*_froc_args(luna, "--json", "--bootstrap", "0"))
    args = [a if a != luna["seriesuids"] else f"{split}:val" for a in _froc_args(luna)]
    by_split = run_cli(*args, "--json", "--bootstrap", "0")
    assert by_split.exit_code == 0, by_split.stderr
    assert json.loads(by_split.stdout) == json.loads(by_csv.stdout)
    # No part named: the error lists the parts and the fix.
    args = [a if a != luna["seriesuids"] else split for a in _froc_args(luna)]
    res = run_cli(*args, "--bootstrap", "0")
    assert res.exit_code == 1
    assert "parts: train, val" in res.stderr and f"{split}:val" in res.stderr


def test_froc_out_is_a_folder_not_a_json_file(run_cli, luna, tmp_path):
    res = run_cli(*_froc_args(luna, "--bootstrap", "0", "--out", tmp_path / "results.json"))
    assert res.exit_code == 1
    assert "--out is a folder" in res.stderr and "froc.json" in res.stderr
    assert not (tmp_path / "results.json").exists()


def test_froc_out_existing_file_is_one_line(run_cli, luna, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("keep me")
    res = run_cli(*_froc_args(luna, "--bootstrap", "0", "--out", existing))
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "this is a file" in res.stderr
    assert existing.read_text() == "keep me"


def test_froc_failure_leaves_no_output_folder(run_cli, luna, tmp_path):
    luna["predictions"].write_text("seriesuid,coordX,coordY,coordZ\nA,0,0,0\n")
    res = run_cli(*_froc_args(luna, "--out", tmp_path / "froc_out"))
    assert res.exit_code == 1
    assert not (tmp_path / "froc_out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_froc_out_keeps_other_files_in_an_existing_folder(run_cli, luna, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = run_cli(*_froc_args(luna, "--bootstrap", "0", "--out", out))
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "froc.csv", "froc.json", "froc.png", "notes.txt",
    ]  # fmt: skip


@pytest.mark.parametrize("extra", [("--max-marks", "-1"), ("--bootstrap", "-5")])
def test_froc_wrong_values_are_usage_errors(run_cli, luna, extra):
    res = run_cli(*_froc_args(luna, *extra))
    assert res.exit_code == 2
    assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1


def test_auc_confidence_out_of_range_is_a_usage_error(run_cli, roc):
    res = run_cli(
        "eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"], "--confidence", "1.5"
    )
    assert res.exit_code == 2
    assert "--confidence" in res.stderr


def test_auc_partial_overlap_warns_and_uses_the_common_ids(run_cli, roc):
    # c6 (positive, .9) has no score and c9 has no label. On c1..c5, positives .35 .7 vs
    # negatives .1 .4 .8: .35 beats 1, .7 beats 2 of 3 -> AUC 3/6 (hand).
    roc["scores"].write_text(SCORES.replace("c6,0.9\n", "c9,0.5\n"))
    res = run_cli("eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"], "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["auc"] == pytest.approx(0.5)
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "1 of 6 identifiers of the scores" in warnings[0]
    assert "1 of 6 identifiers of the labels" in warnings[1]


def test_auc_with_one_case_of_a_kind_is_an_input_error(run_cli, roc):
    # DeLong's variance needs two cases of each kind; one gave NaN and a RuntimeWarning.
    roc["labels"].write_text("id,label\nc1,0\nc2,0\nc3,1\n")
    res = run_cli("eval", "auc", "--labels", roc["labels"], "--scores", roc["scores"])
    assert res.exit_code == 1
    assert "1 positive and 2 negative scored case(s)" in res.stderr
