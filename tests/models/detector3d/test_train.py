"""``train detector``: fine-tuning from a model folder, resume semantics, data checks, DDP."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from activecad.models.detector3d import (
    NoduleDetector,
    load_bundle,
    preset_config,
    save_bundle,
    train_detector,
)
from activecad.training import Callback, FitState
from tests.models.detector3d.conftest import TINY, write_sphere_folder


def _folder(root: Path, *, uid_prefix: str = "1.2.826.0.1.") -> Path:
    return write_sphere_folder(root, uid_prefix=uid_prefix, steps_per_epoch=1)


@pytest.fixture(scope="module")
def luna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("luna"))


def test_fine_tuning_starts_from_the_model_folders_weights(luna: Path, tmp_path: Path) -> None:
    config = preset_config("cpu", **{**TINY, "steps_per_epoch": 1, "seed": 3})
    torch.manual_seed(11)
    start = save_bundle(tmp_path / "start", NoduleDetector(config))
    reference = load_bundle(start)
    images = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.network(images)
    seen: list[bool] = []

    class Compare(Callback):
        def on_fit_start(self, state: FitState) -> None:
            state.model.eval()
            with torch.no_grad():
                got = state.model(images)
            seen.append(
                all(
                    torch.equal(a, b)
                    for key in expected
                    for a, b in zip(got[key], expected[key], strict=True)
                )
            )

    # A fresh detector with the same config but another seed differs, so equality is the
    # loaded weights, not chance.
    torch.manual_seed(12)
    with torch.no_grad():
        fresh = NoduleDetector(config).eval().network(images)
    key = next(iter(expected))
    assert not torch.equal(fresh[key][0], expected[key][0])

    train_detector(
        luna,
        tmp_path / "tuned",
        config,
        init_from=start,
        cache_dir=tmp_path / "cache",
        callbacks=[Compare()],
    )
    assert seen == [True]
    tuned = load_bundle(tmp_path / "tuned")
    key_weight = next(iter(tuned.network.state_dict()))
    assert not torch.equal(
        tuned.network.state_dict()[key_weight], reference.network.state_dict()[key_weight]
    )  # and one step did train it


def test_resume_keeps_the_runs_settings(
    run_cli: Callable[..., object], luna: Path, tmp_path: Path
) -> None:
    model, cache = tmp_path / "m", tmp_path / "cache"
    first = run_cli(
        "train", "detector", luna, "--out", model, "--config", luna / "tiny.yaml",
        "--steps", "2", "--cache", cache, "--json",
    )  # fmt: skip
    assert first.exit_code == 0, first.stderr
    resumed = run_cli(
        "train", "detector", luna, "--out", model, "--epochs", "2", "--resume", "--cache", cache,
        "--json",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs_done"] == 2
    saved = yaml.safe_load((model / "config.yaml").read_text())
    # The saved run: 32^3 patches, 2 steps (from --steps), 1 mm, no lung crop; not the
    # cpu preset's 96^3 / 50 steps / lung crop that a fresh config would give.
    assert saved["patch_size"] == [32, 32, 32]
    assert saved["steps_per_epoch"] == 2 and saved["epochs"] == 2
    assert json.loads((model / "preprocess.json").read_text())["lung_crop"] is False


def test_resume_refuses_another_preset_before_preprocessing(
    run_cli: Callable[..., object], luna: Path, tmp_path: Path
) -> None:
    model = tmp_path / "m"
    first = run_cli(
        "train", "detector", luna, "--out", model, "--config", luna / "tiny.yaml",
        "--cache", tmp_path / "cache",
    )  # fmt: skip
    assert first.exit_code == 0, first.stderr
    fresh_cache = tmp_path / "new-cache"
    refused = run_cli(
        "train", "detector", luna, "--out", model, "--resume", "--preset", "paper",
        "--cache", fresh_cache,
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "cannot change" in refused.stderr and "preset" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not fresh_cache.exists()  # refused before any scan was preprocessed


def test_annotations_matching_no_scan_are_an_error(
    run_cli: Callable[..., object], tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "data", uid_prefix="9.9.")
    result = run_cli(
        "train", "detector", folder, "--out", tmp_path / "m", "--config", folder / "tiny.yaml"
    )
    assert result.exit_code == 1
    assert "no identifier of annotations.csv matches" in result.stderr
    assert not (tmp_path / "m" / "bundle.json").exists()  # nothing that looks like a model


def _places(luna: Path, uid: str, *, on_nodule: bool) -> dict[str, object]:
    """A place on scan ``uid`` of the sphere folder: its nodule's centre, or a corner."""
    nodules = pd.read_csv(luna / "annotations.csv", dtype={"seriesuid": str})
    nodule = nodules[nodules["seriesuid"] == uid].iloc[0]
    # The corner is 5 voxels in from the scan's origin (-20, 10, -100) mm, far from the sphere.
    x, y, z = (nodule.coordX, nodule.coordY, nodule.coordZ) if on_nodule else (-15, 15, -95)
    return {"seriesuid": uid, "coordX": x, "coordY": y, "coordZ": z, "probability": 0.9}


