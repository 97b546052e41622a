"""Universal lesion detection on the phantom: MELD, missing-annotation matching (MAM) and
negative-region mining (NRM) against a single-dataset baseline.

Yan et al., "Universal Lesion Detection by Learning from Multiple Heterogeneously Labeled
Datasets" (2020): Table 1 (baseline, MELD, + MAM, + NRM, + both), Table 4 (dataset
concatenation, concatenation of positives only, multi-task = MELD, suspicious lesions as
positives vs ignored), the precision and recall of the mined lesions and suspicious regions
against the phantom's full truth, and the theta / sigma sweeps of Fig. 5 (mining quality;
the sensitivity sweeps need a fine-tune per value and are left to a longer run).

Set-up: ``activecad.phantom.lesion_sets`` writes a universal DeepLesion-style set (key-slice
boxes, about half the lesions unlabelled, 2-3 studies per patient) and three fully labelled
single-type sets on other patients. Every model is the cpu preset; the universal set is
split 70/15/15 by patient (``Train_Val_Test``), and the test patients' sub-volumes with
*every* lesion (``DL_info_full.csv``) are the volumetric test set, evaluated once per model.
From-scratch models train ``EPOCHS`` epochs; mining uses the finished MELD model and each
mining variant fine-tunes from MELD's epoch ``EPOCHS // 2`` for the remaining epochs, so all
rows have the same number of epochs (the paper fine-tunes from an intermediate checkpoint).

    python benchmarks/meld.py run --work /work/exp/meld       # hours on 2 cores; resumable
    python benchmarks/meld.py run --work /work/exp/meld --seed 12 --only meld_finetune_plain
    python benchmarks/meld.py snapshot --work /work/exp/meld  # before the machine goes
    python benchmarks/meld.py predictions --work /work/exp/meld  # rows evaluated without them
    python benchmarks/meld.py report                          # from what has finished
    python benchmarks/meld.py diagnose-rows --work /work/exp/meld  # rows by lesion type

Each step writes its output under ``--work`` and is skipped when it exists. A finished row
(its evaluation, training time and validation history), the mining measurements and the
MELD model that mining and fine-tuning start from are also kept in
``benchmarks/results/meld_state/`` and committed, so that a new machine goes on from there
instead of training them again; ``snapshot`` keeps the last epoch of a model still training
there too, and each row's test detections (``predictions/``, with the truth) for paired
bootstrap comparisons between rows. ``run --seed N`` trains rows again with another
training seed (``ROW_seedN``); ``report`` gives each row's spread over seeds. Results:
``benchmarks/results/meld.json``, ``meld_froc.png``, ``meld_mining_sweep.png``. The rows
measured before the phantom and model fixes of December 2026 are kept in
``benchmarks/results/meld_before_fixes/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PATIENTS = {"deeplesion": 120, "luna": 15, "lits": 15, "nih_ln": 15}
SEED = 11
# The small phantom's pixels are 2.8 mm, its lesions 3-10 px wide. Upsampled to 1.4 mm and
# fed at that size (no resize to 160 px), with anchors from 6 px, the smallest lesions still
# span more than one cell of the finest (stride-4) feature map: at 2 mm and 160 px a first
# run's boxes were ~3 px, below the smallest anchor, and after 4 epochs nothing was found.
PIXEL_MM = 1.4
MODEL = {"image_size": None, "anchor_sizes": (6, 12, 24, 48)}
SLICE_MM = 2.5  # the small phantom's own slice interval (the paper resamples to 2 mm)
# The cpu preset's window, not MELD's -1024..3071: in that window the first attempt's model
# found 3 of 105 test lesions after 8 epochs (meld_first_attempt.json); see the README.
HU_WINDOW = (-600.0, 400.0)
EPOCHS = 8
# 400 steps of 4 samples an epoch (about four passes over the universal key slices): the
# first attempt's one pass an epoch (2,000 steps in all) left the classifier unconfident
# everywhere (median top score 0.07 on training slices).
STEPS_PER_EPOCH = 400
# The models that see the single-type sets draw them as at most half of each epoch (about
# their share in the paper, where DeepLesion's 22,000 key slices are the other half) and
# take twice the steps, so their universal expert sees as many universal samples as the
# baseline does: a first run gave every model 400 steps, and MELD's universal expert saw a
# quarter of the baseline's universal samples (226 of 958 an epoch), most at lower rates.
SINGLE_TYPE_SHARE = 0.5
MIXED_STEPS_PER_EPOCH = round(STEPS_PER_EPOCH / (1 - SINGLE_TYPE_SHARE))
THETAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
SIGMAS = (0.3, 0.5, 0.7, 0.9)
THETA = 0.15
SIGMA = 0.5
# The cut of the MAM rows marked "cut": at theta 0.15 it gave a precision near the paper's
# 90 % on the training slices (diagnose-mam; chosen there, never on the test sub-volumes).
MAM_MIN_SCORE = 0.5
BOOTSTRAP = 1000  # resamples of the test sub-volumes for the 95 % intervals
STATE = RESULTS / "meld_state"
# The mining rows: fine-tunes of MELD's epoch EPOCHS // 2 with what mining found.
FINETUNES = {
    "meld_mam": {"use_mined": True, "use_suspicious": False},
    "meld_nrm": {"use_mined": False, "use_suspicious": True},
    "meld_mam_nrm": {"use_mined": True, "use_suspicious": True},
    "meld_mam_nrm_positive": {"suspicious_as": "positive"},
    # The control: the same fine-tune (unlabelled slices added, second half of the
    # schedule) with nothing mined, so the mining rows' gain is told apart from the
    # fine-tune's own.
    "meld_finetune_plain": {"use_mined": False, "use_suspicious": False},
    # MAM over the proposals a detection threshold keeps: with every proposal (19 a slice,
    # median score 0.04), 90 % of the mined lesions were not lesions (meld_diagnosis.json).
    "meld_mam_cut": {"use_mined": True, "use_suspicious": False, "min_score": MAM_MIN_SCORE},
    "meld_mam_nrm_cut": {"use_mined": True, "use_suspicious": True, "min_score": MAM_MIN_SCORE},
}
# What mining and the fine-tunes need of the finished MELD model (weights only, 1.7 MB each).
MELD_FILES = (
    "bundle.json", "config.yaml", "history.json", "preprocess.json", "seconds.json",
    f"epochs/epoch_{EPOCHS // 2:03d}.pt", "weights.pt",  # weights last: the copy is whole
)  # fmt: skip

app = typer.Typer(add_completion=False)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _sets(work: Path):
    from activecad.data.lesion_samples import load_lesion_sets
    from activecad.phantom.lesion_sets import write_lesion_sets

    data = work / "data"
    if not (data / "manifest.json").is_file():
        _say(f"writing the lesion cohort {PATIENTS}")
        write_lesion_sets(data, patients_per_set=PATIENTS, seed=SEED, progress=True)
    return load_lesion_sets(
        data, pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, split="official", hu_window=HU_WINDOW
    )


def _universal(samples):
    """Every sample as the universal dataset's (dataset concatenation: one task)."""
    return [replace(s, dataset="universal") for s in samples]


