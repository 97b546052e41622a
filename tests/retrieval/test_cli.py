"""``activecad index build`` and ``activecad search`` on a one-patient phantom."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from activecad.retrieval.build import folder_nodules


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from activecad.phantom import generate_cohort

    root = tmp_path_factory.mktemp("retrieval") / "cohort"
    generate_cohort(root, patients=1, seed=0, preset="small")
    return root


def test_index_then_search_finds_the_nodule_at_the_query_point(
    cohort: Path, tmp_path: Path, run_cli
) -> None:
    built = run_cli("index", "build", cohort, "--out", tmp_path / "idx", "--json")
    assert built.exit_code == 0, built.stderr
    nodules = folder_nodules(cohort)
    assert json.loads(built.stdout)["nodules"] == len(nodules) >= 1
    # the readers' consensus: the mean over the readers who marked the nodule
    readers = pd.read_csv(cohort / "readers.csv", dtype={"seriesuid": str, "nodule_id": str})
    target = nodules.iloc[0]
    marks = readers[(readers.seriesuid == target.seriesuid) & (readers.nodule_id == "n1")]
    assert target.readers == len(marks)
    assert target.malignancy == pytest.approx(marks.malignancy.mean())
    assert target.coordX == pytest.approx(marks.coordX.mean())
    found = run_cli(
        "search", "--index", tmp_path / "idx", "--scan", target.seriesuid,
        "--x", target.coordX, "--y", target.coordY, "--z", target.coordZ, "-k", "1", "--json",
    )  # fmt: skip
    assert found.exit_code == 0, found.stderr
    (best,) = json.loads(found.stdout)
    assert best["rank"] == 1 and best["distance"] == pytest.approx(0.0, abs=1e-4)
    assert (best["x"], best["malignancy"]) == pytest.approx((target.coordX, target.malignancy))


def test_search_errors(cohort: Path, tmp_path: Path, run_cli) -> None:
    missing = run_cli("search", "--index", tmp_path / "nope", "--scan", "1", "--x", "0",
                      "--y", "0", "--z", "0")  # fmt: skip
    assert missing.exit_code == 1 and "no such index folder" in missing.stderr
    assert run_cli("index", "build", cohort, "--out", tmp_path / "idx").exit_code == 0
    unknown = run_cli("search", "--index", tmp_path / "idx", "--scan", "9.9", "--x", "0",
                      "--y", "0", "--z", "0")  # fmt: skip
    assert unknown.exit_code == 1 and "not in the index's data folder" in unknown.stderr


def test_an_fpr_index_finds_its_nodule_and_refuses_another_models_weights(
    cohort: Path, tmp_path: Path, run_cli
) -> None:
    import torch

    from activecad.models.fpr import build_net, preset_config, save_fpr

    config = preset_config("cpu", patch_size=16, widths=(4, 8), patches_per_candidate=2)
    torch.manual_seed(0)
    save_fpr(tmp_path / "fpr", build_net(config), config, [])
    built = run_cli(
        "index", "build", cohort, "--out", tmp_path / "idx", "--model", tmp_path / "fpr", "--json"
    )
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["dimension"] == 8  # the bottleneck's channels
    target = folder_nodules(cohort).iloc[0]
    query = (
        "search", "--index", tmp_path / "idx", "--scan", target.seriesuid,
        "--x", target.coordX, "--y", target.coordY, "--z", target.coordZ, "-k", "1", "--json",
    )  # fmt: skip
    found = run_cli(*query, "--montage", tmp_path / "montage.png")
    assert found.exit_code == 0, found.stderr
    assert json.loads(found.stdout)[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    from PIL import Image

    with Image.open(tmp_path / "montage.png") as picture:
        width, height = picture.size
    assert height > width / 2  # two rows (the query and one neighbour) of three views
    # Retrain (other weights) into the same folder: the index no longer matches its model.
    torch.manual_seed(1)
    save_fpr(tmp_path / "fpr", build_net(config), config, [])
    stale = run_cli(*query)
    assert stale.exit_code == 1
    assert "another model's weights" in stale.stderr