def test_hard_negatives_keep_the_false_positives_on_training_scans(
    run_cli: Callable[..., object], luna: Path, tmp_path: Path
) -> None:
    # What 'activecad detect' on the training scans writes: marks on the nodules, marks
    # elsewhere, and a scan that is not in the folder at all.
    uids = ["1.2.826.0.1.1", "1.2.826.0.1.2"]
    marks = pd.DataFrame(
        [_places(luna, u, on_nodule=hit) for u in uids for hit in (True, False)]
        + [{**_places(luna, uids[0], on_nodule=False), "seriesuid": "7.7.7"}]
    )
    marks.to_csv(tmp_path / "marks.csv", index=False)
    model, cache = tmp_path / "m", tmp_path / "cache"
    trained = run_cli(
        "train", "detector", luna, "--out", model, "--config", luna / "tiny.yaml",
        "--hard-negatives", tmp_path / "marks.csv", "--cache", cache,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    # Both scans train (the tiny config holds none out): of 5 marks, the 2 off the nodules.
    assert "hard negatives: 2 of 5 (1 on scans outside training, 2 on nodules" in trained.stderr
    kept = pd.read_csv(model / "hard_negatives.csv", dtype={"seriesuid": str})
    assert sorted(kept["seriesuid"]) == uids and set(kept["coordX"]) == {-15}
    resumed = run_cli(
        "train", "detector", luna, "--out", model, "--epochs", "2", "--resume", "--cache", cache
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert "hard negatives: 2 of 2" in resumed.stderr  # the run's own, kept in its folder


def test_hard_negatives_that_are_all_nodules_are_refused(
    run_cli: Callable[..., object], luna: Path, tmp_path: Path
) -> None:
    pd.DataFrame([_places(luna, "1.2.826.0.1.1", on_nodule=True)]).to_csv(
        tmp_path / "hits.csv", index=False
    )
    refused = run_cli(
        "train", "detector", luna, "--out", tmp_path / "m", "--config", luna / "tiny.yaml",
        "--hard-negatives", tmp_path / "hits.csv", "--cache", tmp_path / "cache",
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "none of the 1 hard negatives is a false positive" in refused.stderr
    assert "Traceback" not in refused.stderr
    pd.DataFrame({"seriesuid": ["1.2.826.0.1.1"], "x": [1.0]}).to_csv(
        tmp_path / "bad.csv", index=False
    )
    bad = run_cli(
        "train", "detector", luna, "--out", tmp_path / "m2", "--hard-negatives",
        tmp_path / "bad.csv",
    )  # fmt: skip
    assert bad.exit_code == 1 and "coordX" in bad.stderr


def test_missing_data_folder_and_options_say_what_to_do(
    run_cli: Callable[..., object], luna: Path, tmp_path: Path
) -> None:
    missing = run_cli("train", "detector", tmp_path / "nowhere", "--out", tmp_path / "m")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    both = run_cli(
        "train", "detector", luna, "--out", tmp_path / "m", "--resume", "--init-from", luna
    )
    assert both.exit_code == 2
    as_file = run_cli("train", "detector", luna, "--out", tmp_path / "model.json")
    assert as_file.exit_code == 1 and "folder" in as_file.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_train_one_model_folder(luna: Path, tmp_path: Path) -> None:
    """Both ranks end with the same weights (DDP) and one model folder is written."""
    mp.spawn(_rank, args=(_free_port(), str(luna), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    torch.manual_seed(0)  # as train_detector seeds before building the network (seed 0)
    start = NoduleDetector(preset_config("cpu", **TINY)).network.state_dict()
    assert all(start[k].shape == r0[k].shape for k in r0)
    assert not all(torch.equal(r0[k], start[k]) for k in r0)  # it did train
    folder = load_bundle(tmp_path / "model").network.state_dict()
    assert all(torch.equal(r0[k], folder[k]) for k in r0)
    assert len((tmp_path / "model" / "metrics.jsonl").read_text().splitlines()) == 1


def _rank(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    from activecad.training import distributed

    torch.set_num_threads(1)
    # TINY has no validation split, so no best-weights broadcast: equal weights at the end
    # come from DDP's gradient averaging alone.
    config = preset_config("cpu", **{**TINY, "steps_per_epoch": 2})
    result = train_detector(data, Path(out) / "model", config, cache_dir=Path(out) / "cache")
    assert result.network is not None
    torch.save(result.network.state_dict(), Path(out) / f"rank{rank}.pt")
    distributed.teardown()