def _positive_only(samples):
    """Single-type lesion slices only, everything but their lesions ignored."""
    out = []
    for s in samples:
        if not len(s.boxes):
            continue
        h, w = s.image.shape[1:]
        whole = np.array([[0.0, 0.0, float(w), float(h)]])
        out.append(replace(s, dataset="universal", ignore_boxes=whole))
    return out


def _source(sets, variant: str):
    """The training sampler of a from-scratch variant."""

    def draw(rng):
        if variant == "baseline":
            return [s for s in sets.train_source(rng) if s.dataset == "universal"]
        samples = sets.train_source(rng, single_type_share=SINGLE_TYPE_SHARE)
        if variant == "concat":
            return _universal(samples)
        if variant == "concat_positive":
            universal = [s for s in samples if s.dataset == "universal"]
            return universal + _positive_only([s for s in samples if s.dataset != "universal"])
        return samples  # meld: every dataset its own task

    return draw


def _val(sets, variant: str):
    samples = sets.val_samples()
    if variant == "meld":
        return samples
    return [s for s in samples if s.dataset == "universal"]


def _fit(
    work: Path,
    name: str,
    source,
    val,
    *,
    epochs: int,
    init_from: Path | None = None,
    mixed: bool = True,
    seed: int = SEED,
):
    """Train (or continue) one model; ``mixed``: it sees the single-type sets too; ``seed``:
    of the weights' initialisation and of the order samples are drawn in."""
    from activecad.data.lesion_samples import augment_sample
    from activecad.models.meld import MeldPreprocessing, load_meld, preset_config, train_meld

    out = work / "models" / name
    kept = STATE / "model" / name
    if not (out / "weights.pt").is_file() and (kept / "weights.pt").is_file():
        _say(f"restoring {name} from {kept}")
        shutil.copytree(kept, out, dirs_exist_ok=True)
    if (out / "weights.pt").is_file():
        return load_meld(out)
    partial = STATE / "partial" / name / "checkpoint.pt"
    if not (out / "checkpoint.pt").is_file() and partial.is_file():
        _say(f"resuming {name} from {partial}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(partial, out / "checkpoint.pt")
    if _row_done(name):
        # Retraining would give another model than the one the committed row measured.
        raise typer.BadParameter(
            f"{name}'s row is committed but its model is in neither {out} nor {kept}; "
            f"restore {kept} from git, or delete the row to measure a new model"
        )
    options = {}
    if init_from is not None:
        # Fine-tuning runs the second half of MELD's schedule from its epoch 4: the rate a
        # tenth of the base, a hundredth after one more drop half-way through.
        base = preset_config("cpu").lr
        options = {"lr": base / 10, "lr_drop_epochs": (max(1, epochs // 2),)}
    steps = MIXED_STEPS_PER_EPOCH if mixed else STEPS_PER_EPOCH
    config = preset_config(
        "cpu", epochs=epochs, steps_per_epoch=steps, seed=seed, amp=False, **MODEL, **options,
    )  # fmt: skip
    _say(f"training {name} ({epochs} epochs{', from ' + init_from.name if init_from else ''})")
    start = time.perf_counter()
    net, _ = train_meld(
        source, val, config, augment=augment_sample, out_dir=out, init_from=init_from,
        resume=(out / "checkpoint.pt").is_file(), device="cpu", progress=True,
        preprocessing=MeldPreprocessing(
            pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, hu_window=HU_WINDOW
        ),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if partial.is_file():
        # Part of the fit ran on an earlier machine: its time is the epochs' own records
        # (training steps only, so a little below the wall time of an unbroken run).
        history = json.loads((out / "history.json").read_text())
        seconds = sum(record["seconds"] for record in history)
    (out / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return net


def _keep_model(work: Path, name: str) -> None:
    """Commit-ready copy of a model that later steps start from (``weights.pt`` copied last
    marks a whole copy)."""
    if (STATE / "model" / name / "weights.pt").is_file():
        return
    for file in MELD_FILES:
        source, target = work / "models" / name / file, STATE / "model" / name / file
        if source.is_file():  # seconds.json is absent from a model restored by an older run
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)


def _row_done(name: str) -> bool:
    return (STATE / "rows" / f"{name}.json").is_file()


def _evaluate(work: Path, name: str, net, sets) -> None:
    """One row: the test evaluation, the training time and the validation history."""
    from activecad.lesions.pipeline import volume_froc

    path = STATE / "rows" / f"{name}.json"
    if path.is_file():
        return
    _say(f"evaluating {name} on {len(sets.evaluation)} test sub-volumes")
    found = _keep_predictions(name, net, sets)
    result = volume_froc(found.volume_ids, found.detections, found.truths, bootstrap=BOOTSTRAP)
    seconds = work / "models" / name / "seconds.json"
    result["train_seconds"] = (
        json.loads(seconds.read_text())["seconds"] if seconds.is_file() else None
    )
    result["validation_per_epoch"] = _val_history(work / "models" / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result))
    path.with_suffix(".tmp").replace(path)  # a row file is never half written


PREDICTIONS = STATE / "predictions"


def _keep_predictions(name: str, net, sets):
    """The row's detections on the test sub-volumes, kept (with the truth) for the paired
    comparisons of :func:`report`; read back when kept already."""
    from activecad.lesions.pipeline import VolumePredictions, predict_volumes

    path = PREDICTIONS / f"{name}.csv.gz"
    truth = PREDICTIONS / "truth.csv.gz"
    if path.is_file() and truth.is_file():
        ids = json.loads((PREDICTIONS / "volumes.json").read_text())
        return VolumePredictions.from_tables(pd.read_csv(path), pd.read_csv(truth), ids)
    found = predict_volumes(net, sets.evaluation)
    detections, truth_table = found.to_tables()
    PREDICTIONS.mkdir(parents=True, exist_ok=True)
    if not truth.is_file():
        (PREDICTIONS / "volumes.json").write_text(json.dumps(found.volume_ids))
        truth_table.to_csv(truth, index=False)
    # Full precision: rounded boxes move borderline IoUs and the row's own figure with them.
    detections.to_csv(path.with_suffix(".tmp"), index=False, compression="gzip")
    path.with_suffix(".tmp").replace(path)
    return found


@app.command()
def predictions(work: Path = typer.Option(..., help="The working folder of `run`.")) -> None:
    """Keep the test detections of every evaluated row whose model is still at hand (rows
    evaluated before predictions were kept), for the paired comparisons of ``report``."""
    from activecad.models.meld import load_meld

    torch.set_num_threads(1)
    sets = _sets(work)
    for name, _ in ROWS:
        model = work / "models" / name
        if not _row_done(name) or (PREDICTIONS / f"{name}.csv.gz").is_file():
            continue
        if not (model / "weights.pt").is_file():
            model = STATE / "model" / name
        if (model / "weights.pt").is_file():
            _say(f"predicting with {name}")
            _keep_predictions(name, load_meld(model), sets)
        else:
            _say(f"{name}: its model is gone; no paired comparison for it")


# The comparisons Tables 1 and 4 make: (reference, row).
PAIRS = (
    ("baseline", "meld"),
    ("meld", "meld_mam"),
    ("meld", "meld_nrm"),
    ("meld", "meld_mam_nrm"),
    ("meld_mam_nrm", "meld_mam_nrm_positive"),
    ("meld", "meld_finetune_plain"),
    ("meld_finetune_plain", "meld_mam"),
    ("meld_finetune_plain", "meld_nrm"),
    ("meld_finetune_plain", "meld_mam_nrm"),
    ("meld_finetune_plain", "meld_mam_cut"),
    ("meld_finetune_plain", "meld_mam_nrm_cut"),
    ("concat", "meld"),
    ("concat_positive", "meld"),
)


def _other_seeds() -> list[int]:
    """The training seeds besides the first that have a finished row."""
    found = {int(p.stem.rsplit("_seed", 1)[1]) for p in (STATE / "rows").glob("*_seed*.json")}
    return sorted(found)


def _paired() -> dict[str, dict[str, float]]:
    """Paired sub-volume bootstrap of each comparison whose two rows' detections are kept,
    for every training seed (both rows of a comparison trained with the same seed)."""
    from activecad.lesions.pipeline import VolumePredictions, paired_volume_difference

    truth = PREDICTIONS / "truth.csv.gz"
    if not truth.is_file():
        return {}
    ids = json.loads((PREDICTIONS / "volumes.json").read_text())
    truth_table = pd.read_csv(truth)
    found = {
        path.name.removesuffix(".csv.gz"): VolumePredictions.from_tables(
            pd.read_csv(path), truth_table, ids
        )
        for path in sorted(PREDICTIONS.glob("*.csv.gz"))
        if path != truth
    }
    out = {}
    for seed in (SEED, *_other_seeds()):
        label = "" if seed == SEED else f" (seed {seed})"
        for a, b in PAIRS:
            a, b = _seeded(a, seed), _seeded(b, seed)
            if a in found and b in found:
                key = f"{b.removesuffix(f'_seed{seed}')} - {a.removesuffix(f'_seed{seed}')}"
                out[key + label] = paired_volume_difference(found[a], found[b], bootstrap=BOOTSTRAP)
    return out


def _over_seeds() -> dict[str, dict[str, object]]:
    """Each row's average sensitivity for every training seed it was run with, their mean
    and standard deviation (the training noise a single run's interval leaves out)."""
    out = {}
    for name, _ in ROWS:
        values = {}
        for seed in (SEED, *_other_seeds()):
            path = STATE / "rows" / f"{_seeded(name, seed)}.json"
            if path.is_file():
                values[str(seed)] = json.loads(path.read_text())["average_sensitivity"]
        if len(values) > 1:
            v = np.array(list(values.values()))
            out[name] = {"by_seed": values, "mean": float(v.mean()), "sd": float(v.std(ddof=1))}
    return out


def _settings() -> dict[str, object]:
    """What a committed row depends on besides the code: a resumed run must match it."""
    return {
        "patients": PATIENTS,
        "seed": SEED,
        "pixel_mm": PIXEL_MM,
        "slice_mm": SLICE_MM,
        "hu_window": HU_WINDOW,
        "epochs": EPOCHS,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "single_type_share": SINGLE_TYPE_SHARE,
        "steps_per_epoch_with_single_type_sets": MIXED_STEPS_PER_EPOCH,
        "model": {"preset": "cpu", **MODEL},
        "theta": THETA,
        "sigma": SIGMA,
        "mam_min_score_of_cut_rows": MAM_MIN_SCORE,
        "bootstrap": BOOTSTRAP,
        "iou": "continuous",
    }


@app.command()
def run(
    work: Path = typer.Option(..., help="Working folder (resumable)."),
    only: list[str] = typer.Option(
        [], "--only", help="Train only these rows (another process may train the others)."
    ),
    seed: int = typer.Option(
        SEED, help="Training seed; rows of another seed than the first are named ROW_seedN."
    ),
) -> None:
    """Train, mine, fine-tune and evaluate every row; each finished step is kept.

    The order: MELD and the baseline, then Table 1's mining rows, then Table 4's other ways
    of using the four sets (whether the sets or MELD's heads matter). With ``--only``, two
    processes can share the cores and the working folder, each training its own rows.

    With another ``--seed`` the same rows train again with that seed (the data, the
    mining and the unlabelled slices stay those of the first seed, and every fine-tune
    starts from the first seed's MELD), so that the spread of a row over seeds measures
    its training noise, which one run's test interval does not.
    """
    unknown = set(only) - {name for name, _ in ROWS}
    if unknown:
        raise typer.BadParameter(f"no such rows: {sorted(unknown)}")
    wanted = set(only) or {name for name, _ in ROWS}
    torch.set_num_threads(1)  # shared cores: two threads stall against the other jobs
    STATE.mkdir(parents=True, exist_ok=True)
    kept = STATE / "settings.json"
    if kept.is_file() and json.loads(kept.read_text()) != json.loads(json.dumps(_settings())):
        raise typer.BadParameter(f"{kept} holds the rows of other settings; move them first")
    kept.write_text(json.dumps(_settings(), indent=1))
    work.mkdir(parents=True, exist_ok=True)
    sets = _sets(work)
    # The first seed's MELD: what mining runs on and every fine-tune starts from.
    meld = _fit(work, "meld", _source(sets, "meld"), _val(sets, "meld"), epochs=EPOCHS)
    _keep_model(work, "meld")
    _evaluate(work, "meld", meld, sets)
    report()
    _fit_from_scratch(work, sets, ("baseline",) if seed == SEED else ("baseline", "meld"),
                      wanted, seed)  # fmt: skip
    mining_done = (STATE / "mining_quality.json").is_file() and all(
        _row_done(_seeded(name, seed)) for name in FINETUNES if name in wanted
    )
    if not mining_done:
        _mine_and_finetune(work, sets, meld, wanted, seed)
    _fit_from_scratch(work, sets, ("concat", "concat_positive"), wanted, seed)


def _seeded(name: str, seed: int) -> str:
    """A row's name for one training seed (the first seed's rows keep the plain name)."""
    return name if seed == SEED else f"{name}_seed{seed}"


def _fit_from_scratch(
    work: Path, sets, variants: tuple[str, ...], wanted: set[str], seed: int
) -> None:
    for variant in variants:
        row = _seeded(variant, seed)
        if variant in wanted and not _row_done(row):
            net = _fit(
                work, row, _source(sets, variant), _val(sets, variant), epochs=EPOCHS,
                mixed=variant != "baseline", seed=seed,
            )  # fmt: skip
            _evaluate(work, row, net, sets)
            report()


def _mining_slices(work: Path, sets):
    """The training patients' slices that mining runs over, and the full truth to score it."""
    from activecad.data.lesion_samples import deeplesion_training_slices
    from activecad.io.lesion_sets import read_deeplesion

    deeplesion = read_deeplesion(work / "data" / "deeplesion")
    truth = read_deeplesion(work / "data" / "deeplesion", table="DL_info_full.csv").info
    slices = deeplesion_training_slices(
        deeplesion, pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, hu_window=HU_WINDOW,
        patients=sets.datasets["universal"].train_patients,
    )  # fmt: skip
    return slices, truth


def _mining_inputs(work: Path, slices, meld):
    """MELD's passes over the training slices that every theta, sigma and score cut only
    thresholds: the slow part of mining, kept in the working folder."""
    from activecad.lesions.pipeline import predict_for_mining

    cached = work / "mining_inputs.pt"
    if cached.is_file():
        return replace(torch.load(cached, weights_only=False), slices=slices)
    inputs = predict_for_mining(meld, slices)
    torch.save(replace(inputs, slices=None), cached)
    return inputs


def _mine_and_finetune(work: Path, sets, meld, wanted: set[str], seed: int) -> None:
    """Table 1's mining rows: mine with the finished MELD model, fine-tune its epoch 4."""
    from activecad.lesions.pipeline import finetune_samples, mine_from, mining_quality

    # Mining with the finished MELD model over the training patients' slices.
    slices, truth = _mining_slices(work, sets)
    inputs = _mining_inputs(work, slices, meld)
    sweep_path = STATE / "mining_sweep.json"
    if not sweep_path.is_file():
        _say(f"mining sweep over {len(slices.samples)} training slices")
        sweep = {"theta": {}, "sigma": {}}
        for theta in THETAS:
            found = mine_from(inputs, theta=theta, sigma=SIGMA, experts=())
            sweep["theta"][f"{theta:g}"] = mining_quality(found, truth)["mam"]
        for sigma in SIGMAS:
            found = mine_from(inputs, theta=THETA, sigma=sigma)
            sweep["sigma"][f"{sigma:g}"] = mining_quality(found, truth)["nrm"]
        sweep_path.write_text(json.dumps(sweep, indent=1))
    mined = {}
    for cut in sorted({options.get("min_score", 0.0) for options in FINETUNES.values()}):
        mined[cut] = mine_from(inputs, theta=THETA, sigma=SIGMA, min_score=cut)
        quality = mining_quality(mined[cut], truth)
        name = "mining_quality.json" if cut == 0 else f"mining_quality_min_score_{cut:g}.json"
        (STATE / name).write_text(json.dumps(quality, indent=1))

    start = work / "models" / "meld" / "epochs" / f"epoch_{EPOCHS // 2:03d}.pt"
    for name, options in FINETUNES.items():
        row = _seeded(name, seed)
        if name not in wanted or _row_done(row):
            continue
        options = dict(options)
        cut = options.pop("min_score", 0.0)
        universal = finetune_samples(mined[cut], seed=SEED, **options)

        def draw(rng, universal=universal):
            return sets.train_source(rng, single_type_share=SINGLE_TYPE_SHARE, universal=universal)

        net = _fit(
            work, row, draw, _val(sets, "meld"), epochs=EPOCHS - EPOCHS // 2, init_from=start,
            seed=seed,
        )  # fmt: skip
        _evaluate(work, row, net, sets)
        report()


@app.command()
def snapshot(work: Path = typer.Option(..., help="The working folder of a running `run`.")) -> None:
    """Keep the last finished epoch of every model still training in ``meld_state/partial/``.

    Run it before a machine goes away and commit what it writes: the next ``run`` (on any
    machine) continues those fits from there instead of from scratch. A model's partial
    state is dropped from git once its row is committed.
    """
    for checkpoint in sorted((work / "models").glob("*/checkpoint.pt")):
        name = checkpoint.parent.name
        if (checkpoint.parent / "weights.pt").is_file() or _row_done(name):
            continue
        target = STATE / "partial" / name / "checkpoint.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkpoint, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
        epochs = len(torch.load(target, map_location="cpu", weights_only=False)["history"])
        _say(f"kept {name} after epoch {epochs} in {target}")


ROWS = (
    ("baseline", "Single dataset (universal only)"),
    ("concat", "Dataset concatenation"),
    ("concat_positive", "Dataset concatenation (positives only)"),
    ("meld", "MELD (multi-task)"),
    ("meld_mam", "MELD + MAM"),
    ("meld_nrm", "MELD + NRM"),
    ("meld_mam_nrm", "MELD + MAM + NRM (suspicious ignored)"),
    ("meld_mam_nrm_positive", "MELD + MAM + NRM (suspicious as positives)"),
    ("meld_finetune_plain", "MELD fine-tuned with unlabelled slices, nothing mined"),
    ("meld_mam_cut", f"MELD + MAM (proposals scored >= {MAM_MIN_SCORE:g})"),
    ("meld_mam_nrm_cut", f"MELD + MAM (proposals scored >= {MAM_MIN_SCORE:g}) + NRM"),
)


def _wilson(sensitivity: float, lesions: int) -> list[float]:
    """95 % Wilson interval of a sensitivity over ``lesions`` test lesions (a binomial
    reading: lesions taken as independent, which lesions of one patient are not quite)."""
    from scipy.stats import binomtest

    found = round(sensitivity * lesions)
    ci = binomtest(found, lesions).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(ci.low, 3), round(ci.high, 3)]


def _val_history(model: Path) -> list[dict[str, float]]:
    """Per epoch, the validation key-slice sensitivities (each expert's and their mean)."""
    path = model / "history.json"
    if not path.is_file():
        return []
    return [
        {k: round(v, 4) for k, v in h.items() if "sensitivity" in k}
        for h in json.loads(path.read_text())
    ]


@app.command()
def report() -> None:
    """Write benchmarks/results/meld*.json / png from the rows finished so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for name, label in ROWS:
        path = STATE / "rows" / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            rows[name] = {
                "label": label,
                "average_sensitivity": result["average_sensitivity"],
                "sensitivities": result["sensitivities"],
                "counts": result["counts"],
                "train_seconds": result.get("train_seconds"),
                "curve": result["curve"],
                "validation_per_epoch": result.get("validation_per_epoch", []),
                "wilson_95_at_8_fps": _wilson(
                    result["sensitivities"]["8"], result["counts"]["lesions"]
                ),
                # sub-volume bootstrap (absent from evaluations made before it existed)
                "bootstrap_95": result.get("ci_95"),
            }
    summary = {
        "what": "Universal lesion detection on the phantom (Yan et al. 2020 Tables 1 and 4)",
        "set_up": {**_settings(), "command": "python benchmarks/meld.py run --work WORK"},
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in rows.items()},
    }
    summary["paired_bootstrap_95"] = _paired()
    summary["over_training_seeds"] = _over_seeds()
    for name in ("mining_quality", f"mining_quality_min_score_{MAM_MIN_SCORE:g}", "mining_sweep"):
        path = STATE / f"{name}.json"
        if path.is_file():
            summary[name] = json.loads(path.read_text())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "meld.json").write_text(json.dumps(summary, indent=1))
    if rows:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for row in rows.values():
            ax.step(row["curve"]["fps"], row["curve"]["sensitivity"], where="post",
                    label=f"{row['label']} ({row['average_sensitivity']:.3f})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlim(1 / 8, 8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false positives per sub-volume")
        ax.set_ylabel("sensitivity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title("Held-out phantom sub-volumes, every measurable lesion annotated")
        fig.tight_layout()
        fig.savefig(RESULTS / "meld_froc.png", dpi=110)
        plt.close(fig)
    sweep = summary.get("mining_sweep")
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, (key, part, title) in zip(
            axes,
            (("theta", sweep["theta"], "MAM: theta"), ("sigma", sweep["sigma"], "NRM: sigma")),
            strict=True,
        ):
            x = [float(k) for k in part]
            ax.plot(x, [v["precision"] for v in part.values()], "o-", label="precision")
            ax.plot(x, [v["recall"] for v in part.values()], "s-", label="recall")
            ax.set_xlabel(key)
            ax.set_ylim(0, 1)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "meld_mining_sweep.png", dpi=110)
        plt.close(fig)
    print(
        json.dumps(
            summary["rows"] and {k: v["average_sensitivity"] for k, v in summary["rows"].items()}
        )
    )


# --------------------------------------------------------------------------- diagnosis
DIAGNOSIS = RESULTS / "meld_diagnosis.json"
SIZE_BINS = ((0, 6), (6, 10), (10, 20), (20, 1000))  # box width, network pixels


def _record(key: str, value: dict) -> None:
    """Add one entry to meld_diagnosis.json (the README quotes it)."""
    found = json.loads(DIAGNOSIS.read_text()) if DIAGNOSIS.is_file() else {}
    found[key] = value
    DIAGNOSIS.write_text(json.dumps(found, indent=1) + "\n")


@app.command("diagnose-mam")
def diagnose_mam(work: Path = typer.Option(..., help="The working folder of `run`.")) -> None:
    """Why MAM's mined lesions are rarely lesions: its precision and recall (against the
    full truth) with the proposals cut at a universal score, and with a mined proposal also
    required to lie near the annotation it matched (same place in the body), no fine-tune.
    """
    from activecad.lesions.pipeline import mine_from, mining_quality
    from activecad.models.meld import load_meld

    torch.set_num_threads(1)
    slices, truth = _mining_slices(work, _sets(work))
    inputs = _mining_inputs(work, slices, load_meld(STATE / "model" / "meld"))
    spacing = {
        str(name).rsplit("_", 1)[0]: [float(v) for v in tuple(sp)]
        for name, sp in zip(truth["File_name"], truth["Spacing_mm_px_"], strict=True)
    }

    def place_mm(table: pd.DataFrame) -> np.ndarray:
        """Box centres in mm of the stored image (x, y) and of the series (z)."""
        out = np.zeros((len(table), 3))
        for k, (image, *box) in enumerate(
            table[["image", "x1", "y1", "x2", "y2"]].itertuples(index=False)
        ):
            stored = slices.volume_of[image].boxes_to_stored(np.asarray(box, float))[0]
            sx, sy, sz = spacing[image.rsplit("_", 1)[0]]
            cx, cy = (stored[0] + stored[2]) / 2, (stored[1] + stored[3]) / 2
            out[k] = cx * sx, cy * sy, slices.stored_slice[image] * sz
        return out

    annotation_mm = place_mm(inputs.annotations)
    scores = inputs.proposals["score"].to_numpy(float)
    entry: dict[str, object] = {
        "proposals": len(scores),
        "proposals_per_slice": len(scores) / max(len(slices.samples), 1),
        "proposal_score_quantiles_10_50_90": np.quantile(scores, [0.1, 0.5, 0.9]).tolist(),
        "variants": {},
    }
    for cut in (0.0, 0.3, 0.5, 0.7):
        keep = scores >= cut
        subset = replace(
            inputs,
            proposals=inputs.proposals[keep].reset_index(drop=True),
            proposal_embeddings=inputs.proposal_embeddings[keep],
        )
        for theta in THETAS:
            mined = mine_from(subset, theta=theta, sigma=SIGMA, experts=())
            table = mined.mined
            gap = np.linalg.norm(
                place_mm(table) - annotation_mm[table["annotation"].to_numpy(int)], axis=1
            ) if len(table) else np.zeros(0)  # fmt: skip
            for radius in (None, 50.0, 20.0):
                near = table if radius is None else table[gap < radius]
                quality = mining_quality(replace(mined, mined=near.reset_index(drop=True)), truth)
                key = f"score>={cut:g}, theta {theta:g}, " + (
                    "anywhere" if radius is None else f"within {radius:g} mm"
                )
                entry["variants"][key] = quality["mam"]  # type: ignore[index]
                _say(f"{key}: {quality['mam']}")
    _record("mam_precision", entry)


# Lesion long axes (mm) of the by-lesion breakdown.
AXIS_BINS = ((0, 15), (15, 20), (20, 1000))  # RECIST-measured: 10 mm and up


def _test_lesions(work: Path, sets) -> pd.DataFrame:
    """The full-truth row of every test lesion, in the order of the kept truth table
    (sub-volume by sub-volume, as ``EvalVolume.ground_truth`` lists them): each truth box,
    taken back to the stored slice, is matched with the nearest box of its series."""
    from activecad.io.lesion_sets import read_deeplesion

    full = read_deeplesion(work / "data" / "deeplesion", table="DL_info_full.csv").info
    # read_deeplesion parses Bounding_boxes to (x1, y1, x2, y2) tuples
    centres = np.array(full["Bounding_boxes"].tolist(), float).reshape(-1, 2, 2).mean(axis=1)
    rows = []
    for volume in sets.evaluation:
        _, boxes = volume.ground_truth()
        stored = volume.to_stored_boxes(boxes).reshape(-1, 2, 2).mean(axis=1)
        candidates = np.flatnonzero(full["series"].to_numpy() == volume.series)
        for centre in stored:
            gap = np.linalg.norm(centres[candidates] - centre, axis=1)
            if gap.min() > 2.0:  # pixels of the stored slice
                raise RuntimeError(f"no truth row near a test lesion of {volume.volume_id}")
            rows.append(candidates[int(np.argmin(gap))])
    return full.iloc[rows].reset_index(drop=True)


def _found_at(match, fp_rate: float) -> np.ndarray:
    """Which lesions a row detects at ``fp_rate`` false positives per sub-volume: those
    hit by a 3D box scored above the highest false positive beyond that budget."""
    fps = np.sort(match.fp_probs)[::-1]
    allowed = int(np.floor(fp_rate * match.n_scans))
    cut = fps[allowed] if allowed < len(fps) else -np.inf
    return np.nan_to_num(match.nodule_probs, nan=-np.inf) > cut


@app.command("diagnose-rows")
def diagnose_rows(work: Path = typer.Option(..., help="The working folder of `run`.")) -> None:
    """Each row's test sensitivity by lesion type and size (at 1 and 4 false positives
    per sub-volume, and at any score), and its false positives' scores: where the rows'
    differences come from. Reads the kept test detections; no network runs."""
    from activecad.lesions.pipeline import VolumePredictions

    lesions = _test_lesions(work, _sets(work))
    ids = json.loads((PREDICTIONS / "volumes.json").read_text())
    truth = pd.read_csv(PREDICTIONS / "truth.csv.gz")
    if len(truth) != len(lesions):
        raise RuntimeError(f"{len(truth)} kept truth boxes, {len(lesions)} test lesions")
    axis = lesions["long_axis_mm"].to_numpy(float)
    kind = lesions["dataset"].to_numpy()
    groups = {f"type {t}": kind == t for t in sorted(set(kind))}
    groups |= {f"long axis {lo}-{hi} mm": (axis >= lo) & (axis < hi) for lo, hi in AXIS_BINS}
    entry: dict[str, object] = {
        "lesions": {name: int(mask.sum()) for name, mask in groups.items()},
        "rows": {},
    }
    for name, _ in ROWS:
        path = PREDICTIONS / f"{name}.csv.gz"
        if not path.is_file():
            continue
        match = VolumePredictions.from_tables(pd.read_csv(path), truth, ids).match()
        found = {f"{r:g} FP": _found_at(match, r) for r in (1, 4)}
        found["any score"] = ~np.isnan(match.nodule_probs)
        entry["rows"][name] = {  # type: ignore[index]
            "sensitivity": {
                group: {at: round(float(hit[mask].mean()), 3) for at, hit in found.items()}
                for group, mask in groups.items()
            },
            "false_positives_per_sub_volume_scored_ge_0.5": round(
                float(np.sum(match.fp_probs >= 0.5)) / match.n_scans, 2
            ),
            "hit_score_median": round(float(np.nanmedian(match.nodule_probs)), 3),
        }
        _say(f"{name}: {entry['rows'][name]}")  # type: ignore[index]
    entry["universal_training_key_slices"] = _missing_on_key_slices(work)
    _record("by_lesion", entry)


def _missing_on_key_slices(work: Path) -> dict[str, dict[str, int]]:
    """Per lesion type, the annotated lesions on the universal training key slices and the
    unannotated lesions that cross those same slices (negatives in training that are not)."""
    from activecad.io.lesion_sets import read_deeplesion

    full = read_deeplesion(work / "data" / "deeplesion", table="DL_info_full.csv").info
    train = full[full["Train_Val_Test"] == 1]
    low, high = (train["Slice_range"].str[k].to_numpy(int) for k in (0, 1))
    missing = train["labelled"].to_numpy() == 0
    crossing = pd.Series(0, index=sorted(set(train["dataset"])))
    for series, key in train.loc[~missing, ["series", "Key_slice_index"]].itertuples(index=False):
        on_slice = missing & (train["series"].to_numpy() == series) & (low <= key) & (key <= high)
        crossing = crossing.add(train.loc[on_slice, "dataset"].value_counts(), fill_value=0)
    annotated = train.loc[~missing, "dataset"].value_counts()
    return {
        kind: {"annotated": int(annotated.get(kind, 0)), "unannotated_crossing": int(n)}
        for kind, n in crossing.items()
    }


def _training_key_slices(sets, count: int | None = None):
    rng = np.random.default_rng(SEED)
    samples = [s for s in sets.train_source(rng) if s.dataset == "universal"]
    return samples if count is None else samples[:count]


@app.command()
def diagnose(
    work: Path = typer.Option(..., help="The folder given to run."),
    model: Path = typer.Option(..., help="A model folder, or an epoch file of one."),
    name: str = typer.Option(..., help="Key of this entry in meld_diagnosis.json."),
) -> None:
    """Where a model's proposals and detections land on the training key slices, by size:
    the share of annotated boxes with a proposal / a detection of IoU > 0.5, and with such a
    detection among the slice's top 5."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    from activecad.models.meld import MeldNet, load_meld, predict
    from activecad.models.meld.network import make_batch

    torch.set_num_threads(1)
    if model.suffix == ".pt":
        net = MeldNet(load_meld(model.parent.parent).config)
        net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
        net.eval()
    else:
        net = load_meld(model)
    sets = _sets(work)
    samples = _training_key_slices(sets)
    drawn = sets.train_source(np.random.default_rng(SEED))
    epoch_mix = {d: sum(s.dataset == d for s in drawn) for d in sets.datasets}
    table, _ = predict(net, samples)
    width, proposal, detection, top5 = [], [], [], []
    for sample in samples:
        truth = torch.as_tensor(sample.boxes, dtype=torch.float32)
        rows = table[table["image_id"] == sample.image_id].sort_values("score", ascending=False)
        found = torch.as_tensor(rows[["x1", "y1", "x2", "y2"]].to_numpy(), dtype=torch.float32)
        iou = box_iou(truth, found.reshape(-1, 4))
        hit = iou > 0.5
        detection += hit.any(1).tolist() if len(found) else [False] * len(truth)
        top5 += hit[:, :5].any(1).tolist() if len(found) else [False] * len(truth)
        with torch.no_grad():
            batch = make_batch([sample], image_size=net.config.image_size)
            features = net.features(batch.images)
            images = ImageList(batch.images, batch.image_sizes)
            proposals, _ = net.rpn(images, features, torch.zeros(1, dtype=torch.int64))
        proposal += (box_iou(truth * batch.scales[0], proposals[0]).max(1).values > 0.5).tolist()
        width += (sample.boxes[:, 2] - sample.boxes[:, 0]).tolist()
    width_a = np.array(width)
    bins = {}
    for low, high in SIZE_BINS:
        inside = (width_a >= low) & (width_a < high)
        if inside.any():
            bins[f"{low}-{high} px"] = {
                "boxes": int(inside.sum()),
                "proposal_iou_gt_0.5": float(np.mean(np.array(proposal)[inside])),
                "detection_iou_gt_0.5": float(np.mean(np.array(detection)[inside])),
                "in_top_5": float(np.mean(np.array(top5)[inside])),
            }
    entry = {
        "model": str(model),
        "training_key_slices": len(samples),
        "median_box_width_px": float(np.median(width_a)),
        "meld_epoch_samples_by_dataset": epoch_mix,
        "by_box_width": bins,
    }
    _record(name, entry)
    print(json.dumps(entry, indent=1))


@app.command()
def overfit(
    work: Path = typer.Option(..., help="The folder given to run."),
    slices: int = typer.Option(64, help="Training key slices to fit."),
    steps: int = typer.Option(800, help="Optimiser steps (4 epochs, one rate drop after 3)."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    wide: bool = typer.Option(False, help="Twice the cpu preset's widths."),
    name: str = typer.Option(..., help="Key of this entry in meld_diagnosis.json."),
) -> None:
    """Train on a few training key slices and measure the sensitivity on those same slices:
    whether the cpu preset can fit them at all within a step budget."""
    from activecad.data.lesion_samples import augment_sample
    from activecad.models.meld import preset_config, train_meld

    torch.set_num_threads(1)
    samples = _training_key_slices(_sets(work), slices)
    widths = {"widths": (32, 48, 64, 96), "fpn_channels": 64, "representation": 256}
    config = preset_config(
        "cpu", epochs=4, steps_per_epoch=steps // 4, lr_drop_epochs=(3,), lr=lr, seed=SEED,
        amp=False, **MODEL, **(widths if wide else {}),
    )  # fmt: skip
    start = time.perf_counter()
    _, history = train_meld(samples, samples, config, augment=augment_sample, device="cpu")
    entry = {
        "slices": len(samples),
        "steps": steps,
        "lr": lr,
        "wide": wide,
        "train_sensitivity_per_epoch": [h.get("avg_sensitivity") for h in history],
        "seconds": round(time.perf_counter() - start, 1),
    }
    _record(name, entry)
    print(json.dumps(entry))


if __name__ == "__main__":
    app()
