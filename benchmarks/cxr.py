"""Kim et al.'s Table 2 on the radiograph phantom, and the real label statistics behind it.

Subcommands::

    python benchmarks/cxr.py labels      # NIH vs Google vs VinDr figures (torchxrayvision's
                                         # tables) beside the phantom's -> results/cxr_labels.json
    python benchmarks/cxr.py table2 --work DIR
                                         # four models x three seeds, internal + two external
                                         # sets; resumable by seed (results/cxr_state_main/)
                                         # -> results/cxr_table2_main.json, ROC + heat-map PNGs
    python benchmarks/cxr.py report      # the table from the seeds finished so far
    python benchmarks/cxr.py rescore --work DIR  # score the finished seeds' models again
    python benchmarks/cxr.py learnability --work DIR
                                         # AUC against the nodules' conspicuity (another
                                         # phantom seed) -> results/cxr_learnability.json

Models (as the paper): 1 = Network 1 on the noisy set (report-mined labels); 2 = Network 1
on the clean set; 3 = Network 1 pretrained on noisy, fine-tuned on clean; 4 = Network 2
(pixel labels) pretrained on noisy (Network 1), fine-tuned on clean with masks. The
internal test set is a held-out third of the clean set (other patients), the same for every
seed. ``results/cxr_table2_small.json`` is an earlier, smaller run of a previous version of
this command (one seed, 128 px, 80 steps, the radiograph phantom before its 10 mm
visibility floor).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def labels() -> None:
    """Real report-mined label accuracy, reader agreement and box sizes vs the phantom's."""
    import torchxrayvision

    from activecad.io import cxr_tables as ct
    from activecad.phantom import cxr_cohort as cc

    d = Path(torchxrayvision.__file__).parent / "data"
    nih = ct.read_nih_data_entry(d / "Data_Entry_2017_v2020.csv.gz")
    google = ct.read_google2019_labels(d / "google2019_nih-chest-xray-labels.csv.gz")
    vindr = ct.read_vindr_boxes(d / "vinbigdata-train.csv.gz")
    bbox = ct.read_nih_bbox(d / "BBox_List_2017.csv.gz")
    nod = bbox[bbox["label"] == "Nodule"]
    side = np.sqrt((nod["x2"] - nod["x1"]) * (nod["y2"] - nod["y1"]))
    result = {
        "command": "python benchmarks/cxr.py labels",
        "nih_report_vs_google_expert": ct.report_label_accuracy(nih, google),
        "nih_nodule_or_mass_share": float(((nih["nodule"] + nih["mass"]) > 0).mean()),
        "vindr_nodule_mass_reader_agreement": ct.reader_box_agreement(vindr),
        "nih_nodule_box_side_px_1024": {
            "n": len(side),
            "median": float(np.median(side)),
            "p10": float(np.percentile(side, 10)),
            "p90": float(np.percentile(side, 90)),
        },
        "phantom_report_labels": {
            "sensitivity": cc.REPORT_SENSITIVITY,
            "specificity": cc.REPORT_SPECIFICITY,
        },
        "phantom_visible_nodules": _phantom_visible_nodules(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cxr_labels.json").write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps(result, indent=1))


def _phantom_visible_nodules(patients: int = 80, seed: int = 0) -> dict[str, object]:
    """Sizes of the nodules that show on the internal site's radiographs of ``patients``
    nodule patients: what ``MEAN_LARGEST_VISIBLE_MM`` and the comparison with NIH rest on."""
    from activecad.phantom import cxr_cohort as cc
    from activecad.phantom.radiograph import MIN_VISIBLE_MM

    diameters, largest, shares, drawn = [], [], [], 0
    for index in range(patients):
        cxr = cc.generate_cxr(index, seed, cc.SITES["internal"], with_nodules=True)
        drawn += len(cxr.visible)
        visible = 2 * cxr.radius_px[cxr.visible] * cxr.pixel_mm
        diameters += list(visible)
        largest += [float(visible.max())] if len(visible) else []
        side = cxr.image.shape[0]
        shares += [np.sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) / side for x1, y1, x2, y2 in cxr.boxes]
    d, share = np.array(diameters), np.array(shares)
    return {
        "command": f"generate_cxr(0..{patients - 1}, seed={seed}, internal, with_nodules=True)",
        "nodules_drawn": drawn,
        "visible": len(d),
        "patients_with_a_visible_nodule": len(largest),
        # what a report's sensitivity scales with (the image's largest visible nodule)
        "largest_per_image_mean_mm": float(np.mean(largest)),
        "diameter_mm": {"mean": float(d.mean()), "median": float(np.median(d)),
                        "p10": float(np.percentile(d, 10)), "p90": float(np.percentile(d, 90))},
        "box_side_share_of_image": {"median": float(np.median(share)),
                                    "p10": float(np.percentile(share, 10)),
                                    "p90": float(np.percentile(share, 90))},
        "min_visible_mm": MIN_VISIBLE_MM,
    }  # fmt: skip


def _predict(net, cfg, folder: Path):
    from activecad.models.cxr.data import load_cxr_items, read_cxr_image
    from activecad.models.cxr.inference import heatmap_boxes, predict_arrays
    from activecad.models.cxr.train import read_cxr_mask

    items = load_cxr_items(folder)
    arrays = [read_cxr_image(it.image) for it in items]
    lungs = [read_cxr_mask(it.lungs) for it in items]  # type: ignore[arg-type]
    t0 = time.perf_counter()
    probs, maps = predict_arrays(net, cfg, arrays, lungs)
    seconds = time.perf_counter() - t0
    masks = [read_cxr_mask(it.mask) for it in items]  # type: ignore[arg-type]
    rows = []
    for it, hm in zip(items, maps, strict=True):
        for x, y, w, h, p in heatmap_boxes(hm):
            rows.append(
                {
                    "image_id": it.image_id,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "box_probability": p,
                }
            )
    boxes = pd.DataFrame(rows, columns=["image_id", "x", "y", "width", "height", "box_probability"])
    y = np.array([it.label for it in items])
    return items, y, probs, maps, masks, boxes, len(items) / seconds


MODELS = ("1_noisy_image", "2_clean_image", "3_noisy_to_clean_image", "4_noisy_to_clean_pixel")
TEST_SETS = ("internal", "external_a", "external_b")


def _sets(
    work: Path, data_seed: int, n_noisy: int, n_clean: int, n_external: int, nodule_gain: float
):
    """The phantom sets (written once) and a fixed internal test split: a third of the clean
    set's patients, the same for every training seed so that seeds differ in training only."""
    from activecad.models.cxr.data import load_cxr_items
    from activecad.phantom.cxr_cohort import write_cxr_sets

    data = (work / "data").resolve()  # the internal split's symlinks point here
    asked = {
        "data_seed": data_seed,
        "n_noisy": n_noisy,
        "n_clean": n_clean,
        "n_external": n_external,
        # absent at gain 1, as the sets written before the option existed record it
        **({"nodule_gain": nodule_gain} if nodule_gain != 1.0 else {}),
    }
    done = data / "done.json"
    if not done.is_file():
        t0 = time.perf_counter()
        info = write_cxr_sets(
            data, data_seed, n_noisy, n_clean, n_external, nodule_gain=nodule_gain
        )
        info["seconds"] = round(time.perf_counter() - t0, 1)  # type: ignore[assignment]
        done.write_text(json.dumps({"asked": asked, **info}))
    if json.loads(done.read_text()).get("asked") != asked:
        raise typer.BadParameter(f"{data} holds sets of other sizes or seed; use another --work")
    clean = load_cxr_items(data / "clean")
    order = np.random.default_rng([data_seed, 2]).permutation(len(clean))
    test_ids = sorted(clean[i].image_id for i in order[: len(clean) // 3])
    internal = work.resolve() / "internal"
    if not (internal / "labels.csv").is_file():  # written last: the split is complete
        shutil.rmtree(internal, ignore_errors=True)
        for sub in ("images", "masks", "lungs"):
            (internal / sub).mkdir(parents=True, exist_ok=True)
            for i in test_ids:
                (internal / sub / f"{i}.png").symlink_to(data / "clean" / sub / f"{i}.png")
        labels = pd.read_csv(data / "clean" / "labels.csv")
        labels[labels["image_id"].isin(test_ids)].to_csv(internal / "labels.csv", index=False)
    train_ids = [it.image_id for it in clean if it.image_id not in set(test_ids)]
    folders = {
        "internal": internal,
        "external_a": data / "external_a",
        "external_b": data / "external_b",
    }
    for folder in folders.values():  # fail now, not after the first model's training
        load_cxr_items(folder, need_masks=True)
    return data, train_ids, folders


@app.command()
def table2(
    work: Path = typer.Option(..., help="Working folder (phantom sets, models); resumable."),
    seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="Training seeds, in order."),
    n_noisy: int = typer.Option(400, help="Noisy set, images per class."),
    n_clean: int = typer.Option(150, help="Clean set, images per class (1/3 held out)."),
    n_external: int = typer.Option(100, help="Each external set, images per class."),
    steps: int = typer.Option(1500, help="Training steps per model."),
    size: int = typer.Option(128, help="Network input side (cpu preset: 256)."),
    data_seed: int = typer.Option(0, help="Phantom seed."),
    name: str = typer.Option("main", help="Result name: results/cxr_table2_NAME.json."),
    nodule_gain: float = typer.Option(
        1.0, help="Nodules' attenuation above the tissue they replace x this (see learnability)."
    ),
) -> None:
    """Train the four models per seed and score them on the internal and both external sets.

    A finished seed's predictions and figures are kept in ``results/cxr_state_NAME/`` (to
    commit): a run on a new machine regenerates the phantom and goes on with the next seed.
    """
    import torch

    from activecad.models.cxr.data import load_cxr_items
    from activecad.models.cxr.train import preset_cxr_config, train_cxr

    torch.set_num_threads(1)  # shared cores
    settings = {
        "n_noisy": n_noisy, "n_clean": n_clean, "n_external": n_external, "steps": steps,
        "size": size, "data_seed": data_seed,
        "preset": f"cpu ({size} px, DenseNet growth 12, blocks 4-8-12-8, batch 8, Adam 1e-3)",
        **({"nodule_gain": nodule_gain} if nodule_gain != 1.0 else {}),
    }  # fmt: skip
    state = RESULTS / f"cxr_state_{name}"
    state.mkdir(parents=True, exist_ok=True)
    kept = state / "settings.json"
    if kept.is_file() and json.loads(kept.read_text()) != settings:
        raise typer.BadParameter(f"{kept} holds other settings; choose another --name")
    kept.write_text(json.dumps(settings, indent=1))
    data, train_ids, folders = _sets(work, data_seed, n_noisy, n_clean, n_external, nodule_gain)
    # What was written: images per class, patients used, the noisy labels' realised Se / Sp.
    (state / "data.json").write_text((data / "done.json").read_text())
    truth_boxes = _truth_boxes(data)
    noisy = load_cxr_items(data / "noisy", "label_noisy")
    clean_train = load_cxr_items(data / "clean", ids=train_ids)
    for seed in seeds:
        out = state / f"seed{seed}.json"
        if out.is_file():
            continue
        models = work / "models" / f"seed{seed}"
        cfg1 = preset_cxr_config("cpu", network=1, steps=steps, seed=seed, size=size)
        cfg2 = preset_cxr_config("cpu", network=2, steps=steps, seed=seed, size=size)
        plan = {
            "1_noisy_image": (noisy, cfg1, None),
            "2_clean_image": (clean_train, cfg1, None),
            "3_noisy_to_clean_image": (clean_train, cfg1, models / "1_noisy_image"),
            "4_noisy_to_clean_pixel": (clean_train, cfg2, models / "1_noisy_image"),
        }
        result: dict[str, dict] = {"training": {}, "sets": {}}
        for model, (items, cfg, init) in plan.items():
            finished = _finished_model(models / model, steps)
            if finished is not None:  # trained before a stop; its seed was not scored yet
                net, cfg, history = finished
                seconds = history[-1]["seconds"]
            else:
                t = time.perf_counter()
                net, history = train_cxr(items, cfg, models / model, init_from=init)
                seconds = round(time.perf_counter() - t, 1)
            result["training"][model] = {
                "seconds": seconds,
                "images": len(items),
                "last": history[-1],
                **({"reused": True} if finished is not None else {}),
            }
            typer.echo(f"seed {seed} {model}: trained in {seconds} s", err=True)
            examples = name if seed == seeds[0] else None
            _score_model(net, cfg, folders, truth_boxes, result["sets"], model, examples)
        _write_seed(out, result)
        report(name)


def _finished_model(folder: Path, steps: int):
    """``(net, cfg, history)`` of a model folder whose training ran all ``steps``, else None.

    A run stopped mid-seed leaves that seed's earlier models finished (saved only at their
    last step); reusing them saves about 15 min of one core each."""
    from activecad.models.cxr.train import load_cxr_bundle

    if not (folder / "bundle.json").is_file() or not (folder / "history.json").is_file():
        return None
    history = json.loads((folder / "history.json").read_text())
    if not history or history[-1]["step"] != steps:
        return None
    net, cfg = load_cxr_bundle(folder)
    return net, cfg, history


def _truth_boxes(data: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(data / s / "boxes.csv") for s in ("clean", "external_a", "external_b")]
    )


def _score_model(
    net, cfg, folders: dict[str, Path], truth_boxes: pd.DataFrame, sets: dict, model: str,
    examples: str | None,
) -> None:  # fmt: skip
    """Score one trained model on every test set into ``sets[set][model]``; with
    ``examples`` (the run's name), draw its heat maps on external A for the figures."""
    from activecad.models.cxr.evaluate import ModelPredictions, evaluate_predictions

    for set_name, folder in folders.items():
        items, y, p, maps, masks, boxes, per_s = _predict(net, cfg, folder)
        ids = [it.image_id for it in items]
        figures = evaluate_predictions(y, ModelPredictions(p, maps, boxes), masks, ids, truth_boxes)
        entry = sets.setdefault(set_name, {"image_id": ids, "label": y.tolist()})
        entry[model] = {**figures, "probability": p.tolist(), "images_per_s": round(per_s, 2)}
        if examples and set_name == "external_a" and model in MODELS[1::2]:
            _heatmap_examples(items, maps, y, RESULTS / f"cxr_heatmaps_{examples}_{model}.png")


def _write_seed(out: Path, result: dict) -> None:
    tmp = out.with_suffix(".tmp")  # a finished seed's file is never half written
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(out)


@app.command()
def rescore(
    work: Path = typer.Option(..., help="The table2 run's working folder (its models)."),
    name: str = typer.Option("main", help="The --name given to table2."),
) -> None:
    """Score the finished seeds' trained models again with the current evaluation (after a
    change to how heat maps are read, say); the training is not repeated."""
    import torch

    from activecad.models.cxr.train import load_cxr_bundle

    torch.set_num_threads(1)  # shared cores
    state = RESULTS / f"cxr_state_{name}"
    settings = json.loads((state / "settings.json").read_text())
    data, _, folders = _sets(
        work, settings["data_seed"], settings["n_noisy"], settings["n_clean"],
        settings["n_external"], settings.get("nodule_gain", 1.0),
    )  # fmt: skip
    truth_boxes = _truth_boxes(data)
    seeds = sorted(int(p.stem[4:]) for p in state.glob("seed*.json"))
    for seed in seeds:
        out = state / f"seed{seed}.json"
        result = json.loads(out.read_text())
        for model in MODELS:
            net, cfg = load_cxr_bundle(work / "models" / f"seed{seed}" / model)
            examples = name if seed == seeds[0] else None
            _score_model(net, cfg, folders, truth_boxes, result["sets"], model, examples)
        result["scored"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        _write_seed(out, result)
        typer.echo(f"seed {seed}: scored again", err=True)
    report(name)


@app.command()
def report(name: str = typer.Option("main", help="The --name given to table2.")) -> None:
    """Table 2 over the finished seeds: per set and model the mean AUC (t-interval over
    seeds), Se/Sp, Dice and box FROC; DeLong's test between models within each seed."""
    from activecad.metrics import summarize_over_seeds
    from activecad.models.cxr.evaluate import compare_models

    state = RESULTS / f"cxr_state_{name}"
    runs = {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(state.glob("seed*.json"))}
    if not runs:
        return
    figures = ("auc", "sensitivity_youden", "specificity_youden", "sensitivity_at_sp90",
               "dice", "froc_sens_at_1")  # fmt: skip
    table: dict[str, dict] = {}
    delong: dict[str, dict] = {}
    curves = {}
    for set_name in TEST_SETS:
        for model in MODELS:
            row = {}
            for figure in figures:
                values = [r["sets"][set_name][model].get(figure, np.nan) for r in runs.values()]
                row[figure] = {
                    "per_seed": values,
                    **summarize_over_seeds(values, bounds=(0.0, 1.0)).__dict__,
                }
            table.setdefault(set_name, {})[model] = row
        for seed, r in runs.items():
            entry = r["sets"][set_name]
            y = np.asarray(entry["label"])
            probs = {m: np.asarray(entry[m]["probability"]) for m in MODELS}
            delong.setdefault(set_name, {})[str(seed)] = compare_models(y, probs).to_dict(
                orient="records"
            )
            if seed == min(runs):
                curves.update({(set_name, m): (y, p) for m, p in probs.items()})
    settings = json.loads((state / "settings.json").read_text())
    gain = settings.get("nodule_gain")
    options = f" --size {settings['size']}" + (f" --nodule-gain {gain:g}" if gain else "")
    first = runs[min(runs)]
    for r in runs.values():  # seeds differ in training only
        for set_name in TEST_SETS:
            if r["sets"][set_name]["image_id"] != first["sets"][set_name]["image_id"]:
                raise ValueError(f"the seeds were tested on different {set_name} images")
    summary = {
        "what": "Kim et al. Table 2 on the radiograph phantom: four models, internal and "
        "two external test sets",
        "command": f"python benchmarks/cxr.py table2 --work WORK{options} --name {name}",
        "settings": settings,
        "scored": {str(k): r.get("scored", "when trained") for k, r in runs.items()},
        "seeds": sorted(runs),
        "phantom_sets": json.loads((state / "data.json").read_text()),
        "test_images": {s: len(first["sets"][s]["label"]) for s in TEST_SETS},
        "training": {str(k): r["training"] for k, r in runs.items()},
        "results": table,
        "delong_per_seed": delong,
        "images_per_s": {
            s: {m: [r["sets"][s][m]["images_per_s"] for r in runs.values()] for m in MODELS}
            for s in TEST_SETS
        },
    }
    (RESULTS / f"cxr_table2_{name}.json").write_text(json.dumps(summary, indent=1, default=float))
    _roc_plot(curves, RESULTS / f"cxr_roc_{name}.png")
    typer.echo(
        json.dumps(
            {s: {m: round(table[s][m]["auc"]["mean"], 3) for m in MODELS} for s in TEST_SETS}
        )
    )


@app.command()
def learnability(
    work: Path = typer.Option(..., help="Working folder (one phantom set per gain); resumable."),
    gains: list[float] = typer.Option([1.0, 2.0, 4.0], "--gain", help="Nodule gains to try."),
    n_train: int = typer.Option(150, help="Training images per class."),
    n_test: int = typer.Option(75, help="Held-out images per class (other patients)."),
    steps: int = typer.Option(1000, help="Training steps per model."),
    size: int = typer.Option(128, help="Network input side."),
    data_seed: int = typer.Option(1, help="Phantom seed (Table 2 uses 0: never tuned on)."),
) -> None:
    """Can the cpu preset learn the phantom's nodules at all, and at what conspicuity?

    Per nodule gain (``generate_cxr(nodule_gain=)``: the nodules' attenuation above the
    tissue they replace, times the gain), a set of CT-referenced (clean) labels on the
    internal site, Network 1 and Network 2 trained on it, AUC with DeLong's interval on
    held-out patients. The phantom seed differs from Table 2's, so the gain Table 2 uses is
    chosen on images it never scores. -> results/cxr_learnability.json.
    """
    import torch

    from activecad.metrics import delong_interval
    from activecad.models.cxr.data import load_cxr_items
    from activecad.models.cxr.train import preset_cxr_config, train_cxr
    from activecad.phantom.cxr_cohort import SITES, write_cxr_set

    torch.set_num_threads(1)  # shared cores
    path = RESULTS / "cxr_learnability.json"
    found = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"n_train": n_train, "n_test": n_test, "data_seed": data_seed,
                "site": "internal", "labels": "clean (CT-referenced)",
                "command": "python benchmarks/cxr.py learnability --work WORK"}  # fmt: skip
    if found.get("settings", settings) != settings:
        raise typer.BadParameter(f"{path} holds other settings; move it first")
    found["settings"] = settings
    # One phantom set per gain serves every input size and training length.
    rows = found.setdefault("runs", {}).setdefault(f"{size} px, {steps} steps", {})
    # Network 2 from scratch, and from Network 1's weights (Table 2's model 4 starts from a
    # Network 1 model): whether the pixel-level network learns on its own or needs features.
    models = (("network_1", 1, None), ("network_2", 2, None), ("network_2_from_1", 2, "network_1"))
    for gain in gains:
        key = f"{gain:g}"
        row = rows.setdefault(key, {})
        if all(name in row for name, *_ in models):
            continue
        data = work / f"gain_{key}"
        if not (data / "done.json").is_file():
            t0 = time.perf_counter()
            train = write_cxr_set(data / "train", n_train, data_seed, SITES["internal"], 0,
                                  nodule_gain=gain)  # fmt: skip
            test = write_cxr_set(data / "test", n_test, data_seed, SITES["internal"],
                                 int(train["next_patient"]), nodule_gain=gain)  # type: ignore[call-overload]  # fmt: skip
            info = {"train": train, "test": test, "seconds": round(time.perf_counter() - t0, 1)}
            (data / "done.json").write_text(json.dumps(info))
        row["phantom"] = json.loads((data / "done.json").read_text())
        items = load_cxr_items(data / "train")
        model_dirs = {name: work / "models" / f"{size}px_{steps}_gain_{key}_{name}"
                      for name, *_ in models}  # fmt: skip
        for name, network, start in models:
            if name in row:
                continue
            cfg = preset_cxr_config("cpu", network=network, steps=steps, seed=0, size=size)
            t0 = time.perf_counter()
            init = model_dirs[start] if start else None
            if init is not None and not init.is_dir():
                raise typer.BadParameter(f"{init} is gone; delete gain {key}'s row to retrain")
            net, history = train_cxr(items, cfg, model_dirs[name], init_from=init)
            seconds = round(time.perf_counter() - t0, 1)
            _, y, p, *_ = _predict(net, cfg, data / "test")
            _, y_fit, p_fit, *_ = _predict(net, cfg, data / "train")
            ci = delong_interval(y, p)
            row[name] = {
                "auc": ci.auc,
                "auc_95": [ci.lower, ci.upper],
                # Whether the network fits the images it trained on at all: near 0.5 says
                # the signal is not found, near 1 with a test AUC near 0.5 says overfitting.
                "train_auc": delong_interval(y_fit, p_fit).auc,
                "train_seconds": seconds,
                "last_losses": history[-1],
            }
            typer.echo(f"{size} px gain {key} {name}: AUC {ci.auc:.3f} ({seconds} s)", err=True)
            path.write_text(json.dumps(found, indent=1, default=float))


def _roc_plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from activecad.metrics import roc_auc_score, roc_curve

    sets = sorted({s for s, _ in curves})
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 4))
    for ax, s in zip(np.atleast_1d(axes), sets, strict=True):
        for (s2, m), (y, p) in curves.items():
            if s2 != s:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{m} ({roc_auc_score(y, p):.2f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        ax.set_title(s)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _heatmap_examples(items, maps, y, path: Path) -> None:
    from PIL import Image

    from activecad.models.cxr.data import read_cxr_image
    from activecad.models.cxr.inference import write_overlay

    pos = [i for i in range(len(items)) if y[i] == 1][:4]
    tiles = []
    with tempfile.TemporaryDirectory() as folder:
        for i in pos:
            tmp = Path(folder) / "overlay.png"
            write_overlay(read_cxr_image(items[i].image), maps[i], tmp)
            with Image.open(tmp) as im:
                tiles.append(np.asarray(im.convert("RGB").resize((256, 256))))
    if tiles:
        Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


if __name__ == "__main__":
    app()
