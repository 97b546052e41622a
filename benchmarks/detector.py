"""Benchmarks of the 3D nodule detector (cpu preset) on this machine.

Subcommands (results are merged into ``benchmarks/results/detector.json``)::

    python benchmarks/detector.py step        # training step on a 96^3 patch (median)
    python benchmarks/detector.py inference --model M  # full-size scan: 1 and several windows
    python benchmarks/detector.py cache       # cache key: path/size/mtime vs full SHA-256
    python benchmarks/detector.py pool --model M --cohort C  # pool scoring, L_RoI zeros
    python benchmarks/detector.py quality --model ours          # held-out patients, 1 h
    python benchmarks/detector.py quality --model monai-recipe  # MONAI's recipe, same split
    python benchmarks/detector.py quality --spacing 1.4 --phantom medium  # finer phantom
    python benchmarks/detector.py quality-fpr --row "ours, 1.4 mm"  # + FP reduction, same split
    python benchmarks/detector.py quality-fpr --row R --fpr-set steps=3000  # another classifier
    python benchmarks/detector.py quality-nms --row R   # NMS IoU chosen on validation
    python benchmarks/detector.py quality-tta --row R   # mirrored test-time augmentation
    python benchmarks/detector.py quality-hard-negatives --row R  # fine-tuned on its own FPs
    python benchmarks/detector.py full-truth  # rows against the phantom's own truth
    python benchmarks/detector.py ceiling --row R  # a perfect nodule finder's CPM, 3 rankings
    python benchmarks/detector.py quality-conspicuity --row R  # + core density, fit on val
    python benchmarks/detector.py paired --row "ours, 1.4 mm"  # paired CPM gain over "ours"
    python benchmarks/detector.py export      # TorchScript / ONNX export attempts

``quality`` is long: it generates (or reuses) a 240-patient cohort, splits it by patient
into train / validation / test (55 / 15 / 30 %), trains within the time budget, keeps the
best validation epoch, detects on the test split once and writes
``docs/detector_quality.png``. ``quality-fpr`` keeps the row's split and its detector's marks
on the training and validation scans beside the results (``results/detector_quality/``): a
retrained detector does not mark the same spots, so on a new machine the two-stage rows
regenerate the cohort (byte for byte) and read those marks. It can
run in the background (``nohup ... &``); its progress goes to stderr and every epoch to
``MODEL_DIR/metrics.jsonl``.
"""

from __future__ import annotations

import functools
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import typer

from activecad.phantom import PHANTOM_REVISION

if TYPE_CHECKING:
    from activecad.data import PreprocessCache
    from activecad.data.folders import LunaFolder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detector.json"
