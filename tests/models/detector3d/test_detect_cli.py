"""``activecad detect``: inputs checked before any work, --out a file, the user cache folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK
import torch

from activecad.data import PreprocessCache
from activecad.models.detector3d import DetectorConfig, NoduleDetector, save_bundle


@pytest.fixture
def model_dir(one_pass: DetectorConfig, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_bundle(tmp_path / "model", NoduleDetector(one_pass))


@pytest.fixture
def one_pass(tiny_config: DetectorConfig) -> DetectorConfig:
    """The tiny detector with a window that takes these small scans in one pass (fast)."""
    return tiny_config.model_copy(update={"sw_roi_size": (64, 64, 64)})


def _scan(folder: Path, name: str) -> Path:
    array = np.random.default_rng(0).normal(-700, 100, size=(34, 36, 33)).astype(np.float32)
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mhd"
    SimpleITK.WriteImage(image, str(path))
    return path


def test_detect_writes_tables_and_caches_in_the_user_folder(
    run_cli: Callable[..., object],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "user_cache"))
    scan = _scan(tmp_path / "ct", "1.2.3")
    out, unc = tmp_path / "res" / "det.csv", tmp_path / "res" / "unc.csv"
    result = run_cli("detect", scan, "--model", model_dir, "--out", out, "--uncertainty", unc)
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    assert list(pd.read_csv(out).columns)[:5] == [
        "seriesuid", "coordX", "coordY", "coordZ", "probability"
    ]  # fmt: skip
    table = pd.read_csv(unc)
    assert list(table.columns) == [
        "seriesuid", "l_scan", "L_roi",
        "L_roi_loss_of_confident", "L_roi_loss_above_tau", "L_roi_score_above_tau",
    ]  # fmt: skip
    assert table.seriesuid.tolist() == ["1.2.3"]
    assert PreprocessCache(tmp_path / "user_cache").info().entries == 1
    assert not (model_dir / "cache").exists()
    # --cache moves it.
    again = run_cli("detect", scan, "--model", model_dir, "--out", out, "--cache", tmp_path / "c")
    assert again.exit_code == 0  # type: ignore[attr-defined]
    assert PreprocessCache(tmp_path / "c").info().entries == 1


def test_detect_with_tta_writes_the_fused_mirrored_passes(
    run_cli: Callable[..., object], model_dir: Path, tmp_path: Path
) -> None:
    from activecad.io.ct import read_scan
    from activecad.models.detector3d import detect_scan, load_bundle

    scan = _scan(tmp_path / "ct", "1.2.3")
    plain, fused = tmp_path / "plain.csv", tmp_path / "tta.csv"
    for out, extra in ((plain, []), (fused, ["--tta"])):
        result = run_cli("detect", scan, "--model", model_dir, "--out", out, *extra)
        assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    detector = load_bundle(model_dir)
    detector.config = detector.config.model_copy(update={"mirror_tta": True})
    expected = detect_scan(detector, read_scan(scan)).detections
    table = pd.read_csv(fused)
    np.testing.assert_allclose(table.probability, expected.probability, rtol=1e-4)
    np.testing.assert_allclose(table.coordX, expected.coordX, atol=1e-3)
    assert not np.allclose(pd.read_csv(plain).probability[:5], table.probability[:5])


def test_detect_with_two_models_writes_their_fused_marks(
    run_cli: Callable[..., object], one_pass: DetectorConfig, model_dir: Path, tmp_path: Path
) -> None:
    from activecad.models.detector3d.inference import fuse_models

    torch.manual_seed(1)
    second = save_bundle(tmp_path / "second", NoduleDetector(one_pass))
    scan = _scan(tmp_path / "ct", "1.2.3")
    tables = {}
    for name, models in (("a", [model_dir]), ("b", [second]), ("both", [model_dir, second])):
        given = [arg for m in models for arg in ("--model", m)]
        out, unc = tmp_path / f"{name}.csv", tmp_path / f"{name}_unc.csv"
        result = run_cli("detect", scan, *given, "--out", out, "--uncertainty", unc)
        assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
        tables[name] = (pd.read_csv(out, dtype={"seriesuid": str}), pd.read_csv(unc))
    expected = fuse_models(
        [tables["a"][0], tables["b"][0]], one_pass.nms_thresh, one_pass.detections_per_scan
    )
    pd.testing.assert_frame_equal(tables["both"][0], expected, check_dtype=False)
    # Each scan's uncertainties are the two models' means.
    mean = (tables["a"][1]["l_scan"] + tables["b"][1]["l_scan"]) / 2
    np.testing.assert_allclose(tables["both"][1]["l_scan"], mean, rtol=1e-6)


# Without --fpr-weight the final probability is sqrt(detector x classifier).
@pytest.mark.parametrize(
    ("weight_option", "fpr_weight"), [([], 0.5), (["--fpr-weight", "0.8"], 0.8)]
)
def test_detect_with_fpr_keeps_both_probabilities(
    run_cli: Callable[..., object],
    model_dir: Path,
    tmp_path: Path,
    weight_option: list[str],
    fpr_weight: float,
) -> None:
    from activecad.models.fpr import build_net, preset_config, save_fpr

    fpr_config = preset_config("cpu", patch_size=16, widths=(4, 8), patches_per_candidate=2)
    save_fpr(tmp_path / "fpr", build_net(fpr_config), fpr_config, [])
    scan = _scan(tmp_path / "ct", "1.2.3")
    out = tmp_path / "det.csv"
    result = run_cli(
        "detect", scan, "--model", model_dir, "--out", out, "--fpr", tmp_path / "fpr",
        "--cache", tmp_path / "c", *weight_option,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    table = pd.read_csv(out)
    assert {"det_probability", "fpr_probability"} <= set(table.columns)
    expected = table["det_probability"] ** (1 - fpr_weight) * table["fpr_probability"] ** fpr_weight
    np.testing.assert_allclose(table["probability"], expected, rtol=1e-6)


def test_detect_with_two_classifiers_averages_them(
    run_cli: Callable[..., object], model_dir: Path, tmp_path: Path
) -> None:
    from activecad.models.fpr import build_net, preset_config, save_fpr

    fpr_config = preset_config("cpu", patch_size=16, widths=(4, 8), patches_per_candidate=2)
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_fpr(tmp_path / f"fpr_{seed}", build_net(fpr_config), fpr_config, [])
    scan = _scan(tmp_path / "ct", "1.2.3")
    tables = {}
    for name, models in (("one", ["1"]), ("two", ["2"]), ("both", ["1", "2"])):
        given = [arg for seed in models for arg in ("--fpr", tmp_path / f"fpr_{seed}")]
        out = tmp_path / f"{name}.csv"
        result = run_cli(
            "detect", scan, "--model", model_dir, "--out", out, "--cache", tmp_path / "c", *given
        )
        assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
        tables[name] = pd.read_csv(out)
    mean = (tables["one"]["fpr_probability"] + tables["two"]["fpr_probability"]) / 2
    assert len(mean) > 0 and not np.allclose(mean, tables["one"]["fpr_probability"])
    np.testing.assert_allclose(tables["both"]["fpr_probability"], mean, rtol=1e-5)


def _chest_with_a_ball(folder: Path) -> tuple[Path, np.ndarray]:
    """Soft tissue around a lung (-850 HU) holding a 4 mm-radius ball (0 HU); 1 mm voxels.
    Returns the scan file and the ball's centre, world mm x-y-z."""
    hu = np.full((40, 44, 48), 40.0, dtype=np.float32)
    hu[6:34, 8:36, 6:42] = -850.0
    zz, yy, xx = np.mgrid[:40, :44, :48]
    hu[(zz - 20) ** 2 + (yy - 22) ** 2 + (xx - 24) ** 2 <= 16] = 0.0
    image = SimpleITK.GetImageFromArray(hu)
    image.SetOrigin((-10.0, 5.0, -60.0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "1.2.3.mhd"
    SimpleITK.WriteImage(image, str(path))
    return path, np.array([-10.0 + 24, 5.0 + 22, -60.0 + 20])


# Without --blob-score a blob's detector score is the detector's threshold (TINY's is 0).
@pytest.mark.parametrize(
    ("score_option", "det_probability"), [([], 0.0), (["--blob-score", "0.2"], 0.2)]
)
def test_detect_with_blobs_hands_the_classifier_spots_the_detector_left(
    run_cli: Callable[..., object],
    model_dir: Path,
    tmp_path: Path,
    score_option: list[str],
    det_probability: float,
) -> None:
    from activecad.models.fpr import build_net, preset_config, save_fpr

    fpr_config = preset_config("cpu", patch_size=16, widths=(4, 8), patches_per_candidate=2)
    save_fpr(tmp_path / "fpr", build_net(fpr_config), fpr_config, [])
    scan, ball = _chest_with_a_ball(tmp_path / "ct")
    out = tmp_path / "det.csv"
    result = run_cli(
        "detect", scan, "--model", model_dir, "--out", out, "--fpr", tmp_path / "fpr",
        "--blobs", "3", "--cache", tmp_path / "c", *score_option,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    table = pd.read_csv(out)
    blobs = table[table["source"] == "blob"]
    assert 1 <= len(blobs) <= 3
    # The untrained detector's marks do not cover the ball; the filter's strongest spot is it.
    xyz = blobs[["coordX", "coordY", "coordZ"]].to_numpy()
    assert np.linalg.norm(xyz - ball, axis=1).min() <= 1.0
    assert (blobs["det_probability"] == det_probability).all()
    expected = np.sqrt(det_probability * blobs["fpr_probability"])
    np.testing.assert_allclose(blobs["probability"], expected, rtol=1e-6)


def test_blobs_without_a_classifier_is_a_usage_error(
    run_cli: Callable[..., object], model_dir: Path, tmp_path: Path
) -> None:
    scan = _scan(tmp_path / "ct", "1.2.3")
    result = run_cli(
        "detect", scan, "--model", model_dir, "--out", tmp_path / "d.csv", "--blobs", "5"
    )
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "--fpr" in result.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize(
    ("option", "needs"), [(["--blob-score", "0.2"], "--blobs"), (["--fpr-weight", "0.8"], "--fpr")]
)
def test_a_scoring_option_without_what_it_scores_is_a_usage_error(
    run_cli: Callable[..., object],
    model_dir: Path,
    tmp_path: Path,
    option: list[str],
    needs: str,
) -> None:
    scan = _scan(tmp_path / "ct", "1.2.3")
    out = tmp_path / "d.csv"
    result = run_cli("detect", scan, "--model", model_dir, "--out", out, *option)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert needs in result.stderr.split("add")[-1]  # type: ignore[attr-defined]
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_scan", "no such scan file"),
        ("not_a_scan", "not a CT scan file"),
        ("raw_missing", "data file b.raw is missing"),
        ("out_is_folder", "--out must be a file, but this is a folder"),
        ("bad_model", "bundle"),
    ],
)
def test_bad_input_fails_before_the_first_scan_with_one_line(
    run_cli: Callable[..., object],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    monkeypatch.setenv("ACTIVECAD_CACHE", str(tmp_path / "user_cache"))
    good = _scan(tmp_path / "ct", "a")
    scans: list[Path] = [good]
    out, model = tmp_path / "det.csv", model_dir
    if case == "missing_scan":
        scans.append(tmp_path / "ct" / "nope.mhd")
    elif case == "not_a_scan":
        (tmp_path / "notes.txt").write_text("x")
        scans.append(tmp_path / "notes.txt")
    elif case == "raw_missing":
        broken = _scan(tmp_path / "ct", "b")
        broken.with_suffix(".raw").unlink()
        scans.append(broken)
    elif case == "out_is_folder":
        out = tmp_path / "res"
        out.mkdir()
    elif case == "bad_model":
        model = tmp_path / "empty_model"
        model.mkdir()
    result = run_cli("detect", *scans, "--model", model, "--out", out)
    assert result.exit_code == 1  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert message in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    # Nothing was processed: the good first scan was not preprocessed, nothing written.
    assert PreprocessCache(tmp_path / "user_cache").info().entries == 0
    assert not (tmp_path / "det.csv").exists()
