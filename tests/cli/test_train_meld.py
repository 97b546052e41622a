"""``activecad train meld`` and ``activecad phantom --lesion-sets`` on a tiny lesion cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from activecad.cli.train_meld import scaled_drops
from activecad.data.lesion_slices import DATASETS
from activecad.models.bundle import write_bundle
from activecad.models.meld import load_meld, load_meld_preprocessing
from tests.cli.conftest import FAST

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_error_line(res) -> str:
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_train_meld_writes_a_loadable_model_with_its_preprocessing(meld_model) -> None:
    out, summary = meld_model
    net = load_meld(out)
    # The cpu preset's network for the small phantom: native size, anchors from 6 px.
    assert net.config.image_size is None and net.config.anchor_sizes == (6, 12, 24, 48)
    assert net.config.epochs == 2 and net.config.steps_per_epoch == 2
    prep = load_meld_preprocessing(out)
    assert (prep.pixel_mm, prep.slice_mm) == (2.8, 2.5)
    assert prep.hu_window == (-600.0, 400.0)  # the cpu preset's window (README: why)
    assert summary["hu_window"] == [-600.0, 400.0]
    assert set(summary["datasets"]) == set(DATASETS)
    # Three DeepLesion patients: Train_Val_Test gives one to validation, one to the test.
    assert summary["datasets"]["universal"]["val_patients"] == 1
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all("avg_sensitivity" in h for h in history)
    assert (out / "epochs" / "epoch_001.pt").is_file()
    training = json.loads((out / "training.json").read_text())
    assert training["datasets"] == summary["datasets"] and len(training["test_patients"]) == 1


def test_epochs_keep_the_rate_drops_at_their_share_of_the_schedule(meld_model) -> None:
    # Paper: drops after epochs 4 and 6 of 8. Of 2 epochs: 4 * 2/8 = 1; 6 * 2/8 = 1.5 -> 2,
    # the last epoch, left out.
    assert load_meld(meld_model[0]).config.lr_drop_epochs == (1,)
    assert scaled_drops((4, 6), 8, 4) == (2, 3)
    assert scaled_drops((4, 6), 8, 1) == ()
    assert scaled_drops((4, 6), 8, 16) == (8, 12)


def test_universal_alone_is_the_single_dataset_baseline(run_cli, tmp_path, lesion_cohort) -> None:
    out = tmp_path / "baseline"
    res = run_cli(
        "train", "meld", lesion_cohort, "--out", out, "--datasets", "universal",
        "--epochs", "1", "--steps-per-epoch", "1", *FAST, "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert list(summary["datasets"]) == ["universal"]
    assert list(json.loads((out / "training.json").read_text())["datasets"]) == ["universal"]
    assert load_meld(out).config.epochs == 1


def test_progress_and_summary_without_json(run_cli, tmp_path, lesion_cohort) -> None:
    out = tmp_path / "m"
    res = run_cli(
        "train", "meld", lesion_cohort, "--out", out, "--datasets", "deeplesion,luna",
        "--epochs", "1", "--steps-per-epoch", "1", *FAST,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "epoch 1/1: loss" in res.stderr and "validation avg sensitivity" in res.stderr
    assert f"model written to {out} (1 epochs" in res.stdout
    assert "lung_nodules" in res.stderr and "liver_tumours" not in res.stderr


def test_init_from_an_epoch_file_keeps_network_and_preprocessing(
    run_cli, tmp_path, lesion_cohort, meld_model
) -> None:
    start, _ = meld_model
    out = tmp_path / "tuned"
    res = run_cli(
        "train", "meld", lesion_cohort, "--out", out, "--init-from",
        start / "epochs" / "epoch_001.pt", "--epochs", "1", "--steps-per-epoch", "1", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert load_meld_preprocessing(out) == load_meld_preprocessing(start)
    assert load_meld(out).config.anchor_sizes == load_meld(start).config.anchor_sizes
    assert json.loads(res.stdout)["epochs"] == 1


def _other_kind_model(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "fpr_model", kind="fpr", preset="cpu", config={}, weights={})


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        ("empty", 1, "no lesion dataset folder"),
        ("missing", 1, "no such data folder"),
        ("typo", 2, "did you mean 'lung_nodules'?"),
        ("absent", 1, "--datasets names lits/ (liver_tumours), which the folder lacks"),
        ("other_kind", 1, "holds a 'fpr' model, not a 'meld' one"),
        ("pixel", 1, "--pixel-mm 1 differs from the 2.8 mm the start model was trained at"),
        ("window", 1, "--hu-window differs from the -600,400 HU the start model was trained at"),
        ("window_text", 2, "--hu-window takes LOW,HIGH in HU"),
        ("window_order", 2, "--hu-window needs LOW < HIGH"),
        ("loose_file", 1, "a weights file outside a MELD model folder"),
        ("preset", 2, "unknown preset 'gpu'"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(
    run_cli, tmp_path, lesion_cohort, meld_model, case, code, expected
) -> None:
    data = lesion_cohort
    extra: list[str | Path] = []
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "missing":
        data = tmp_path / "nowhere"
    elif case == "typo":
        extra = ["--datasets", "universal,lung_nodule"]
    elif case == "absent":
        data = tmp_path / "only_deeplesion"
        data.mkdir()
        (data / "deeplesion").symlink_to(lesion_cohort / "deeplesion")
        extra = ["--datasets", "universal,lits"]
    elif case == "other_kind":
        extra = ["--init-from", _other_kind_model(tmp_path)]
    elif case == "pixel":
        extra = ["--init-from", meld_model[0], "--pixel-mm", "1"]
    elif case == "window":
        extra = ["--init-from", meld_model[0], "--hu-window=-1024,3071"]
    elif case == "window_text":
        extra = ["--hu-window", "soft"]
    elif case == "window_order":
        extra = ["--hu-window=400,-600"]
    elif case == "loose_file":
        loose = tmp_path / "epoch.pt"
        torch.save(load_meld(meld_model[0]).state_dict(), loose)
        extra = ["--init-from", loose]
    elif case == "preset":
        extra = ["--preset", "gpu"]
    out = tmp_path / "model"
    res = run_cli("train", "meld", data, "--out", out, "--epochs", "1", *extra)
    assert res.exit_code == code
    assert expected in _one_error_line(res)
    assert not out.exists()


def test_phantom_lesion_sets_writes_the_four_folders(run_cli, tmp_path) -> None:
    out = tmp_path / "sets"
    res = run_cli("phantom", "--lesion-sets", "--out", out, "--patients", "1", "--json")
    assert res.exit_code == 0, res.stderr
    counts = json.loads(res.stdout)["counts"]
    assert set(counts) == {"deeplesion", "luna", "lits", "nih_ln"}
    assert all(c["patients"] == 1 for c in counts.values())
    for name in ("deeplesion/DL_info.csv", "deeplesion/Images_png", "luna/annotations.csv"):
        assert (out / name).exists(), name
    assert (out / "manifest.json").is_file() and not (out / "ct").exists()


def test_phantom_lesion_sets_refuse_cohort_only_options(run_cli, tmp_path) -> None:
    res = run_cli("phantom", "--lesion-sets", "--out", tmp_path / "s", "--formats", "nifti")
    assert res.exit_code == 2
    assert "--formats" in _one_error_line(res)
    assert not (tmp_path / "s").exists()


def test_a_model_folder_from_before_the_window_option_reads_as_meld_window(
    meld_model, tmp_path
) -> None:
    # Folders written before hu_window existed were trained with MELD's -1024..3071.
    import shutil

    old = tmp_path / "old_model"
    shutil.copytree(meld_model[0], old)
    (old / "preprocess.json").write_text('{"pixel_mm": 2.8, "slice_mm": 2.5}')
    assert load_meld_preprocessing(old).hu_window == (-1024.0, 3071.0)


def test_an_interrupted_run_resumes_to_the_same_weights(
    run_cli, tmp_path, lesion_cohort, meld_model, monkeypatch
) -> None:
    from activecad.models.meld import train as meld_train

    start_epoch = meld_train.MeldFitTask.start_epoch

    def stop_after_first_epoch(self, epoch: int) -> None:
        if epoch == 1:  # the second epoch starts: the first one is checkpointed
            raise KeyboardInterrupt
        start_epoch(self, epoch)

    out = tmp_path / "model"
    args = ["train", "meld", lesion_cohort, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(meld_train.MeldFitTask, "start_epoch", stop_after_first_epoch)
        res = run_cli(*args, "--epochs", "2", "--steps-per-epoch", "2", *FAST, "--json")
    assert res.exit_code != 0
    partial = tmp_path / ".model.partial"
    assert not out.exists() and (partial / "checkpoint.pt").is_file()
    assert "--resume" in res.stderr
    # A new run into the same --out is refused while the interrupted one is kept.
    again = run_cli(*args, "--epochs", "2")
    assert again.exit_code == 1 and "an interrupted run of this --out" in again.stderr
    # Settings come from the run itself.
    mixed = run_cli(*args, "--resume", "--epochs", "3")
    assert mixed.exit_code == 2 and "drop --epochs" in mixed.stderr
    res = run_cli(*args, "--resume", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["epochs"] == 2 and not partial.exists()
    # The engine reseeds every epoch, so the resumed run ends where an uninterrupted one does.
    resumed, straight = load_meld(out).state_dict(), load_meld(meld_model[0]).state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert json.loads((out / "training.json").read_text())["resumed"] is True


def test_resume_without_an_interrupted_run_is_an_input_error(
    run_cli, tmp_path, lesion_cohort
) -> None:
    res = run_cli("train", "meld", lesion_cohort, "--out", tmp_path / "m", "--resume")
    assert res.exit_code == 1
    assert "nothing to resume" in _one_error_line(res)


def test_single_type_share_is_kept_in_the_model_config(run_cli, tmp_path, lesion_cohort) -> None:
    out = tmp_path / "shared"
    res = run_cli(
        "train", "meld", lesion_cohort, "--out", out, "--datasets", "universal,lymph_nodes",
        "--single-type-share", "0.5", "--epochs", "1", "--steps-per-epoch", "1", *FAST, "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert load_meld(out).config.single_type_share == 0.5
    res = run_cli(
        "train", "meld", lesion_cohort, "--out", tmp_path / "bad", "--single-type-share", "1.5"
    )
    assert res.exit_code == 2 and "--single-type-share" in res.stderr