WORK = Path("/tmp/activecad_bench_detector")
# Quality rows on the current phantom revision. Rows measured on revision 1 (doubtful nodules
# drawn as plainly as the rest) stay as they were under ``quality_heldout_phantom_r1``, their
# figure in docs/detector_quality_phantom_r1.png, their detections in
# results/detector_quality/phantom_r1/.
QUALITY = "quality_heldout"

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _machine() -> dict[str, object]:
    return {
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _record(key: str, value: dict[str, object]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[key] = {
        **value,
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(json.dumps({key: results[key]}, indent=2))


@app.command()
def step(
    preset: str = "cpu", steps: int = 10, warmup: int = 2, threads: int = 2, batch: int = 2
) -> None:
    """Median wall time of one training step (forward, Eq. 3 losses, backward, update)."""
    from activecad.models.detector3d import NoduleDetector, preset_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = preset_config(preset, batch_size=batch, patch_size=(96, 96, 96))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    detector = NoduleDetector(config).to(device).train()
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=1e-3)
    images = torch.rand(batch, 1, 96, 96, 96, device=device)
    targets = [
        {
            "boxes": torch.tensor([[40.0, 40.0, 40.0, 50.0, 50.0, 50.0]], device=device),
            "labels": torch.zeros(1, dtype=torch.long, device=device),
        }
    ] * batch
    generator = torch.Generator().manual_seed(0)
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        losses = detector.compute_losses(images, targets, generator=generator)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    _record(
        f"train_step_{preset}",
        {
            "patch": [96, 96, 96],
            "batch": batch,
            "steps": steps,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "parameters": sum(p.numel() for p in detector.network.parameters()),
        },
    )


INFERENCE_VARIANTS = ("lung_crop", "just_over", "no_crop")


@app.command()
def inference(
    model: Path = typer.Option(
        ..., help="Trained model folder (e.g. 300 steps of 'train detector' on a phantom)."
    ),
    score_thresh: float | None = typer.Option(
        None, help="Override the model's score threshold (0 guarantees detections)."
    ),
    threads: int = 2,
    seed: int = 0,
) -> None:
    """Time and peak memory of detection (network, NMS, world mapping) on a full-size scan.

    One full-size (512 x 512 x ~265, 0.7 x 0.7 x 1.25 mm) phantom scan, three ways, each in
    a fresh process: ``lung_crop`` as ``detect`` runs it (the lung-cropped scan; it fits the
    320-voxel window: one pass), ``just_over`` (327 x 228 x 322 voxels of the resampled scan,
    the size the issue measured at 47 s: just over the window along x and z, split evenly)
    and ``no_crop`` (the whole resampled scan: several windows along every axis).
    """
    from activecad.phantom import generate_cohort

    folder = WORK / f"full_{seed}"
    if not (folder / "annotations.csv").is_file():
        generate_cohort(folder, patients=1, seed=seed, preset="full")
    scan = sorted((folder / "ct").glob("*.mhd"))[0]
    results = {}
    for variant in INFERENCE_VARIANTS:
        # A fresh process, so the peak resident memory is the detector's alone.
        worker = [
            sys.executable, __file__, "inference-worker", str(scan),
            "--model", str(model), "--threads", str(threads), "--variant", variant,
        ]  # fmt: skip
        if score_thresh is not None:
            worker += ["--score-thresh", str(score_thresh)]
        out = subprocess.run(worker, check=True, capture_output=True, text=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        typer.echo(json.dumps({variant: results[variant]}), err=True)
    _record("inference_full_scan_cpu", {"model": str(model), **results})


@app.command("inference-worker", hidden=True)
def inference_worker(
    scan: Path,
    model: Path = typer.Option(...),
    threads: int = 2,
    variant: str = "lung_crop",
    score_thresh: float | None = None,
) -> None:
    from monai.data.utils import dense_patch_slices

    from activecad.data.preprocess import preprocess_scan
    from activecad.io.ct import read_scan
    from activecad.models.detector3d import detect_prepared, load_bundle, min_shape_zyx
    from activecad.models.detector3d.network import window_size

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    detector = load_bundle(model)
    if score_thresh is not None:
        detector.config = detector.config.model_copy(update={"score_thresh": score_thresh})
    cfg = detector.config
    detector.eval()
    read_start = time.perf_counter()
    ct = read_scan(scan)
    read_s = time.perf_counter() - read_start
    start = time.perf_counter()
    preprocess = cfg.preprocess.model_copy(update={"lung_crop": variant != "no_crop"})
    prepared = preprocess_scan(ct, preprocess, min_shape_zyx=min_shape_zyx(detector))
    if variant == "just_over":
        preprocess = preprocess.model_copy(update={"lung_crop": False})
        prepared = preprocess_scan(ct, preprocess, min_shape_zyx=min_shape_zyx(detector))
        prepared.array = np.ascontiguousarray(prepared.array[:322, :228, :327])  # z-y-x
    preprocess_s = time.perf_counter() - start
    start = time.perf_counter()
    result = detect_prepared(detector, prepared)
    seconds = time.perf_counter() - start
    padded = [-(-n // 32) * 32 for n in prepared.array.shape[::-1]]
    window = window_size(padded, cfg.sw_roi_size, cfg.sw_overlap)
    scan_interval = [max(1, int(w * (1 - cfg.sw_overlap))) for w in window]
    windows = len(dense_patch_slices(padded, window, scan_interval))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        json.dumps(
            {
                "scan_shape_zyx": list(ct.shape),
                "spacing_xyz_mm": ct.spacing.tolist(),
                "network_input_xyz": padded,
                "valid_xyz": list(prepared.array.shape[::-1]),
                "window_xyz": list(window),
                "windows": windows,
                "read_s": read_s,
                "preprocess_s": preprocess_s,
                "detect_s": seconds,
                "peak_rss_gb": peak_gb,
                "detections": len(result.detections),
                "max_probability": float(result.detections["probability"].max())
                if len(result.detections)
                else None,
                "score_thresh": cfg.score_thresh,
                "l_scan": result.l_scan,
                "l_roi": result.l_roi_variants,
            }
        )
    )


@app.command()
def pool(
    model: Path = typer.Option(..., help="Trained model folder."),
    cohort: Path = typer.Option(..., help="Phantom cohort folder (ct/*.mhd)."),
    split: Path | None = typer.Option(
        None, help="JSON with a 'pool' list of series UIDs (default: every scan)."
    ),
    tau: float = 0.5,
    score_thresh: float | None = typer.Option(None, help="Override the score threshold."),
    threads: int = 2,
) -> None:
    """Score a phantom pool: seconds per scan, and how often each L_RoI reading is 0 at tau."""
    from activecad.data import PreprocessCache
    from activecad.models.detector3d import ROI_VARIANTS, load_bundle, pool_table, score_pool

    torch.set_num_threads(threads)
    detector = load_bundle(model)
    update: dict[str, object] = {"roi_tau": tau}
    if score_thresh is not None:
        update["score_thresh"] = score_thresh
    detector.config = detector.config.model_copy(update=update)
    if split is not None:
        series: list[str | Path] = list(json.loads(split.read_text())["pool"])
    else:
        series = sorted((cohort / "ct").glob("*.mhd"))
    cache = PreprocessCache(WORK / "cache_pool")
    start = time.perf_counter()
    scores = list(score_pool(detector, series, folder=cohort, cache=cache, progress=False))
    first_s = time.perf_counter() - start
    # Again for three scans, now all cache hits (preprocessing skipped).
    start = time.perf_counter()
    list(score_pool(detector, series[:3], folder=cohort, cache=cache, progress=False))
    cached_s = (time.perf_counter() - start) * len(series) / min(len(series), 3)
    table, embeddings = pool_table(scores)
    zeros = {v: float((table[f"L_roi_{v}"] == 0).mean()) for v in ROI_VARIANTS}
    distinct = {v: int(table[f"L_roi_{v}"].nunique()) for v in ROI_VARIANTS}
    detections = [len(s.detections) for s in scores]
    above = [int((s.detections["probability"] > tau).sum()) for s in scores]
    _record(
        f"pool_scoring_small_phantom_cpu_thresh_{detector.config.score_thresh:g}",
        {
            "model": str(model),
            "scans": len(scores),
            "tau": tau,
            "score_thresh": detector.config.score_thresh,
            "share_of_zero_L_roi": zeros,
            "distinct_L_roi_values": distinct,
            "distinct_l_scan_values": int(table["l_scan"].nunique()),
            "detections_per_scan_median": float(np.median(detections)),
            "detections_above_tau_per_scan": above,
            "embedding_width": int(embeddings.shape[1]),
            "seconds_per_scan_first": first_s / max(len(scores), 1),
            "seconds_per_scan_cached": cached_s / max(len(scores), 1),
        },
    )


@app.command()
def cache(seed: int = 0, repeats: int = 5) -> None:
    """Cache key and lookup times on a full-size scan: path/size/mtime against full SHA-256."""
    from activecad.data.preprocess import PreprocessCache, PreprocessConfig, scan_files
    from activecad.phantom import generate_cohort

    folder = WORK / f"full_{seed}"
    if not (folder / "annotations.csv").is_file():
        generate_cohort(folder, patients=1, seed=seed, preset="full")
    scan = sorted((folder / "ct").glob("*.mhd"))[0]
    config = PreprocessConfig()
    root = WORK / "cache_bench"
    timings: dict[str, object] = {
        "scan_bytes": sum(f.stat().st_size for f in scan_files(scan)),
    }
    # The phantom's manifest would give the SHA-256 for free; hide it to time the stat key.
    for name, store in (
        ("stat", PreprocessCache(root, hash="stat")),
        ("full", PreprocessCache(root, hash="full")),
    ):
        store._manifest_sha = lambda file: None  # type: ignore[method-assign]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            store.key(scan, config, None)
            times.append(time.perf_counter() - start)
        timings[f"key_{name}_median_s"] = statistics.median(times)
    store = PreprocessCache(root)
    store.clear()
    start = time.perf_counter()
    store.load(scan, config)
    timings["first_load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store.load(scan, config)
    timings["second_load_s"] = time.perf_counter() - start
    timings["entry_bytes"] = store.info().bytes
    store.clear()
    _record("preprocess_cache_full_scan", timings)


QUALITY_MODELS = ("ours", "monai-recipe")


@app.command()
def quality(
    model: str = typer.Option("ours", help="ours (activecad's cpu preset) or monai-recipe."),
    patients: int = 240,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.3,
    time_budget: float = typer.Option(3600.0, help="Training seconds (both models alike)."),
    epochs: int = 160,
    steps: int = 25,
    val_every: int = typer.Option(10, help="Validate every this many epochs (and the last)."),
    spacing: float = typer.Option(2.0, help="Isotropic resampling, mm."),
    patch: int = typer.Option(64, help="Cubic patch, voxels."),
    batch: int = typer.Option(4, help="Patches a step (even)."),
    norm: str = typer.Option("batch", help="ours: backbone_norm (batch, group, instance)."),
    anchors: str = typer.Option(
        "4,8", help="ours: cubic anchor edges at P2, voxels (level k scales them by 2**k)."
    ),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    cls_loss: str = typer.Option(
        "focal", help="ours: classification loss (focal, or sampled_bce as MONAI's recipe)."
    ),
    train_seed: int | None = typer.Option(
        None,
        help="ours: seed of the training's random choices (default --seed; the cohort and "
        "split stay those of --seed), to retrain a row and see how far one retraining moves it.",
    ),
    positive_fraction: float = typer.Option(
        0.5, help="ours: share of nodule-centred patches in a batch (the preset's 0.5)."
    ),
    ema: float = typer.Option(
        0.0, help="ours: validate and keep a moving average of the weights with this decay."
    ),
    lr_drop: str = typer.Option(
        "budget",
        help="ours: the step schedule's tenfold drop at the last tenth of the epochs or 90 % "
        "of the time budget, whichever comes first (budget), or at the last tenth of the "
        "epochs only (epochs: how rows were trained before 2026-12-03).",
    ),
    threads: int = 2,
    work: Path = typer.Option(WORK, help="Cohort, cache and model folders (resumable)."),
    resume: bool = typer.Option(False, help="Continue this model's interrupted run."),
) -> None:
    """Held-out quality: train on one patient split, pick checkpoints on a second, report a
    third once (CPM with its scan-bootstrap interval, found by size, validation CPM against
    training time). Each model is one row of ``quality_heldout`` in the results file
    (``quality_heldout_PRESET_phantom`` on a cohort of another phantom preset)."""
    if model not in QUALITY_MODELS:
        raise typer.BadParameter(f"model must be one of {QUALITY_MODELS}, got {model!r}")
    edges = tuple(float(a) for a in anchors.split(","))
    if lr_drop not in ("budget", "epochs"):
        raise typer.BadParameter(f"--lr-drop must be budget or epochs, got {lr_drop!r}")
    if cls_loss not in ("focal", "sampled_bce"):
        raise typer.BadParameter(f"--cls-loss must be focal or sampled_bce, got {cls_loss!r}")
    ours_only = (
        norm != "batch"
        or edges != (4.0, 8.0)
        or lr_drop != "budget"
        or cls_loss != "focal"
        or train_seed is not None
        or positive_fraction != 0.5
        or ema != 0.0
    )
    if model != "ours" and ours_only:
        raise typer.BadParameter(
            "--norm, --anchors, --cls-loss, --train-seed, --positive-fraction, --ema and "
            "--lr-drop apply to --model ours only"
        )
    # A lever measured against the default row is named by what it changes.
    levers = (
        [f"{norm} norm"] * (norm != "batch")
        + [f"{spacing:g} mm"] * (spacing != 2.0)
        + [f"anchors {'-'.join(f'{e:g}' for e in edges)} vox"] * (edges != (4.0, 8.0))
        + [f"{time_budget / 3600:g} h"] * (time_budget != 3600.0)
        + [f"positive fraction {positive_fraction:g}"] * (positive_fraction != 0.5)
        + [f"weight average {ema:g}"] * (ema != 0.0)
        + ["sampled bce"] * (cls_loss == "sampled_bce")
        + [f"train seed {train_seed}"] * (train_seed is not None and train_seed != seed)
        # Rows before 2026-12-03 dropped the rate by epoch only and keep their names.
        + ["rate drop in budget"] * (model == "ours" and lr_drop == "budget")
    )
    row_name = ", ".join([model, *levers])
    from activecad.data import PreprocessCache
    from activecad.data.folders import labelled, split_by_patient
    from activecad.models.detector3d import load_bundle, preset_config, read_luna_folder
    from activecad.models.detector3d.inference import detect_prepared
    from activecad.models.detector3d.train import froc_summary, train_detector

    torch.set_num_threads(threads)
    cohort = _quality_cohort(work, patients, seed, phantom)
    config = preset_config(
        "cpu",
        epochs=epochs,
        steps_per_epoch=steps,
        val_every=val_every,
        batch_size=batch,
        patch_size=(patch, patch, patch),
        preprocess={"spacing": (spacing, spacing, spacing)},
        backbone_norm=norm,
        base_anchor_shapes=tuple((e, e, e) for e in edges),
        cls_loss=cls_loss,
        positive_fraction=positive_fraction,
        ema_decay=ema,
        seed=seed if train_seed is None else train_seed,
    )
    folder = read_luna_folder(cohort)
    cache = PreprocessCache(work / "cache")
    patch_zyx = (patch, patch, patch)
    prepared = {
        scan.seriesuid: scan
        for scan in (
            cache.load(p, config.preprocess, min_shape_zyx=patch_zyx) for p in folder.scans
        )
    }
    split = split_by_patient(
        list(prepared),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        groups={uid: scan.patient_id for uid, scan in prepared.items()},
    )
    model_dir = _model_dir(work, row_name, patients, seed)
    if model == "ours":
        result = train_detector(
            cohort,
            model_dir,
            config,
            resume=resume,
            cache_dir=work / "cache",
            train_uids=split.train,
            val_uids=split.val,
            time_budget_s=time_budget,
            lr_drop_in_budget=lr_drop == "budget",
        )
        history, best_epoch = result.history, result.best_epoch
        detector = load_bundle(model_dir)

        def detect(uid: str) -> pd.DataFrame:
            return detect_prepared(detector, prepared[uid]).detections

        changes = (
            [f"cls_loss {cls_loss}"] * (cls_loss != "focal")
            + [f"positive_fraction {positive_fraction:g}"] * (positive_fraction != 0.5)
            + [f"ema_decay {ema:g}"] * (ema != 0.0)
            + [f"training seed {config.seed}"] * (config.seed != seed)
        )
        settings: dict[str, object] = {"config": "cpu preset", "changes": changes}
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from _monai_recipe import CHANGES, RecipeTask, detect_recipe, recipe_detector, recipe_plan
        from activecad.training import fit

        recipe = recipe_detector(config.preprocess.spacing)
        task = RecipeTask(
            recipe,
            [labelled(prepared[u], folder.annotations, folder.excluded) for u in split.train],
            [prepared[u] for u in split.val],
            folder.annotations,
            folder.excluded,
            patch_size=config.patch_size,
            batch_size=batch,
            augment=config.augment,
            seed=seed,
        )
        model_dir.mkdir(parents=True, exist_ok=True)
        plan = recipe_plan(epochs, steps, seed=seed, time_budget_s=time_budget)
        plan = replace(plan, val_every=val_every)
        fitted = fit(task, plan, checkpoint=model_dir / "checkpoint.pt", resume=resume)
        history, best_epoch = fitted.history, fitted.best_epoch

        def detect(uid: str) -> pd.DataFrame:
            return detect_recipe(fitted.model, prepared[uid])

        settings = {"config": "MONAI tutorials detection/ LUNA16 recipe", "changes": list(CHANGES)}
    start = time.perf_counter()
    detections = pd.concat([detect(u) for u in split.test], ignore_index=True)
    detect_s = (time.perf_counter() - start) / max(len(split.test), 1)
    detections.to_csv(model_dir / "test_detections.csv", index=False)
    kept = _kept_detections(model_dir, phantom)
    kept.parent.mkdir(exist_ok=True)
    _write_kept(detections, kept, 3)
    summary, (fps, sens, _) = froc_summary(
        detections, folder.annotations, folder.excluded, split.test, n_bootstrap=1000
    )
    elapsed = np.cumsum([float(r["seconds"]) for r in history])
    row = {
        **settings,
        "spacing_mm": spacing,
        "patch": patch,
        "batch": batch,
        "epochs_done": len(history),
        "steps_per_epoch": steps,
        "time_budget_s": time_budget,
        "train_s": float(elapsed[-1]) if len(elapsed) else 0.0,
        "best_epoch": best_epoch,
        "first_low_rate_epoch": _first_low_rate_epoch(history),
        "detect_s_per_scan": detect_s,
        "cpm": summary["cpm"],
        "ci_95": summary["ci"],
        "sensitivities": summary["sensitivities"],
        "counts": summary["counts"],
        "found_by_size": _found_by_size(detections, folder.annotations, split.test),
        "missed_10mm_or_more": _missed(detections, folder.annotations, split.test, 10.0),
        **_truth_fields(detections, cohort, split.test, seed),
        "froc": {"fps_per_scan": _thin(fps), "sensitivity": _thin(sens)},
        "validation_cpm_by_time": [
            {"train_s": float(t), "epoch": int(r["epoch"]), "cpm": float(r["cpm"])}
            for t, r in zip(elapsed, history, strict=True)
            if "cpm" in r
        ],
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    entry = results.get(_quality_key(phantom), {})
    nodules = folder.annotations.groupby("seriesuid").size()
    entry["split"] = {
        "patients": patients,
        "seed": seed,
        **{
            name: {"scans": len(uids), "nodules": int(nodules.reindex(uids).fillna(0).sum())}
            for name, uids in (("train", split.train), ("val", split.val), ("test", split.test))
        },
    }
    entry["phantom_revision"] = PHANTOM_REVISION
    entry["phantom_preset"] = phantom
    entry.setdefault("rows", {})[row_name] = {**row, "machine": _machine()}
    _record(_quality_key(phantom), entry)
    _plot_quality(entry, phantom)


def _first_low_rate_epoch(history: list[dict]) -> int | None:
    """The first epoch (1-based) trained below the highest learning rate before it (the
    schedule's first drop), or None when the rate never dropped."""
    peak = 0.0
    for record in history:
        if float(record["lr"]) < peak:
            return int(record["epoch"])
        peak = max(peak, float(record["lr"]))
    return None


def _quality_cohort(work: Path, patients: int, seed: int, phantom: str) -> Path:
    """The quality runs' cohort of phantom preset ``phantom`` in ``work``, generated on first
    use; one drawn by another phantom revision is refused (its rows would not be comparable
    with the others)."""
    from activecad.phantom import generate_cohort

    cohort = work / f"{phantom}_{patients}_{seed}"
    if not (cohort / "annotations.csv").is_file():
        generate_cohort(cohort, patients=patients, seed=seed, preset=phantom)
    revision = json.loads((cohort / "manifest.json").read_text()).get("revision", 1)
    if revision != PHANTOM_REVISION:
        raise typer.BadParameter(
            f"{cohort} was drawn by phantom revision {revision}, this code draws revision "
            f"{PHANTOM_REVISION}: give another --work"
        )
    return cohort


def _model_dir(work: Path, row_name: str, patients: int, seed: int) -> Path:
    """Where a quality row's model, split and test detections live."""
    return work / f"{row_name.replace(', ', '_').replace(' ', '_')}_{patients}_{seed}"


def _unit_numbers(text: str, option: str) -> list[float]:
    """The comma-separated numbers of ``option``, sorted, each between 0 and 1."""
    try:
        values = sorted(float(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise typer.BadParameter(f"{option}: numbers, as 0.05,0.2 ({error})") from error
    if not all(0 <= v <= 1 for v in values):
        raise typer.BadParameter(f"{option}: each between 0 and 1")
    return values


@app.command("quality-fpr")
def quality_fpr(
    row: str = typer.Option("ours, 1.4 mm", help="The quality row whose marks are re-scored."),
    patients: int = 240,
    seed: int = 0,
    steps: int = typer.Option(1500, help="FP-reduction training steps."),
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    marks: str = typer.Option(
        "100",
        help="Marks a scan handed to the second stage; several (comma-separated) are "
        "compared by two-stage CPM on the validation scans and the best is used on the test "
        "scans. The classifier learns from 100 a scan either way.",
    ),
    blobs: int = typer.Option(
        0,
        help="Also hand the classifier this many blob candidates a scan (Hessian dot filter, "
        "activecad.models.blobs) that no mark covers; 0: none.",
    ),
    blob_scores: str = typer.Option(
        "",
        help="With --blobs: detector scores a blob may be given (comma-separated), compared "
        "by two-stage CPM on the validation scans, the best used on the test scans; empty: "
        "the detector's score threshold.",
    ),
    blob_classifier: str = typer.Option(
        "marks+blobs",
        help="With --blobs: the classifier that scores marks and blobs, 'marks+blobs' (one "
        "that also learns the training scans' blobs), 'marks' (the row's own) or 'both' "
        "(the mean of the two).",
    ),
    fpr_weights: str = typer.Option(
        "0.5",
        help="The classifier's weight w in the final probability p_detector^(1-w) x "
        "p_fpr^w; several (comma-separated) are compared by two-stage CPM on the validation "
        "scans (after the blob score) and the best is used on the test scans.",
    ),
    ensemble: int = typer.Option(
        1,
        min=1,
        help="Classifiers trained alike from seeds SEED, SEED+1, ... whose mean probability "
        "scores the candidates (the row's own first); the row reports the paired test gain "
        "over the first alone.",
    ),
    fpr_set: list[str] = typer.Option(
        [],
        "--fpr-set",
        help="KEY=VALUE: a setting of the classifier's cpu preset to change (repeatable; a "
        "list as 8,16,32). The row is named by them and reports the validation CPM of the "
        "preset's classifier beside this one's, and the paired test gain over it.",
    ),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    threads: int = 2,
    work: Path = typer.Option(WORK, help="The quality run's folder (resumable)."),
) -> None:
    """Two stages on a quality row's split: its detector marks the training and validation
    scans, an FP-reduction classifier (cpu preset) learns from the training scans' marks
    and picks its weights on the validation scans, and the row's test marks are re-scored
    once (``sqrt(p_detector x p_fpr)``, or a classifier weight chosen on validation). Adds
    row ``ROW, FP reduction`` (``ROW, FP reduction, N marks`` when the test scans get N
    marks other than 100; ``ROW, FP reduction + B blobs`` with ``--blobs B``, ``ROW, FP
    reduction + B blobs (blob_scores=... classifier=marks)`` with a blob score chosen on
    validation or the row's own classifier; ``(... fpr_weights=...)`` with a weight chosen
    on validation; ``ROW, FP reduction (KEY=VALUE ...)`` with ``--fpr-set``)."""

    from activecad.active.loop import scan_uid
    from activecad.data import PreprocessCache
    from activecad.data.candidates import label_candidates
    from activecad.data.folders import froc_summary, paired_cpm_bootstrap, read_luna_folder
    from activecad.errors import InputError
    from activecad.metrics import roc_auc_score
    from activecad.models.blobs import BlobConfig, blob_candidates_for_files, merge_candidates
    from activecad.models.fpr import (
        apply_fpr,
        average_classifiers,
        preset_config,
        recombine,
        train_fpr_on_folder,
    )

    overrides = _settings(fpr_set)
    if overrides and blobs:
        raise typer.BadParameter("--fpr-set and --blobs are measured one at a time")
    if blob_classifier not in ("marks+blobs", "marks", "both"):
        raise typer.BadParameter(
            f"--blob-classifier: 'marks+blobs', 'marks' or 'both', not {blob_classifier!r}"
        )
    score_choices = _unit_numbers(blob_scores, "--blob-scores")
    weight_choices = _unit_numbers(fpr_weights, "--fpr-weights")
    if not weight_choices:
        raise typer.BadParameter("--fpr-weights: one or more, as 0.5,0.8")
    if overrides and weight_choices != [0.5]:
        raise typer.BadParameter("--fpr-set and --fpr-weights are measured one at a time")
    if ensemble > 1 and (overrides or (blobs and blob_classifier != "marks")):
        raise typer.BadParameter(
            "--ensemble applies to the row's own classifier: without --fpr-set, and with "
            "--blobs only as --blob-classifier marks"
        )
    if (score_choices or blob_classifier != "marks+blobs") and not blobs:
        raise typer.BadParameter("--blob-scores and --blob-classifier apply with --blobs N")
    # An unknown or invalid setting fails now, not after the detector's marks.
    try:
        preset_config("cpu", **overrides)
    except InputError as error:
        raise typer.BadParameter(f"--fpr-set: {error}") from error
    entry = json.loads(RESULTS.read_text()).get(_quality_key(phantom), {})
    if row not in entry.get("rows", {}):
        raise typer.BadParameter(f"no quality row {row!r}; rows: {sorted(entry.get('rows', {}))}")
    base = entry["rows"][row]
    model_dir = _model_dir(work, row, patients, seed)
    _restore_marks(model_dir, phantom)
    if not (model_dir / "test_detections.csv").is_file():
        raise typer.BadParameter(f"{model_dir} holds no test detections: run that row first")
    torch.set_num_threads(threads)
    cohort = _quality_cohort(work, patients, seed, phantom)
    folder = read_luna_folder(cohort)
    paths = {scan_uid(p): p for p in folder.scans}
    train, val, test = _row_split(model_dir, set(paths))
    cache = PreprocessCache(work / "cache")

    plain_dir = model_dir / "fpr"

    def marked(uids: list[str], most: int, name: str) -> pd.DataFrame:
        """The row's detector's marks (at most ``most`` a scan) on ``uids``, kept in
        ``model_dir / name``."""
        scans = [paths[u] for u in uids]
        desc = f"detector marks, {most} a scan"
        return _detector_marks(
            model_dir, scans, cache, model_dir / name, desc, detections_per_scan=most
        )

    def rescore(
        detections: pd.DataFrame, uids: list[str], name: str, classifier: Path = plain_dir
    ) -> pd.DataFrame:
        """``detections`` re-scored by the classifier in ``classifier``, kept there as
        ``name`` (and the seconds a scan it took beside it, ``.seconds``)."""
        path = classifier / name
        if not path.is_file():
            start = time.perf_counter()
            rescored = apply_fpr(
                detections, [paths[u] for u in uids], classifier, cache=cache, progress=True
            )
            seconds = (time.perf_counter() - start) / max(len(uids), 1)
            path.with_suffix(".seconds").write_text(f"{seconds}\n")
            rescored.to_csv(path, index=False)
        return pd.read_csv(path, dtype={"seriesuid": str})

    def blob_table(uids: list[str]) -> pd.DataFrame:
        """``blobs`` blob candidates a scan of ``uids`` (they depend on the scan only),
        kept beside the cohort with those of other scans (and the seconds a scan that the
        last ones took); scans already there are not filtered again."""
        path = work / f"{cohort.name}_blobs_{blobs}.csv"
        done = path.with_suffix(".scans")
        found = pd.read_csv(path, dtype={"seriesuid": str}) if path.is_file() else None
        # A table from before scans were listed beside it holds every cohort scan.
        if done.is_file():
            listed = set(done.read_text().split())
        else:
            listed = set(paths) if found is not None else set()
        missing = sorted(set(uids) - listed)
        if missing:
            start = time.perf_counter()
            new = blob_candidates_for_files(
                [paths[u] for u in missing], cache, BlobConfig(per_scan=blobs), progress=True
            )
            seconds = (time.perf_counter() - start) / len(missing)
            path.with_suffix(".seconds").write_text(f"{seconds}\n")
            found = new if found is None else pd.concat([found, new], ignore_index=True)
            found.to_csv(path, index=False)
            done.write_text("\n".join(sorted(listed | set(missing))) + "\n")
        assert found is not None
        return found[found["seriesuid"].isin(uids)]

    def classifier(
        directory: Path, extra: pd.DataFrame | None = None, settings: dict | None = None
    ) -> dict[str, object]:
        """The FP-reduction classifier in ``directory`` (the cpu preset with ``settings``),
        trained once on the training scans' marks (plus ``extra`` candidates) with the
        validation scans picking its weights; returns its training summary."""
        if not (directory / "weights.pt").is_file():
            # Scores already here (kept ones put back) are another classifier's.
            for scores in [*directory.glob("*_detections*.csv"), *directory.glob("*.seconds")]:
                scores.unlink()
            start = time.perf_counter()
            training = train_fpr_on_folder(
                cohort,
                directory,
                preset_config("cpu", **{"steps": steps, "seed": seed, **(settings or {})}),
                candidates=model_dir / "train_val_detections.csv",
                extra_candidates=extra,
                seriesuids=train,
                val_seriesuids=val,
                cache_dir=work / "cache",
                progress=True,
            )
            training["seconds"] = round(time.perf_counter() - start, 1)
            (directory / "training.json").write_text(json.dumps(training, indent=2) + "\n")
        return json.loads((directory / "training.json").read_text())

    _keep_marks(model_dir, phantom, marked(train + val, 100, "train_val_detections.csv"))
    # A changed classifier trains first, so it can run beside the preset's own training.
    training = classifier(plain_dir) if not overrides else {}
    # An ensemble's other members: the same classifier from the next seeds.
    ensemble_dirs = [plain_dir] + [model_dir / f"fpr_seed{seed + k}" for k in range(1, ensemble)]
    for k, directory in enumerate(ensemble_dirs[1:], start=1):
        classifier(directory, settings={"seed": seed + k})

    def rescore_all(detections: pd.DataFrame, uids: list[str], name: str) -> pd.DataFrame:
        """``detections`` re-scored by the row's classifier, or its ensemble's mean."""
        return average_classifiers(
            [rescore(detections, uids, name, directory) for directory in ensemble_dirs]
        )

    annotations = folder.annotations
    excluded = folder.excluded if folder.excluded is not None else annotations.iloc[:0]

    # How many marks the test scans get is chosen on the validation scans: their deepest
    # marks are re-scored once, and each choice keeps the detector's top ones.
    choices = sorted(int(m) for m in marks.split(","))
    validation_by_marks: dict[str, dict[str, float]] = {}
    if len(choices) > 1:
        deepest = marked(val, choices[-1], f"val_detections_{choices[-1]}.csv")
        ranked = rescore(deepest, val, f"val_detections_{choices[-1]}.csv").sort_values(
            "det_probability", ascending=False, kind="stable"
        )
        for most in choices:
            top = ranked.groupby("seriesuid", sort=False).head(most)
            found = froc_summary(top, annotations, excluded, val)[0]
            counts = found["counts"]
            validation_by_marks[str(most)] = {
                "cpm": found["cpm"],
                "nodules_reached": counts["detected"] / max(counts["nodules"], 1),
            }
        chosen = max(choices, key=lambda m: (validation_by_marks[str(m)]["cpm"], -m))
    else:
        chosen = choices[0]
    # The row's own test marks (100 a scan) are in test_detections.csv already.
    suffix = "" if chosen == 100 else f"_{chosen}"
    detections = marked(test, chosen, f"test_detections{suffix}.csv")
    new_name = f"{row}, FP reduction" + (f", {chosen} marks" if chosen != 100 else "")
    tags: list[str] = []  # the row's settings, in brackets after its name
    extra_fields: dict[str, object] = {}
    fpr_dir = plain_dir

    def validation_marks() -> pd.DataFrame:
        """The validation scans' marks, as many a scan as the test scans get."""
        if chosen == 100:
            return marked(train + val, 100, "train_val_detections.csv").query("seriesuid in @val")
        return marked(val, chosen, f"val_detections_{chosen}.csv")

    if overrides:
        # The validation scans compare this classifier with the preset's first.
        tag = " ".join(
            f"{k}={'-'.join(map(str, v)) if isinstance(v, list | tuple) else v}"
            for k, v in overrides.items()
        )
        fpr_dir = model_dir / f"fpr_{_slug(tag)}"
        training = classifier(fpr_dir, settings=overrides)
        preset_scores = [f"val_detections_{chosen}.csv", f"test_detections{suffix}.csv"]
        if not all((plain_dir / name).is_file() for name in preset_scores):
            classifier(plain_dir)
        validation = {
            name: rescore(validation_marks(), val, f"val_detections_{chosen}.csv", directory)
            for name, directory in (("preset", plain_dir), ("this", fpr_dir))
        }
        extra_fields = {
            "classifier_settings": overrides,
            "validation_cpm": {
                name: froc_summary(table, annotations, excluded, val)[0]["cpm"]
                for name, table in validation.items()
            },
        }
        marks_only = rescore(detections, test, f"test_detections{suffix}.csv")
        # The preset classifier's own test CPM: with a retrained preset classifier, how far
        # one retraining moves it (beside the row it was first measured in).
        extra_fields["preset_classifier_test_cpm"] = froc_summary(
            marks_only, annotations, excluded, test
        )[0]["cpm"]
        if (plain_dir / "training.json").is_file():
            extra_fields["preset_classifier_training"] = classifier(plain_dir)
        kept_files = _kept_marks(model_dir, phantom)
        if chosen == 100 and not all(kept_files[name].is_file() for name in PRESET_SCORES):
            for name, table in zip(PRESET_SCORES, (validation["preset"], marks_only), strict=True):
                _write_kept(table, kept_files[name], 4)
        tags.append(tag)
    # The test scans' candidates are re-scored once by each classifier, kept in its folder
    # under this name; with several, their mean is the row's.
    scorers = [fpr_dir] if overrides else ensemble_dirs
    members = [(directory, f"test_detections{suffix}.csv") for directory in scorers]
    blob_score = None
    if blobs:
        # The validation scans say what the blobs add to the same marks (and, with several
        # blob scores, which one), before the test scans are scored.
        learns_blobs = blob_classifier != "marks"
        found = blob_table(train + val + test if learns_blobs else val + test)
        blobs_dir = model_dir / f"fpr_blobs{blobs}"
        if learns_blobs:  # a classifier that also learns the blobs' mimics
            training = classifier(blobs_dir, found[found["seriesuid"].isin(train + val)])
        # Candidates are scored with the row's threshold as the blobs' detector score (the
        # most the detector said there); other blob scores only recombine the two stages.
        floor = _score_threshold(model_dir)
        val_marks = validation_marks()
        with_blobs = merge_candidates(
            val_marks, found[found["seriesuid"].isin(val)], blob_score=floor
        )
        # The same candidates before the classifier has seen any blob.
        of_marks = rescore_all(with_blobs, val, f"val_detections_{chosen}_blobs{blobs}.csv")
        of_blobs = (
            rescore(with_blobs, val, f"val_detections_{chosen}.csv", blobs_dir)
            if learns_blobs
            else of_marks
        )
        validation = {
            "marks": rescore_all(val_marks, val, f"val_detections_{chosen}.csv"),
            "marks_and_blobs": {"marks": of_marks, "marks+blobs": of_blobs}.get(
                blob_classifier, average_classifiers([of_marks, of_blobs])
            ),
            "marks_and_blobs_classifier_of_marks": of_marks,
        }
        validation_cpm = {
            name: froc_summary(table, annotations, excluded, val)[0]["cpm"]
            for name, table in validation.items()
        }
        by_blob_score = {
            f"{score:g}": froc_summary(
                recombine(validation["marks_and_blobs"], blob_score=score),
                annotations,
                excluded,
                val,
            )[0]["cpm"]
            for score in score_choices
        }
        if by_blob_score:
            # Ties go to the lower score: blobs above fewer of the detector's own marks.
            blob_score = max(score_choices, key=lambda v: (by_blob_score[f"{v:g}"], -v))
            validation_cpm["marks_and_blobs"] = by_blob_score[f"{blob_score:g}"]
        marks_only = rescore(detections, test, f"test_detections{suffix}.csv")
        detections = merge_candidates(
            detections, found[found["seriesuid"].isin(test)], blob_score=floor
        )
        # The marks' classifier keeps these beside its scores of the marks alone.
        members = {
            "marks": [(d, f"test_detections{suffix}_blobs{blobs}.csv") for d in ensemble_dirs],
            "marks+blobs": [(blobs_dir, f"test_detections{suffix}.csv")],
        }.get(blob_classifier, [(plain_dir, f"test_detections{suffix}_blobs{blobs}.csv"),
                                (blobs_dir, f"test_detections{suffix}.csv")])  # fmt: skip
        new_name = new_name.replace("FP reduction", f"FP reduction + {blobs} blobs")
        tags += [f"blob_scores={'-'.join(f'{v:g}' for v in score_choices)}"] * bool(
            score_choices
        ) + [f"classifier={blob_classifier}"] * (blob_classifier != "marks+blobs")
        extra_fields = {
            "blobs_per_scan": blobs,
            "blob_s_per_scan": float((work / f"{cohort.name}_blobs_{blobs}.seconds").read_text()),
            "blob_classifier": blob_classifier,
            "blob_score": floor if blob_score is None else blob_score,
            "validation_cpm": validation_cpm,
            **({"validation_cpm_by_blob_score": by_blob_score} if by_blob_score else {}),
        }
    # The validation candidates as the row scores its test ones (weight aside).
    if blobs:
        on_validation = recombine(validation["marks_and_blobs"], blob_score=blob_score)
    elif overrides:
        on_validation = validation["this"]
    else:
        on_validation = rescore_all(validation_marks(), val, f"val_detections_{chosen}.csv")
    # The classifier's weight is chosen last, on the validation candidates as scored above.
    fpr_weight = weight_choices[0]
    if len(weight_choices) > 1:
        by_weight = {
            f"{w:g}": froc_summary(
                recombine(on_validation, fpr_weight=w), annotations, excluded, val
            )[0]["cpm"]
            for w in weight_choices
        }
        # Ties go to the weight nearest the geometric mean's 0.5.
        fpr_weight = max(weight_choices, key=lambda w: (by_weight[f"{w:g}"], -abs(w - 0.5)))
        extra_fields["validation_cpm_by_fpr_weight"] = by_weight
        tags.append(f"fpr_weights={'-'.join(f'{v:g}' for v in weight_choices)}")
    # What validation says of the row as a whole, so that rows can be compared (and one
    # picked) without looking at their test CPM.
    extra_fields["two_stage_validation_cpm"] = froc_summary(
        recombine(on_validation, fpr_weight=fpr_weight), annotations, excluded, val
    )[0]["cpm"]
    if ensemble > 1:
        tags.append(f"ensemble={ensemble}")
    if tags:
        new_name += f" ({' '.join(tags)})"
    rescored = recombine(
        average_classifiers([rescore(detections, test, name, where) for where, name in members]),
        fpr_weight=fpr_weight,
        blob_score=blob_score,
    )
    if blobs and len(members) > 1:  # the same classifiers on the marks alone
        marks_only = rescored[rescored["source"] == "detector"].reset_index(drop=True)
    if ensemble > 1:
        # The first member alone, at the same weight and blob score.
        first = recombine(
            rescore(detections, test, members[0][1], members[0][0]),
            fpr_weight=fpr_weight,
            blob_score=blob_score,
        )
        extra_fields["ensemble"] = [d.name for d in ensemble_dirs]
        # On the validation scans too, the first member against the mean.
        val_candidates, val_name = (
            (with_blobs, f"val_detections_{chosen}_blobs{blobs}.csv")
            if blobs
            else (validation_marks(), f"val_detections_{chosen}.csv")
        )
        extra_fields["validation_cpm_first_and_ensemble"] = [
            froc_summary(
                recombine(table, fpr_weight=fpr_weight, blob_score=blob_score),
                annotations,
                excluded,
                val,
            )[0]["cpm"]
            for table in (rescore(val_candidates, val, val_name), on_validation)
        ]
        extra_fields["first_classifier_cpm"] = froc_summary(first, annotations, excluded, test)[0][
            "cpm"
        ]
        extra_fields["cpm_gain_over_first_classifier_paired_bootstrap"] = paired_cpm_bootstrap(
            first, rescored, annotations, excluded, test, bootstrap, seed=seed
        )
        extra_fields["ensemble_training"] = [classifier(d) for d in ensemble_dirs[1:]]
    if fpr_weight != 0.5:
        extra_fields["fpr_weight"] = fpr_weight
        if blobs:  # the blobs' gain at the row's weight
            marks_only = recombine(marks_only, fpr_weight=fpr_weight)
        extra_fields["cpm_gain_over_geometric_mean_paired_bootstrap"] = paired_cpm_bootstrap(
            recombine(rescored, fpr_weight=0.5), rescored, annotations, excluded, test, bootstrap,
            seed=seed,
        )  # fmt: skip
    rescore_s = sum(
        float((where / name).with_suffix(".seconds").read_text()) for where, name in members
    )
    if overrides:
        extra_fields["cpm_gain_over_preset_classifier_paired_bootstrap"] = paired_cpm_bootstrap(
            marks_only, rescored, annotations, excluded, test, bootstrap, seed=seed
        )
    if blobs:
        extra_fields["marks_only_cpm"] = froc_summary(marks_only, annotations, excluded, test)[0][
            "cpm"
        ]
        extra_fields["cpm_gain_over_marks_only_paired_bootstrap"] = paired_cpm_bootstrap(
            marks_only, rescored, annotations, excluded, test, bootstrap, seed=seed
        )
        extra_fields["found_by_size_with_blobs"] = _found_by_size(rescored, annotations, test)
        detections = detections[detections["source"] == "detector"]
    kept = _row_files(work, new_name, patients, seed, phantom)[1]
    _write_kept(rescored, kept, 4)
    summary, (fps, sens, _) = froc_summary(rescored, annotations, excluded, test, n_bootstrap=1000)
    classifier_alone, _ = froc_summary(
        rescored.assign(probability=rescored["fpr_probability"]), annotations, excluded, test
    )
    labels = label_candidates(rescored, annotations, excluded)
    known = labels["label"] >= 0
    # The detector's AUC over its own marks only: a blob's detector score is a constant.
    own_marks = labels["source"] == "detector" if "source" in labels.columns else known
    candidate_auc = {}
    for name, column in (
        ("detector", "det_probability"),
        ("fpr", "fpr_probability"),
        ("combined", "probability"),
    ):
        scored = known & labels[column].notna() & (own_marks if name == "detector" else True)
        candidate_auc[name] = float(roc_auc_score(labels["label"][scored], labels[column][scored]))
    base_settings = {k: base[k] for k in DETECTOR_SETTINGS}
    new_row = {
        "config": f"{base['config']} + FP reduction (cpu preset"
        + (f" with {overrides}" if overrides else "")
        + ")"
        + (f" + {blobs} blob candidates a scan" if blobs else ""),
        "changes": [
            f"re-scores row {row!r}'s test marks ({chosen} a scan): "
            + (
                "sqrt(p_detector x p_fpr)"
                if fpr_weight == 0.5
                else f"p_detector^{1 - fpr_weight:g} x p_fpr^{fpr_weight:g}, the weight chosen "
                f"on the validation scans from {weight_choices}"
            ),
            "FP reduction trained on the training scans' marks (100 a scan) plus every "
            "annotated nodule; weights picked by validation-scan AUC",
        ]
        + [
            f"an ensemble of {ensemble} such classifiers (seeds {seed} to {seed + ensemble - 1}); "
            "p_fpr is their mean"
        ]
        * (ensemble > 1)
        + [
            f"plus the {blobs} strongest blob candidates a scan (Hessian dot filter, 1.5-6 "
            "mm radii, 1.4 mm grid) more than 5 mm from every mark, p_detector = "
            + (
                f"{blob_score:g}, chosen on the validation scans from {score_choices}"
                if blob_score is not None
                else "the detector's score threshold"
            )
            + "; the classifier "
            + {
                "marks+blobs": "learns from the training scans' blob candidates too",
                "marks": "is the one trained on marks only",
                "both": "probability is the mean of the one trained on marks only and one "
                "that learns from the training scans' blob candidates too",
            }[blob_classifier]
        ]
        * bool(blobs),
        **base_settings,
        "fpr_training": training,
        "marks_per_scan": chosen,
        "validation_by_marks": validation_by_marks,
        "detect_s_per_scan": base["detect_s_per_scan"],
        "fpr_s_per_scan": rescore_s,
        "cpm": summary["cpm"],
        "ci_95": summary["ci"],
        "sensitivities": summary["sensitivities"],
        "counts": summary["counts"],
        "cpm_gain_paired_bootstrap": paired_cpm_bootstrap(
            detections, rescored, annotations, excluded, test, bootstrap, seed=seed
        ),
        **extra_fields,
        "candidate_auc": candidate_auc,
        # Not chosen on validation (the rule above was fixed before): a hint only.
        "classifier_score_alone": {k: classifier_alone[k] for k in ("cpm", "sensitivities")},
        "highest_false_positives": _false_positive_sources(
            labels, pd.read_csv(cohort / "candidates.csv", dtype={"seriesuid": str})
        ),
        **_truth_fields(rescored, cohort, test, seed),
        "found_by_size": base["found_by_size"],
        "froc": {"fps_per_scan": _thin(fps), "sensitivity": _thin(sens)},
        "validation_cpm_by_time": [],
    }
    _add_row(phantom, new_name, new_row)


def _false_positive_sources(
    labelled: pd.DataFrame, listed: pd.DataFrame, top: int = 30, within_mm: float = 6.0
) -> dict[str, object]:
    """What the ``top`` highest-scored non-nodule marks are: the ``source`` of the nearest
    structure the phantom lists in ``candidates.csv`` (a sample of vessel and pleura
    points, every rarer mimic) when one lies within ``within_mm``."""
    xyz = ["coordX", "coordY", "coordZ"]
    marks = labelled[labelled["label"] == 0].nlargest(top, "probability")
    sources = []
    for _, mark in marks.iterrows():
        near = listed[listed["seriesuid"] == mark["seriesuid"]]
        distance = np.linalg.norm(near[xyz].to_numpy(float) - mark[xyz].to_numpy(float), axis=1)
        close = len(distance) and distance.min() < within_mm
        sources.append(near["source"].iloc[distance.argmin()] if close else "none listed")
    return {
        "marks": len(marks),
        "within_mm": within_mm,
        "nearest_listed_source": pd.Series(sources).value_counts().to_dict(),
        "fpr_probability_min": float(marks["fpr_probability"].min()) if len(marks) else None,
    }


def _against_full_truth(
    detections: pd.DataFrame,
    cohort: Path,
    folder: LunaFolder,
    seriesuids: list[str],
    top_false_positives: int = 30,
) -> dict[str, object]:
    """The FROC with the phantom's nodules that no reader marked treated as LUNA16 treats
    excluded findings (a mark on one counts neither way).

    The phantom's readers miss a nodule as LIDC's do (each marks a "doubtful" one with p =
    0.19); revision 1 drew those as plainly as the rest, so a detector that found one was
    charged a false positive (revision 2 draws them faint). ``lesions_full.csv`` holds
    every true nodule; one is unmarked when no annotation or excluded finding lies within
    the larger of the two radii. Also says how many of the ``top_false_positives``
    highest-scored false positives hit one.
    """
    from activecad.data.candidates import label_candidates
    from activecad.data.folders import froc_summary

    xyz = ["coordX", "coordY", "coordZ"]
    excluded = folder.excluded if folder.excluded is not None else folder.annotations.iloc[:0]
    findings = pd.concat([folder.annotations, excluded], ignore_index=True)
    truth = pd.read_csv(cohort / "lesions_full.csv", dtype={"seriesuid": str})
    truth = truth[(truth["dataset"] == "lung_nodules") & truth["seriesuid"].isin(seriesuids)]
    unmarked = []
    for _, nodule in truth.iterrows():
        near = findings[findings["seriesuid"] == nodule["seriesuid"]]
        distance = np.linalg.norm(near[xyz].to_numpy(float) - nodule[xyz].to_numpy(float), axis=1)
        reach = np.maximum(near["diameter_mm"].to_numpy(float), nodule["long_axis_mm"]) / 2
        if not (distance < reach).any():
            size = {"diameter_mm": float(nodule["long_axis_mm"])}
            unmarked.append({"seriesuid": nodule["seriesuid"], **nodule[xyz].to_dict(), **size})
    unmarked_table = pd.DataFrame(unmarked, columns=[*excluded.columns])
    ignored = pd.concat([excluded, unmarked_table], ignore_index=True)
    summary, _ = froc_summary(detections, folder.annotations, ignored, seriesuids)
    labelled = label_candidates(
        detections[detections["seriesuid"].isin(seriesuids)], folder.annotations, excluded
    )
    top = labelled[labelled["label"] == 0].nlargest(top_false_positives, "probability")
    on_unmarked = label_candidates(top, unmarked_table)["label"] == 1
    sizes = [u["diameter_mm"] for u in unmarked]
    return {
        "true_nodules": len(truth),
        "unmarked_by_any_reader": len(unmarked),
        "unmarked_median_mm": float(np.median(sizes)) if sizes else None,
        "top_false_positives": len(top),
        "of_which_on_an_unmarked_nodule": int(on_unmarked.sum()),
        "cpm": summary["cpm"],
        "sensitivities": summary["sensitivities"],
    }


def _score_at_fps(
    detections: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame,
    seriesuids: list[str],
    fps_per_scan: float = 8.0,
) -> float:
    """The FROC's operating point at ``fps_per_scan`` false positives a scan: the score of
    the last false positive still counted (0 when the marks hold fewer false positives)."""
    from activecad.data.candidates import label_candidates

    labelled = label_candidates(
        detections[detections["seriesuid"].isin(seriesuids)], annotations, excluded
    )
    scores = np.sort(labelled.loc[labelled["label"] == 0, "probability"].to_numpy())[::-1]
    allowed = int(fps_per_scan * len(seriesuids))
    return float(scores[allowed - 1]) if len(scores) >= allowed else 0.0


def _phantom_truth(cohort: Path, seriesuids: list[str], seed: int) -> pd.DataFrame:
    """Every true nodule of ``seriesuids`` with the phantom's own attributes (``doubtful``
    among them), drawn again from ``(seed, patient index)``."""
    return _drawn_nodules(cohort, tuple(sorted(seriesuids)), seed).copy()


@functools.lru_cache(maxsize=4)
def _drawn_nodules(cohort: Path, seriesuids: tuple[str, ...], seed: int) -> pd.DataFrame:
    """``_phantom_truth``'s table, drawn once a run (drawing the patients again takes
    minutes, and ``full-truth`` asks for the same test scans once a row)."""
    from activecad.phantom import generate_patient

    patients = pd.read_csv(cohort / "patients.csv", dtype={"seriesuid": str})
    ids = patients.loc[patients["seriesuid"].isin(seriesuids), "patient"].unique()
    preset = json.loads((cohort / "manifest.json").read_text())["preset"]
    studies = [
        study.nodules
        for pid in ids
        for study in generate_patient(
            int(pid.rsplit("-", 1)[1]) - 1, seed=seed, preset=preset
        ).studies
    ]
    truth = pd.concat(studies, ignore_index=True)
    return truth[truth["seriesuid"].isin(seriesuids)]


def _nearest_truth(truth: pd.DataFrame, seriesuid: str, world_mm) -> pd.Series:
    """The true nodule of ``seriesuid`` nearest to ``world_mm`` (an annotation's centre)."""
    same = truth[truth["seriesuid"] == seriesuid]
    centres = same[["coordX", "coordY", "coordZ"]].to_numpy(float)
    return same.iloc[int(np.linalg.norm(centres - np.asarray(world_mm), axis=1).argmin())]


def _found_by_drawing(
    detections: pd.DataFrame,
    annotations: pd.DataFrame,
    seriesuids: list[str],
    threshold: float,
    truth: pd.DataFrame,
    group: Callable[[pd.Series, pd.Series], str],
    groups: Sequence[str],
) -> dict[str, dict[str, int]]:
    """Annotated nodules in ``groups`` by how the phantom drew them: how many, and how many
    a mark scored at least ``threshold`` hits. Each annotation is the nearest true nodule of
    its series (``_phantom_truth``); ``group(annotation, drawn)`` names its group."""
    xyz = ["coordX", "coordY", "coordZ"]
    out = {name: {"nodules": 0, "found": 0} for name in groups}
    for nodule, marks, distance in _nearest_marks(detections, annotations, seriesuids):
        drawn = _nearest_truth(truth, nodule["seriesuid"], nodule[xyz].to_numpy(float))
        name = group(nodule, drawn)
        hits = marks["probability"].to_numpy(np.float64)[distance < nodule["diameter_mm"] / 2]
        out[name]["nodules"] += 1
        out[name]["found"] += int(len(hits) > 0 and hits.max() >= threshold)
    return out


def _conspicuity(nodule: pd.Series, drawn: pd.Series) -> str:
    """Drawn faint (doubtful, yet marked by three readers or more) or drawn plain."""
    return "drawn faint" if bool(drawn["doubtful"]) else "drawn plain"


def _place_and_size(nodule: pd.Series, drawn: pd.Series) -> str:
    """Where the phantom put the nodule (parenchymal, juxta-pleural, juxta-vascular) and
    whether the readers measured it under 10 mm."""
    size = "3-10 mm" if nodule["diameter_mm"] < 10 else "10 mm or more"
    return f"{drawn['place']}, {size}"


PLACES_AND_SIZES = tuple(
    f"{place}, {size}"
    for place in ("parenchymal", "juxta-pleural", "juxta-vascular")
    for size in ("3-10 mm", "10 mm or more")
)


@dataclass
class _TrainedRow:
    """A detector row trained in the quality run's folder, with its cohort and split."""

    entry: dict
    model_dir: Path
    cohort: Path
    folder: LunaFolder
    excluded: pd.DataFrame
    paths: dict[str, Path]
    val: list[str]
    test: list[str]
    cache: PreprocessCache


def _trained_row(
    row: str, patients: int, seed: int, phantom: str, threads: int, work: Path
) -> _TrainedRow:
    """The results entry, model folder, cohort and split of detector row ``row``, whose
    detector must be in ``work`` (inference levers run it again)."""
    from activecad.active.loop import scan_uid
    from activecad.data import PreprocessCache
    from activecad.data.folders import read_luna_folder

    entry = json.loads(RESULTS.read_text()).get(_quality_key(phantom), {})
    if row not in entry.get("rows", {}):
        raise typer.BadParameter(f"no quality row {row!r}; rows: {sorted(entry.get('rows', {}))}")
    model_dir = _model_dir(work, row, patients, seed)
    if not (model_dir / "bundle.json").is_file():
        raise typer.BadParameter(f"{model_dir} holds no trained detector: train that row here")
    torch.set_num_threads(threads)
    cohort = _quality_cohort(work, patients, seed, phantom)
    folder = read_luna_folder(cohort)
    excluded = folder.excluded if folder.excluded is not None else folder.annotations.iloc[:0]
    paths = {scan_uid(p): p for p in folder.scans}
    _, val, test = _row_split(model_dir, set(paths))
    cache = PreprocessCache(work / "cache")
    return _TrainedRow(entry, model_dir, cohort, folder, excluded, paths, val, test, cache)


def _record_inference_row(
    trained: _TrainedRow,
    new_row: str,
    marks: pd.DataFrame,
    fields: dict[str, object],
    patients: int,
    seed: int,
    phantom: str,
    work: Path,
) -> Path:
    """Record row ``new_row``: the test ``marks`` of a trained row's detector run with other
    inference settings (``fields`` say which and what validation said), scored once; its
    folder gets the row's split and the marks, which are kept beside the results too.
    Returns that folder."""
    new_dir = _model_dir(work, new_row, patients, seed)
    new_dir.mkdir(exist_ok=True)
    shutil.copy(trained.model_dir / "split.json", new_dir / "split.json")
    marks.to_csv(new_dir / "test_detections.csv", index=False)
    kept = _kept_detections(new_dir, phantom)
    kept.parent.mkdir(exist_ok=True)
    _write_kept(marks, kept, 3)
    _add_row(phantom, new_row, {**fields, **_test_fields(trained, marks, seed)})
    return new_dir


def _test_fields(trained: _TrainedRow, marks: pd.DataFrame, seed: int) -> dict[str, object]:
    """What a row derived from a trained row reports of its test ``marks``, scored once:
    the FROC with its scan-bootstrap interval, found by size and the truth fields."""
    from activecad.data.folders import froc_summary

    annotations, test = trained.folder.annotations, trained.test
    summary, (fps, sens, _) = froc_summary(
        marks, annotations, trained.excluded, test, n_bootstrap=1000
    )
    return {
        "cpm": summary["cpm"],
        "ci_95": summary["ci"],
        "sensitivities": summary["sensitivities"],
        "counts": summary["counts"],
        "found_by_size": _found_by_size(marks, annotations, test),
        **_truth_fields(marks, trained.cohort, test, seed),
        "froc": {"fps_per_scan": _thin(fps), "sensitivity": _thin(sens)},
        "validation_cpm_by_time": [],
    }


def _add_row(phantom: str, name: str, row: dict[str, object]) -> None:
    """Record a finished quality row. The results are read again right before the write,
    after everything of the row is computed: other rows may have landed while this one
    ran (runs go for an hour beside each other, and drawing the truth takes minutes)."""
    entry = json.loads(RESULTS.read_text())[_quality_key(phantom)]
    before = entry["rows"].get(name, {})
    # A rerun that reproduces the row's test FROC keeps the paired gains measured on it.
    if "paired" in before and all(before.get(k) == row.get(k) for k in ("cpm", "froc")):
        row = {**row, "paired": before["paired"]}
    entry["rows"][name] = {**row, "machine": _machine()}
    _record(_quality_key(phantom), entry)
    _plot_quality(entry, phantom)


@app.command("quality-nms")
def quality_nms(
    row: str = typer.Option(..., help="The detector row (trained here) whose NMS is changed."),
    nms: str = typer.Option(
        "0.05,0.1,0.22,0.3,0.5",
        help="NMS IoU thresholds (comma-separated), compared by CPM on the validation scans; "
        "the best is used on the test scans.",
    ),
    patients: int = 240,
    seed: int = 0,
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    threads: int = 2,
    work: Path = typer.Option(WORK, help="The quality run's folder (its model)."),
) -> None:
    """An inference setting of a trained detector, no retraining: the row's detector marks
    the validation scans at each NMS IoU threshold, the one with the best validation CPM
    marks the test scans once, and row ``ROW, NMS chosen from ...`` reports its test CPM
    with the paired gain over the row's own threshold. It also says whether the score
    threshold ever decides which marks a test scan keeps (it cannot when every scan fills
    its detections_per_scan above it)."""
    from activecad.data.folders import froc_summary, paired_cpm_bootstrap
    from activecad.models.detector3d import load_bundle

    choices = _unit_numbers(nms, "--nms")
    if not choices:
        raise typer.BadParameter("--nms: one or more, as 0.1,0.22")
    trained = _trained_row(row, patients, seed, phantom, threads, work)
    model_dir, val, test = trained.model_dir, trained.val, trained.test
    annotations, excluded = trained.folder.annotations, trained.excluded
    detector = load_bundle(model_dir)
    own = detector.config.nms_thresh

    def marks(uids: list[str], threshold: float) -> pd.DataFrame:
        """The detector's marks on ``uids`` with NMS at ``threshold``, kept in the model
        folder (the row's own test marks at its own threshold are its test detections)."""
        name = "test" if uids == test else "val"
        path = model_dir / f"{name}_detections_nms_{threshold:g}.csv"
        if name == "test" and threshold == own:
            path = model_dir / "test_detections.csv"
        scans = [trained.paths[u] for u in uids]
        desc = f"{name} marks, NMS {threshold:g}"
        return _detector_marks(model_dir, scans, trained.cache, path, desc, nms_thresh=threshold)

    val_cpm = {
        f"{t:g}": froc_summary(marks(val, t), annotations, excluded, val)[0]["cpm"] for t in choices
    }
    # Ties keep the row's own threshold, then the lower one.
    best = max(choices, key=lambda t: (round(val_cpm[f"{t:g}"], 9), t == own, -t))
    base = marks(test, own)
    chosen = marks(test, best)
    per_scan = base.groupby("seriesuid").size().reindex(test).fillna(0)
    fields = {
        "config": f"row {row!r}'s detector, NMS IoU chosen on the validation scans",
        "changes": [f"NMS IoU {best:g} (the row's own: {own:g}), chosen from {choices}"],
        "nms_thresh": best,
        "own_nms_thresh": own,
        "validation_cpm_by_nms": val_cpm,
        "own_cpm": froc_summary(base, annotations, excluded, test)[0]["cpm"],
        "cpm_gain_over_own_nms_paired_bootstrap": paired_cpm_bootstrap(
            base, chosen, annotations, excluded, test, bootstrap, seed=seed
        ),
        "score_threshold": {
            "score_thresh": detector.config.score_thresh,
            "detections_per_scan": detector.config.detections_per_scan,
            "test_scans_with_fewer_marks": int(
                (per_scan < detector.config.detections_per_scan).sum()
            ),
            "lowest_test_mark_probability": float(base["probability"].min()),
        },
    }
    new_row = f"{row}, NMS chosen from {'-'.join(f'{t:g}' for t in choices)}"
    _record_inference_row(trained, new_row, chosen, fields, patients, seed, phantom, work)


@app.command("quality-tta")
def quality_tta(
    row: str = typer.Option(..., help="The detector row (trained here) run with mirroring."),
    patients: int = 240,
    seed: int = 0,
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    threads: int = 2,
    work: Path = typer.Option(WORK, help="The quality run's folder (its model)."),
) -> None:
    """Test-time mirroring of a trained detector (``detect --tta``), no retraining: the
    row's detector marks the validation and test scans in eight mirrored passes fused by
    weighted box clustering, and row ``ROW, mirrored TTA`` reports the validation CPM with
    and without it, its test CPM and the paired gain over the row's own marks (one setting,
    fixed beforehand: reported whatever validation says). Its folder holds the detector with
    mirroring on and, for a second stage (``quality-fpr --row "ROW, mirrored TTA"``), the
    row's own training-scan marks beside the mirrored validation marks, and the row's own
    classifier when ``quality-fpr --row ROW`` trained one: the second stage learns from the
    candidates it learnt from before and is tested on mirrored ones (mirroring the training
    scans too would cost 8 times their marking)."""
    from activecad.data.folders import froc_summary, paired_cpm_bootstrap
    from activecad.models.detector3d import load_bundle, save_bundle

    trained = _trained_row(row, patients, seed, phantom, threads, work)
    model_dir, val, test = trained.model_dir, trained.val, trained.test
    annotations, excluded = trained.folder.annotations, trained.excluded
    train_val = _detector_marks(
        model_dir,
        [trained.paths[u] for u in sorted(set(trained.paths) - set(test))],
        trained.cache,
        model_dir / "train_val_detections.csv",
        "detector marks, 100 a scan",
    )
    plain = {
        "val": train_val[train_val["seriesuid"].isin(val)],
        "test": pd.read_csv(model_dir / "test_detections.csv", dtype={"seriesuid": str}),
    }
    mirrored, seconds = {}, {}
    for name, uids in (("val", val), ("test", test)):
        mirrored[name], seconds[name] = _timed_marks(
            trained, model_dir, uids, f"{name}_detections_tta.csv", "mirrored", mirror_tta=True
        )
    fields = {
        **{k: v for k, v in trained.entry["rows"][row].items() if k in DETECTOR_SETTINGS},
        "config": f"{trained.entry['rows'][row]['config']} + mirrored TTA",
        "changes": [
            f"row {row!r}'s detector run on the scan and its 7 mirrorings (every subset of "
            "x, y, z), the passes' boxes fused by weighted box clustering (IoU > the NMS "
            "threshold; cluster probability = the passes' best scores summed over 8)"
        ],
        "detect_s_per_scan": seconds["test"],
        "validation_cpm": {
            name: froc_summary(table["val"], annotations, excluded, val)[0]["cpm"]
            for name, table in (("plain", plain), ("mirrored", mirrored))
        },
        "own_cpm": froc_summary(plain["test"], annotations, excluded, test)[0]["cpm"],
        "cpm_gain_over_plain_paired_bootstrap": paired_cpm_bootstrap(
            plain["test"], mirrored["test"], annotations, excluded, test, bootstrap, seed=seed
        ),
    }
    new_row = f"{row}, mirrored TTA"
    new_dir = _record_inference_row(
        trained, new_row, mirrored["test"], fields, patients, seed, phantom, work
    )
    detector = load_bundle(model_dir)
    detector.config = detector.config.model_copy(update={"mirror_tta": True})
    save_bundle(new_dir, detector)
    train = train_val[~train_val["seriesuid"].isin(val)]
    pd.concat([train, mirrored["val"]], ignore_index=True).to_csv(
        new_dir / "train_val_detections.csv", index=False
    )
    # The second stage learns from the same training candidates either way, so the row's
    # own classifier (``quality-fpr --row ROW`` before this) serves it: training another
    # would add a classifier retraining's noise to what mirroring changes.
    _share_classifier(model_dir, new_dir)


def _timed_marks(
    trained: _TrainedRow, detector_dir: Path, uids: list[str], name: str, how: str, **settings
) -> tuple[pd.DataFrame, float]:
    """The marks of the detector in ``detector_dir`` (with inference ``settings``) on
    ``uids``, kept as ``detector_dir / name``, and the seconds a scan they took; a rerun
    reads both back."""
    path = detector_dir / name
    timing = path.with_suffix(".seconds")
    start = time.perf_counter()
    scans = [trained.paths[u] for u in uids]
    desc = f"{name.split('_')[0]} marks, {how}"
    marks = _detector_marks(detector_dir, scans, trained.cache, path, desc, **settings)
    if not timing.is_file():
        timing.write_text(f"{(time.perf_counter() - start) / len(uids)}\n")
    return marks, float(timing.read_text())


def _share_classifier(model_dir: Path, new_dir: Path) -> None:
    """Copy the classifier that ``quality-fpr`` trained in ``model_dir`` (if it did) to
    ``new_dir``, a row derived from it whose second stage learns from the same training
    candidates."""
    own_classifier = model_dir / "fpr"
    if (own_classifier / "weights.pt").is_file() and not (new_dir / "fpr").exists():
        (new_dir / "fpr").mkdir()
        for name in CLASSIFIER_FILES:
            if (own_classifier / name).is_file():
                shutil.copy(own_classifier / name, new_dir / "fpr" / name)


@app.command("quality-hard-negatives")
def quality_hard_negatives(
    row: str = typer.Option(..., help="The detector row (trained here) fine-tuned further."),
    epochs: int = typer.Option(40, help="Epochs of the fine-tune (the row's steps each)."),
    lr: float = typer.Option(1e-4, help="Its peak rate (the row ended at a tenth of 1e-3)."),
    fraction: float = typer.Option(
        0.5,
        help="hard_negative_fraction: share of the background patches centred on the row's "
        "false positives; 0: the same fine-tune without them (the control).",
    ),
    per_scan: int = typer.Option(
        20, help="The highest-scored false positives a training scan handed over."
    ),
    val_every: int = typer.Option(20, help="Validate every this many epochs (and the last)."),
    patients: int = 240,
    seed: int = 0,
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    threads: int = 2,
    work: Path = typer.Option(WORK, help="The quality run's folder (its model)."),
) -> None:
    """Hard negatives (``train detector --init-from ROW --hard-negatives``): the row's
    detector is fine-tuned on its training scans, ``fraction`` of the background patches
    centred on its own highest-scored false positives there (its marks on those scans,
    those on nodules or excluded findings dropped), the best validation epoch kept. With
    ``--fraction 0`` the same fine-tune without them, so that what longer training alone
    gives is measured beside it. Row ``ROW, fine-tuned E epochs[, hard negatives F (N a
    scan)]`` reports the validation CPM, the test CPM and the paired gain over the row's
    own marks; its folder shares the row's classifier and training-scan marks for a second
    stage (``quality-fpr --row NEW``), as ``quality-tta`` does."""
    from activecad.data.folders import false_positive_places, froc_summary, paired_cpm_bootstrap
    from activecad.models.detector3d import resolve_config, train_detector

    if not 0 <= fraction <= 1:
        raise typer.BadParameter("--fraction: between 0 and 1")
    trained = _trained_row(row, patients, seed, phantom, threads, work)
    model_dir, val, test = trained.model_dir, trained.val, trained.test
    annotations, excluded = trained.folder.annotations, trained.excluded
    train = json.loads((model_dir / "split.json").read_text())["train"]
    train_val = _detector_marks(
        model_dir,
        [trained.paths[u] for u in sorted(set(trained.paths) - set(test))],
        trained.cache,
        model_dir / "train_val_detections.csv",
        "detector marks, 100 a scan",
    )
    on_train = train_val[train_val["seriesuid"].isin(train)]
    hard = false_positive_places(on_train, annotations, excluded)
    hard = hard.sort_values("probability", ascending=False).groupby("seriesuid").head(per_scan)
    new_row = f"{row}, fine-tuned {epochs} epochs" + (
        f", hard negatives {fraction:g} ({per_scan} a scan)" if fraction else ""
    )
    new_dir = _model_dir(work, new_row, patients, seed)
    overrides = {"epochs": epochs, "lr": lr, "val_every": val_every}
    config = resolve_config(
        None, {**overrides, "hard_negative_fraction": fraction}, init_from=model_dir
    )
    fitted = train_detector(
        trained.cohort,
        new_dir,
        config,
        resume=(new_dir / "checkpoint.pt").is_file(),
        init_from=None if (new_dir / "checkpoint.pt").is_file() else model_dir,
        cache_dir=work / "cache",
        train_uids=train,
        val_uids=val,
        hard_negatives=hard if fraction else None,
    )
    marks, seconds = {}, {}
    for name, uids in (("val", val), ("test", test)):
        marks[name], seconds[name] = _timed_marks(
            trained, new_dir, uids, f"{name}_detections_plain.csv", "fine-tuned"
        )
    own_test = pd.read_csv(model_dir / "test_detections.csv", dtype={"seriesuid": str})
    own_val = train_val[train_val["seriesuid"].isin(val)]
    base = trained.entry["rows"][row]
    elapsed = float(sum(float(r["seconds"]) for r in fitted.history))
    fields = {
        **{k: v for k, v in base.items() if k in DETECTOR_SETTINGS},
        "config": f"{base['config']} + fine-tuned",
        "changes": [
            f"row {row!r}'s detector fine-tuned {len(fitted.history)} more epochs of "
            f"{config.steps_per_epoch} steps at rate {lr:g} (step drop at the last tenth), "
            f"best validation epoch kept"
        ]
        + (
            [
                f"hard_negative_fraction {fraction:g}: of the background patches, that share "
                f"centred on the row's own false positives on its training scans (the "
                f"{per_scan} highest-scored a scan)"
            ]
            if fraction
            else []
        ),
        "fine_tune": {
            "epochs_done": len(fitted.history),
            "best_epoch": fitted.best_epoch,
            "train_s": elapsed,
            "hard_negatives": len(hard) if fraction else 0,
            "training_scans": len(train),
        },
        "detect_s_per_scan": seconds["test"],
        "validation_cpm": {
            name: froc_summary(table, annotations, excluded, val)[0]["cpm"]
            for name, table in (("row", own_val), ("fine-tuned", marks["val"]))
        },
        "cpm_gain_over_row_paired_bootstrap": paired_cpm_bootstrap(
            own_test, marks["test"], annotations, excluded, test, bootstrap, seed=seed
        ),
    }
    _record_inference_row(trained, new_row, marks["test"], fields, patients, seed, phantom, work)
    # The second stage learns from the row's training candidates, as for a mirrored row.
    pd.concat([train_val[~train_val["seriesuid"].isin(val)], marks["val"]]).to_csv(
        new_dir / "train_val_detections.csv", index=False
    )
    _share_classifier(model_dir, new_dir)


@app.command("quality-ensemble")
def quality_ensemble(
    rows: list[str] = typer.Option(
        ...,
        "--row",
        help="Detector rows (trained here) whose marks are fused; two or more. The first "
        "lends its training-scan marks and classifier to a second stage.",
    ),
    patients: int = 240,
    seed: int = 0,
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    work: Path = typer.Option(WORK, help="The quality run's folder (its models)."),
) -> None:
    """An ensemble of detectors (``detect --model A --model B``), no retraining: the rows'
    validation and test marks (100 a scan, as each row made them, mirrored or not) are
    fused by weighted box clustering in world mm, and row ``FIRST, ensemble of N`` reports
    each member's validation CPM beside the ensemble's, its test CPM and the paired gain
    over every member (one setting, fixed beforehand: reported whatever validation says).
    Its folder holds the first row's training-scan marks beside the fused validation marks
    and the first row's classifier, so ``quality-fpr --row "FIRST, ensemble of N"``
    measures the ensemble under the classifier the first row already has."""
    from activecad.data.folders import froc_summary, paired_cpm_bootstrap
    from activecad.models.detector3d import load_bundle
    from activecad.models.detector3d.inference import fuse_models

    if len(rows) < 2:
        raise typer.BadParameter("an ensemble needs two --row or more")
    members = [_trained_row(row, patients, seed, phantom, 1, work) for row in rows]
    first = members[0]
    if any((m.val, m.test) != (first.val, first.test) for m in members):
        raise typer.BadParameter("the rows were trained on different splits")
    annotations, excluded, val, test = (
        first.folder.annotations,
        first.excluded,
        first.val,
        first.test,
    )
    for member in members:
        _restore_marks(member.model_dir, phantom)
    # Each member's training and validation marks are read once: the validation ones are
    # fused, the first member's training ones go to the ensemble's second stage.
    train_val = [_row_marks(m.model_dir, "train_val_detections.csv") for m in members]
    marks = {
        "val": [table[table["seriesuid"].isin(val)] for table in train_val],
        "test": [_row_marks(m.model_dir, "test_detections.csv") for m in members],
    }
    config = load_bundle(first.model_dir).config
    fused = {
        name: fuse_models(tables, config.nms_thresh, config.detections_per_scan)
        for name, tables in marks.items()
    }
    fields = {
        **{k: v for k, v in first.entry["rows"][rows[0]].items() if k in DETECTOR_SETTINGS},
        "config": f"ensemble of {len(rows)} detectors",
        "changes": [
            f"the marks of rows {', '.join(map(repr, rows))} fused by weighted box clustering "
            "in world mm (cubes of each mark's diameter; IoU > the first detector's NMS "
            f"threshold {config.nms_thresh}; probability = the members' best scores summed "
            f"over {len(rows)})"
        ],
        "members": rows,
        "detect_s_per_scan": sum(
            float(first.entry["rows"][row].get("detect_s_per_scan", float("nan"))) for row in rows
        ),
        "validation_cpm": {
            **{
                row: froc_summary(table, annotations, excluded, val)[0]["cpm"]
                for row, table in zip(rows, marks["val"], strict=True)
            },
            "ensemble": froc_summary(fused["val"], annotations, excluded, val)[0]["cpm"],
        },
        "cpm_gain_over_member_paired_bootstrap": {
            row: paired_cpm_bootstrap(
                table, fused["test"], annotations, excluded, test, bootstrap, seed=seed
            )
            for row, table in zip(rows, marks["test"], strict=True)
        },
    }
    new_row = f"{rows[0]}, ensemble of {len(rows)}"
    new_dir = _record_inference_row(
        first, new_row, fused["test"], fields, patients, seed, phantom, work
    )
    pd.concat(
        [train_val[0][~train_val[0]["seriesuid"].isin(val)], fused["val"]], ignore_index=True
    ).to_csv(new_dir / "train_val_detections.csv", index=False)
    _share_classifier(first.model_dir, new_dir)


def _row_marks(model_dir: Path, name: str) -> pd.DataFrame:
    """A trained row's marks table ``name`` (``test_detections.csv``, or
    ``train_val_detections.csv``, which ``quality-fpr`` and ``quality-tta`` write)."""
    path = model_dir / name
    if not path.is_file():
        raise typer.BadParameter(
            f"{path} is missing: run quality-tta or quality-fpr on that row first"
        )
    return pd.read_csv(path, dtype={"seriesuid": str})


@app.command("full-truth")
def full_truth(
    patients: int = 240,
    seed: int = 0,
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    work: Path = typer.Option(WORK, help="The quality run's folder (its cohort)."),
) -> None:
    """Add the truth fields (``_truth_fields``: misses at 8 false positives a scan, found
    nodules drawn faint and plain, the FROC with the nodules no reader marked ignored) to
    every quality row whose test detections are kept in ``results/detector_quality/``."""
    from activecad.active.loop import scan_uid
    from activecad.data.folders import read_luna_folder

    entry = json.loads(RESULTS.read_text())[_quality_key(phantom)]
    cohort = _quality_cohort(work, patients, seed, phantom)
    all_uids = {scan_uid(p) for p in read_luna_folder(cohort).scans}
    for name, row in entry["rows"].items():
        model_dir, kept = _row_files(work, name, patients, seed, phantom)
        if not kept.is_file():
            typer.echo(f"{name}: no kept test detections, skipped", err=True)
            continue
        detections = pd.read_csv(kept, dtype={"seriesuid": str})
        _, _, test = _row_split(model_dir, all_uids)
        row |= _truth_fields(detections, cohort, test, seed)
    _record(_quality_key(phantom), entry)
    _plot_quality(entry, phantom)


@app.command("quality-conspicuity")
def quality_conspicuity(
    row: str = typer.Option(..., help="A detector row whose marks quality-fpr re-scored."),
    patients: int = 240,
    seed: int = 0,
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples of the CPM gain."),
    product: bool = typer.Option(
        True, help="Also the product of core HU and logit p_fpr (--no-product: linear terms)."
    ),
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    work: Path = typer.Option(WORK, help="The quality run's folder (its marks and scans)."),
) -> None:
    """A probe of how conspicuous a mark is: each of the row's two-stage marks gets its core
    density (the mean HU of the 3 x 3 x 3 voxels at its centre, read from the cached scan),
    a logistic regression of nodule / not nodule on (logit p_detector, logit p_fpr, core HU
    / 1000 and its product with logit p_fpr) is fitted on the validation scans' marks, and
    the test marks are scored by it once. Row ``ROW, FP reduction + conspicuity`` reports
    its coefficients, the validation CPM (in the sample it was fitted on), the test CPM and
    the paired gain over the row's own two stages. Readers miss what is faint, so the
    reference standard is partly a matter of density, which the classifier may not have
    learnt."""
    from sklearn.linear_model import LogisticRegression

    from activecad.data.candidates import XYZ, label_candidates
    from activecad.data.folders import froc_summary, paired_cpm_bootstrap
    from activecad.models.detector3d import load_bundle

    trained = _trained_row(row, patients, seed, phantom, 1, work)
    model_dir, val, test = trained.model_dir, trained.val, trained.test
    annotations, excluded = trained.folder.annotations, trained.excluded
    tables = {}
    for name, file in (("val", "fpr/val_detections_100.csv"), ("test", "fpr/test_detections.csv")):
        if not (model_dir / file).is_file():
            raise typer.BadParameter(f"{model_dir / file} is missing: run quality-fpr first")
        tables[name] = pd.read_csv(model_dir / file, dtype={"seriesuid": str})
    config = load_bundle(model_dir).config
    preprocess, window = config.preprocess, config.preprocess.hu_max - config.preprocess.hu_min

    def core_hu(marks: pd.DataFrame) -> np.ndarray:
        values = np.zeros(len(marks))
        for uid, rows in marks.groupby("seriesuid"):
            scan = trained.cache.load(
                trained.paths[uid], preprocess, min_shape_zyx=tuple(config.patch_size)
            )
            index = np.round(scan.world_to_index(rows[XYZ].to_numpy(float))).astype(int)
            for k, (z, y, x) in zip(rows.index, index, strict=True):
                z, y, x = (max(int(c), 1) for c in (z, y, x))
                values[marks.index.get_loc(k)] = scan.array[z - 1 : z + 2, y - 1 : y + 2,
                                                            x - 1 : x + 2].mean()  # fmt: skip
        return values * window + preprocess.hu_min

    def features(marks: pd.DataFrame) -> np.ndarray:
        p = marks[["det_probability", "fpr_probability"]].to_numpy(float).clip(1e-6, 1 - 1e-6)
        logits, density = np.log(p / (1 - p)), core_hu(marks) / 1000.0
        # Density tells a faint nodule from a plain one, not a vessel from a nodule: it
        # enters alone and through the classifier's logit.
        return np.column_stack([logits, density, logits[:, 1] * density][: 3 if product else 2])

    x_val = features(tables["val"])
    labels = label_candidates(tables["val"], annotations, excluded)["label"].to_numpy()
    fitted = LogisticRegression(C=1.0).fit(x_val[labels >= 0], labels[labels >= 0])
    scored = {
        name: table.assign(probability=fitted.predict_proba(x)[:, 1])
        for name, table, x in (
            ("val", tables["val"], x_val),
            ("test", tables["test"], features(tables["test"])),
        )
    }
    new_row = f"{row}, FP reduction + conspicuity" + ("" if product else " (linear)")
    kept = _row_files(work, new_row, patients, seed, phantom)[1]
    _write_kept(scored["test"], kept, 3)
    base = trained.entry["rows"][f"{row}, FP reduction"]
    _add_row(
        phantom,
        new_row,
        {
            **{k: v for k, v in base.items() if k in DETECTOR_SETTINGS},
            "config": f"{base['config']} + conspicuity",
            "changes": [
                "final probability: a logistic regression on (logit p_detector, logit p_fpr, "
                f"core HU / 1000{', logit p_fpr x core HU / 1000' if product else ''}) fitted "
                "on the validation scans' marks (ignored ones left out)"
            ],
            "coefficients": {
                "logit_p_detector": float(fitted.coef_[0][0]),
                "logit_p_fpr": float(fitted.coef_[0][1]),
                "core_hu_per_1000": float(fitted.coef_[0][2]),
                **(
                    {"logit_p_fpr_x_core_hu_per_1000": float(fitted.coef_[0][3])} if product else {}
                ),
                "intercept": float(fitted.intercept_[0]),
            },
            "validation_cpm_in_sample": froc_summary(scored["val"], annotations, excluded, val)[0][
                "cpm"
            ],
            "two_stage_validation_cpm": base.get("two_stage_validation_cpm"),
            "cpm_gain_paired_bootstrap": paired_cpm_bootstrap(
                tables["test"], scored["test"], annotations, excluded, test, bootstrap, seed=seed
            ),
            **_test_fields(trained, scored["test"], seed),
        },
    )


@app.command()
def ceiling(
    row: str = typer.Option(..., help="A quality row trained here (its split: the test scans)."),
    patients: int = 240,
    seed: int = 0,
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    work: Path = typer.Option(WORK, help="The quality run's folder (its cohort)."),
) -> None:
    """What a perfect nodule finder would score on the test scans: every nodule the phantom
    drew marked once at its centre, and nothing else, ranked three ways (in random order,
    largest first, and plain before faint then largest first). The nodules that no reader
    marked count as false positives and those of one or two readers as neither, as for any
    row; so this is the CPM that finding everything allows, and how much of it depends on
    ranking the faint nodules (drawn like those readers miss) below the plain ones. Written
    to the entry's ``oracle_ceilings``."""
    from activecad.active.loop import scan_uid
    from activecad.data.candidates import XYZ
    from activecad.data.folders import froc_summary, read_luna_folder

    cohort = _quality_cohort(work, patients, seed, phantom)
    folder = read_luna_folder(cohort)
    model_dir, _ = _row_files(work, row, patients, seed, phantom)
    _, _, test = _row_split(model_dir, {scan_uid(p) for p in folder.scans})
    truth = _phantom_truth(cohort, test, seed).reset_index(drop=True)
    diameter = truth["diameter_mm"].to_numpy(float)
    plain = ~truth["doubtful"].to_numpy(bool)
    orders = {
        "random order": np.random.default_rng(seed).random(len(truth)),
        "largest first": diameter / diameter.max(),
        "plain before faint, then largest first": plain + diameter / (2 * diameter.max()),
    }
    ceilings: dict[str, object] = {
        "test_scans": len(test),
        "drawn_nodules": len(truth),
        "drawn_faint": int((~plain).sum()),
    }
    for name, score in orders.items():
        marks = truth[["seriesuid", *XYZ]].assign(probability=score)
        summary, _ = froc_summary(marks, folder.annotations, folder.excluded, test)
        ceilings[name] = {k: summary[k] for k in ("cpm", "sensitivities", "counts")}
    entry = json.loads(RESULTS.read_text())[_quality_key(phantom)]
    entry["oracle_ceilings"] = ceilings
    _record(_quality_key(phantom), entry)


@app.command()
def paired(
    row: str = typer.Option(..., help="The quality row whose CPM gain is measured."),
    against: str = typer.Option("ours", help="The row it is compared with."),
    bootstrap: int = typer.Option(300, help="Paired scan-bootstrap resamples."),
    patients: int = 240,
    seed: int = 0,
    phantom: str = typer.Option("small", help="Phantom preset of the cohort (small, medium)."),
    work: Path = typer.Option(WORK, help="The quality run's folder (its cohort)."),
) -> None:
    """CPM(ROW) - CPM(AGAINST) on the same test scans, resampled together (paired 95 %
    interval), from the two rows' kept test detections; written to ROW's ``paired``."""
    from activecad.active.loop import scan_uid
    from activecad.data.folders import paired_cpm_bootstrap, read_luna_folder

    entry = json.loads(RESULTS.read_text())[_quality_key(phantom)]
    cohort = _quality_cohort(work, patients, seed, phantom)
    folder = read_luna_folder(cohort)
    excluded = folder.excluded if folder.excluded is not None else folder.annotations.iloc[:0]
    marks, tests = {}, {}
    for name in (row, against):
        if name not in entry["rows"]:
            raise typer.BadParameter(f"no quality row {name!r}; rows: {sorted(entry['rows'])}")
        model_dir, kept = _row_files(work, name, patients, seed, phantom)
        marks[name] = pd.read_csv(kept, dtype={"seriesuid": str})
        tests[name] = _row_split(model_dir, {scan_uid(p) for p in folder.scans})[2]
    if tests[row] != tests[against]:
        raise typer.BadParameter(f"{row!r} and {against!r} were tested on different scans")
    gain = paired_cpm_bootstrap(
        marks[against], marks[row], folder.annotations, excluded, tests[row], bootstrap, seed=seed
    )
    # Read again before writing: a row another run recorded meanwhile must not be lost.
    entry = json.loads(RESULTS.read_text())[_quality_key(phantom)]
    entry["rows"][row].setdefault("paired", {})[against] = gain
    _record(_quality_key(phantom), entry)


def _detector_marks(
    model_dir: Path,
    scans: list[Path],
    cache: PreprocessCache,
    path: Path,
    desc: str,
    **settings: object,
) -> pd.DataFrame:
    """The marks of the detector in ``model_dir`` on ``scans`` (read through ``cache``)
    with its inference ``settings`` changed (e.g. ``nms_thresh``), kept in ``path``: read
    from there when a run before wrote them, else detected under a progress bar titled
    ``desc`` and written there."""
    if path.is_file():
        return pd.read_csv(path, dtype={"seriesuid": str})
    from tqdm import tqdm

    from activecad.models.detector3d import load_bundle
    from activecad.models.detector3d.inference import detect_prepared

    detector = load_bundle(model_dir)
    detector.config = detector.config.model_copy(update=settings)
    patch_zyx = tuple(detector.config.patch_size)
    found = []
    for scan_path in tqdm(scans, desc=desc, unit="scan"):
        scan = cache.load(scan_path, detector.config.preprocess, min_shape_zyx=patch_zyx)
        found.append(detect_prepared(detector, scan).detections)
    pd.concat(found, ignore_index=True).to_csv(path, index=False)
    return pd.read_csv(path, dtype={"seriesuid": str})


def _truth_fields(
    detections: pd.DataFrame, cohort: Path, test: list[str], seed: int
) -> dict[str, object]:
    """What a quality row says about its test marks beyond the FROC: the nodules of 10 mm
    or more missed at 8 false positives a scan, found nodules drawn faint and plain and by
    where they were drawn at that operating point, and the FROC with the nodules no reader
    marked ignored."""
    from activecad.data.folders import read_luna_folder

    folder = read_luna_folder(cohort)
    excluded = folder.excluded if folder.excluded is not None else folder.annotations.iloc[:0]
    threshold = _score_at_fps(detections, folder.annotations, excluded, test)
    truth = _phantom_truth(cohort, test, seed)
    missed = _missed(detections, folder.annotations, test, 10.0, threshold)
    for miss in missed:  # what the phantom drew there, to explain the miss
        drawn = _nearest_truth(truth, miss["seriesuid"], miss["world_mm"])
        miss["drawn"] = {
            **{key: str(drawn[key]) for key in ("kind", "shape", "place")},
            "hu": round(float(drawn["hu"])),
            "faint": bool(drawn["doubtful"]),
        }
    return {
        "operating_score_at_8_fps": threshold,
        "missed_10mm_or_more_at_8_fps": missed,
        "found_at_8_fps_by_conspicuity": _found_by_drawing(
            detections,
            folder.annotations,
            test,
            threshold,
            truth,
            _conspicuity,
            ("drawn faint", "drawn plain"),
        ),
        "found_at_8_fps_by_place": _found_by_drawing(
            detections,
            folder.annotations,
            test,
            threshold,
            truth,
            _place_and_size,
            PLACES_AND_SIZES,
        ),
        "unmarked_nodules_ignored": _against_full_truth(detections, cohort, folder, test),
    }


def _row_split(model_dir: Path, all_uids: set[str]) -> tuple[list[str], list[str], list[str]]:
    """A quality row's train / validation / test series: its ``split.json`` holds the first
    two, the test scans are the cohort's others."""
    split = json.loads((model_dir / "split.json").read_text())
    train, val = split["train"], split["val"]
    return train, val, sorted(all_uids - set(train) - set(val))


def _quality_key(phantom: str) -> str:
    """The results entry of the quality rows on a phantom preset's cohort: ``QUALITY`` for the
    small preset, ``QUALITY_PRESET_phantom`` for another (another cohort, another split)."""
    return QUALITY if phantom == "small" else f"{QUALITY}_{phantom}_phantom"


def _write_kept(table: pd.DataFrame, path: Path, decimals: int) -> None:
    """Write a kept table: positions and sizes rounded to ``decimals``, probabilities whole.
    A detector trained with BCE scores many marks above 0.9995; rounded, they would tie,
    and the FROC would rank tied marks in file order."""
    rounded = {
        column: decimals
        for column in table.select_dtypes("number").columns
        if "probability" not in column
    }
    # A gzip member stamped with no time: a rerun that finds the same marks writes the same
    # bytes, so the repository does not grow by a copy.
    compression = {"method": "gzip", "mtime": 0} if path.suffix == ".gz" else None
    table.round(rounded).to_csv(path, index=False, compression=compression)


def _kept_detections(model_dir: Path, phantom: str) -> Path:
    """Where a detector row's test detections are kept beside the results, so a miss can be
    looked into after the machine is gone."""
    folder = RESULTS.parent / "detector_quality"
    if phantom != "small":
        folder = folder / f"{phantom}_phantom"
    return folder / f"{model_dir.name}_test_detections.csv.gz"


# A trained FP-reduction classifier's folder, without the scores it gave.
CLASSIFIER_FILES = ("bundle.json", "config.yaml", "history.json", "split.json", "training.json",
                    "weights.pt")  # fmt: skip
# What a two-stage row repeats of its detector row: how that detector was trained.
DETECTOR_SETTINGS = ("spacing_mm", "patch", "batch", "epochs_done", "steps_per_epoch",
                     "time_budget_s", "train_s", "best_epoch")  # fmt: skip
# The preset classifier's re-scoring of a row's validation and test marks (100 a scan).
PRESET_SCORES = ("fpr/val_detections_100.csv", "fpr/test_detections.csv")


def _kept_marks(model_dir: Path, phantom: str) -> dict[str, Path]:
    """Where a detector row's split and marks are kept beside the results (model folder
    file: kept file). A retrained detector does not give the same marks, so the two-stage
    rows of later sessions read these to stay on one set of candidates. The preset
    classifier's re-scoring of the validation and test marks (``PRESET_SCORES``, written
    together by one classifier) is kept too, so a changed classifier is compared with it
    without training it again."""
    test = _kept_detections(model_dir, phantom)
    return {
        "test_detections.csv": test,
        "train_val_detections.csv": test.with_name(f"{model_dir.name}_train_val_detections.csv.gz"),
        "split.json": test.with_name(f"{model_dir.name}_split.json"),
        **{
            name: test.with_name(f"{model_dir.name}_fpr_preset_{name[4:-4]}.csv.gz")
            for name in PRESET_SCORES
        },
    }


def _keep_marks(model_dir: Path, phantom: str, train_val: pd.DataFrame) -> None:
    """Keep a detector row's split and training/validation marks beside the results."""
    kept = _kept_marks(model_dir, phantom)
    if not kept["train_val_detections.csv"].is_file():
        _write_kept(train_val, kept["train_val_detections.csv"], 4)
    if not kept["split.json"].is_file():
        kept["split.json"].write_text((model_dir / "split.json").read_text())


def _score_threshold(model_dir: Path) -> float:
    """A quality row's detector score threshold: its model folder's, or where only its kept
    marks came back (a new machine) the cpu preset's, which every quality row keeps."""
    from activecad.models.detector3d import load_bundle, preset_config

    if (model_dir / "bundle.json").is_file():
        return load_bundle(model_dir).config.score_thresh
    return preset_config("cpu").score_thresh


def _restore_marks(model_dir: Path, phantom: str) -> None:
    """Put a detector row's kept split and marks back into a model folder that lacks them
    (a new machine: the cohort regenerates byte for byte, the detector does not)."""
    kept_files = _kept_marks(model_dir, phantom)
    # The preset classifier's scores come back as a pair or not at all: one classifier's;
    # and not beside a preset classifier trained here, whose own scores they are not.
    trained_here = (model_dir / "fpr" / "weights.pt").is_file()
    if trained_here or not all(kept_files[name].is_file() for name in PRESET_SCORES):
        kept_files = {k: v for k, v in kept_files.items() if k not in PRESET_SCORES}
    for name, kept in kept_files.items():
        if kept.is_file() and not (model_dir / name).is_file():
            (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
            if kept.suffix == ".json":
                (model_dir / name).write_text(kept.read_text())
            else:
                pd.read_csv(kept, dtype={"seriesuid": str}).to_csv(model_dir / name, index=False)


def _row_files(work: Path, name: str, patients: int, seed: int, phantom: str) -> tuple[Path, Path]:
    """A quality row's model folder and kept test detections. A two-stage row is named
    ``DETECTOR ROW, FP reduction[ + B blobs][, N marks][ (SETTINGS)]`` and lives in its
    detector row's folder."""
    detector_row, _, second_stage = name.partition(", FP reduction")
    model_dir = _model_dir(work, detector_row, patients, seed)
    kept = _kept_detections(model_dir, phantom)
    if name == detector_row:
        return model_dir, kept
    second_stage, _, settings = second_stage.partition(" (")
    if settings:
        tag = _slug(f"{second_stage} {settings.rstrip(')')}")
        return model_dir, kept.with_name(f"{model_dir.name}_fpr_{tag}_test_detections.csv.gz")
    blobs, _, marks = second_stage.partition(", ")
    parts = [marks.removesuffix(" marks")] if marks else []
    parts += [blobs.strip(" +").replace(" ", "_")] if blobs.strip() else []
    tag = "".join(f"{part}_" for part in parts)
    return model_dir, kept.with_name(f"{model_dir.name}_fpr_{tag}test_detections.csv.gz")


def _settings(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings as settings (a value with a comma is a list, ``1.0,`` one of
    one item; numbers are numbers, anything else a string)."""

    def value(text: str) -> object:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    settings: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        items = [value(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        settings[key.strip()] = items if "," in text else items[0]
    return settings


def _slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters and digits
    become one underscore."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _thin(values: np.ndarray, most: int = 400) -> list[float]:
    """At most ``most`` evenly spaced points of a curve, its last one kept (for the JSON)."""
    values = np.asarray(values, dtype=float)
    keep = np.unique(np.r_[np.linspace(0, len(values) - 1, min(most, len(values))).astype(int)])
    return [float(v) for v in values[keep]] if len(values) else []


def _plot_quality(entry: dict, phantom: str) -> None:
    """FROC on the test split and validation CPM against training time, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The legends go below the axes: a results entry gathers many rows. With many rows the
    # FROC panel colours the first (the baseline) and the five best by CPM; the others are
    # grey lines, each listed in the README's table.
    rows = entry["rows"]
    best = sorted(rows, key=lambda name: rows[name]["cpm"])[-5:]
    shown = set(rows) if len(rows) <= 8 else {next(iter(rows)), *best}
    coloured = [n for n in rows if n in shown or rows[n]["validation_cpm_by_time"]]
    # Matplotlib's default cycle repeats after ten colours; more rows take tab20's twenty.
    palette = plt.get_cmap("tab10" if len(coloured) <= 10 else "tab20").colors
    colour = {name: palette[k % len(palette)] for k, name in enumerate(coloured)}
    fig, (froc, curve) = plt.subplots(1, 2, figsize=(11, 4.5))
    others = [name for name in rows if name not in shown]
    for name, row in rows.items():
        fps = np.maximum(np.asarray(row["froc"]["fps_per_scan"]), 1e-3)
        if name in shown:
            style = {"color": colour[name], "label": f"{name}: CPM {row['cpm']:.3f}"}
        else:
            label = f"{len(others)} other rows (see the table)" if name == others[0] else None
            style = {"color": "0.8", "linewidth": 0.8, "label": label, "zorder": 0}
        froc.semilogx(fps, row["froc"]["sensitivity"], drawstyle="steps-post", **style)
        points = row["validation_cpm_by_time"]  # none for a re-scoring row
        if points:
            curve.plot([p["train_s"] / 60 for p in points], [p["cpm"] for p in points], "o-",
                       color=colour[name], label=name)  # fmt: skip
    test = entry["split"]["test"]
    froc.set(xlim=(0.1, 16), ylim=(0, 1), xlabel="false positives per scan",
             ylabel="sensitivity",
             title=f"test: {test['scans']} scans, {test['nodules']} nodules")  # fmt: skip
    curve.set(ylim=(0, 1), xlabel="training time, min", ylabel="validation CPM",
              title=f"validation: {entry['split']['val']['scans']} scans")  # fmt: skip
    for ax in (froc, curve):
        ax.grid(True, which="both", alpha=0.3)
    # The FROC legend (long row names) runs below both panels; the training curves' sits
    # inside their own panel, where it cannot overlap it.
    froc.legend(loc="upper left", bbox_to_anchor=(0, -0.14), fontsize="small")
    if curve.lines:
        curve.legend(loc="lower right", fontsize="x-small")
    suffix = "" if phantom == "small" else f"_{phantom}_phantom"
    fig.savefig(ROOT / "docs" / f"detector_quality{suffix}.png", dpi=120, bbox_inches="tight")


def _nearest_marks(
    detections: pd.DataFrame, annotations: pd.DataFrame, seriesuids: list[str]
) -> Iterator[tuple[pd.Series, pd.DataFrame, np.ndarray]]:
    """Each nodule of ``seriesuids`` with its scan's marks and their distances to it (mm)."""
    xyz = ["coordX", "coordY", "coordZ"]
    for _, nodule in annotations[annotations["seriesuid"].isin(seriesuids)].iterrows():
        marks = detections[detections["seriesuid"] == nodule["seriesuid"]]
        centre = nodule[xyz].to_numpy(np.float64)
        yield nodule, marks, np.linalg.norm(marks[xyz].to_numpy(np.float64) - centre, axis=1)


def _found_by_size(
    detections: pd.DataFrame, annotations: pd.DataFrame, seriesuids: list[str]
) -> dict[str, dict[str, int]]:
    """Per diameter bin: nodules, those hit by any of the scan's marks (LUNA16's rule:
    closer than the radius), and near misses (a mark within 1.5 radii but none within one).
    """
    bins = {"3-6 mm": (3, 6), "6-10 mm": (6, 10), "10-20 mm": (10, 20), ">=20 mm": (20, 1e9)}
    out = {name: {"nodules": 0, "found": 0, "near_miss": 0} for name in bins}
    for nodule, _, distance in _nearest_marks(detections, annotations, seriesuids):
        nearest = distance.min(initial=np.inf)
        radius = nodule["diameter_mm"] / 2
        for name, (low, high) in bins.items():
            if low <= nodule["diameter_mm"] < high:
                out[name]["nodules"] += 1
                out[name]["found"] += int(nearest < radius)
                out[name]["near_miss"] += int(radius <= nearest < 1.5 * radius)
    return out


def _missed(
    detections: pd.DataFrame,
    annotations: pd.DataFrame,
    seriesuids: list[str],
    min_mm: float,
    threshold: float = 0.0,
) -> list[dict[str, object]]:
    """Every test nodule of at least ``min_mm`` that no mark scored at least ``threshold``
    hits (0: no mark at all), with its best hit's score if one fell below the threshold and
    its nearest mark (distance in radii, score, and that score's rank among the scan's
    marks)."""
    out = []
    large = annotations[annotations["diameter_mm"] >= min_mm]
    for nodule, marks, distance in _nearest_marks(detections, large, seriesuids):
        radius = nodule["diameter_mm"] / 2
        hits = marks["probability"].to_numpy(np.float64)[distance < radius]
        if len(hits) and hits.max() >= threshold:
            continue
        miss: dict[str, object] = {
            "seriesuid": nodule["seriesuid"],
            "diameter_mm": round(float(nodule["diameter_mm"]), 1),
            "world_mm": [round(float(nodule[c]), 1) for c in ("coordX", "coordY", "coordZ")],
            "marks_in_scan": len(marks),
        }
        if len(hits):
            miss["best_hit_score"] = round(float(hits.max()), 3)
        if len(distance):
            nearest = int(distance.argmin())
            score = float(marks["probability"].iloc[nearest])
            miss |= {
                "nearest_mark_radii": round(float(distance[nearest] / radius), 2),
                "nearest_mark_score": round(score, 3),
                "nearest_mark_rank": int((marks["probability"] > score).sum()) + 1,
            }
        out.append(miss)
    return out


@app.command()
def export(threads: int = 2) -> None:
    """Try TorchScript (script and trace) and ONNX export of the cpu-preset network."""
    from activecad.models.detector3d import NoduleDetector, preset_config

    torch.set_num_threads(threads)
    network = NoduleDetector(preset_config("cpu")).network.eval()
    image = torch.rand(1, 1, 96, 96, 96)
    outcome: dict[str, object] = {}

    class Flat(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(x)
            return tuple(t for key in sorted(out) for t in out[key])

    flat = Flat(network).eval()
    for name, attempt in (
        ("torchscript_script", lambda: torch.jit.script(network)),
        ("torch_export", lambda: torch.export.export(flat, (image,))),
        ("torchscript_trace", lambda: torch.jit.trace(flat, image)),
        (
            "onnx",
            lambda: torch.onnx.export(flat, (image,), str(WORK / "detector.onnx"), dynamo=False),
        ),
    ):
        try:
            WORK.mkdir(parents=True, exist_ok=True)
            exported = attempt()
            if name in ("torchscript_trace", "torch_export"):
                run = exported.module() if name == "torch_export" else exported
                reference = flat(image)
                again = run(image)
                same = all(
                    torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, again, strict=True)
                )
                outcome[name] = {"works": True, "matches_eager": same}
            else:
                outcome[name] = {"works": True}
        except Exception as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            first = lines[0][:200] if lines else ""
            outcome[name] = {"works": False, "error": f"{type(exc).__name__}: {first}"}
    _record("export_cpu", outcome)


if __name__ == "__main__":
    app()
