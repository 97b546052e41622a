"""Kim et al.'s Table 2 on the radiograph phantom, and the real label statistics behind it.

Subcommands::

    python benchmarks/cxr.py labels      # NIH vs Google vs VinDr figures (torchxrayvision's
                                         # tables) beside the phantom's -> results/cxr_labels.json
    python benchmarks/cxr.py table2 --n-noisy 30 --n-clean 15 --n-external 10 --steps 150
                                         # four models, internal + two external sets
                                         # -> results/cxr_table2_small.json, ROC + heat-map PNGs

Models (as the paper): 1 = Network 1 on the noisy set (report-mined labels); 2 = Network 1
on the clean set; 3 = Network 1 pretrained on noisy, fine-tuned on clean; 4 = Network 2
(pixel labels) pretrained on noisy (Network 1), fine-tuned on clean with masks. The
internal test set is a held-out part of the clean set (other patients).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("/tmp/activecad_bench_cxr")

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
    nodule patients: what ``MEAN_VISIBLE_MM`` and the box-size comparison with NIH rest on."""
    from activecad.phantom import cxr_cohort as cc
    from activecad.phantom.radiograph import MIN_VISIBLE_MM

    diameters, shares, drawn, showing = [], [], 0, 0
    for index in range(patients):
        cxr = cc.generate_cxr(index, seed, cc.SITES["internal"], with_nodules=True)
        drawn += len(cxr.visible)
        showing += bool(cxr.visible.any())
        diameters += list(2 * cxr.radius_px[cxr.visible] * cxr.pixel_mm)
        side = cxr.image.shape[0]
        shares += [np.sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) / side for x1, y1, x2, y2 in cxr.boxes]
    d, share = np.array(diameters), np.array(shares)
    return {
        "command": f"generate_cxr(0..{patients - 1}, seed={seed}, internal, with_nodules=True)",
        "nodules_drawn": drawn,
        "visible": len(d),
        "patients_with_a_visible_nodule": showing,
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


@app.command()
def table2(
    n_noisy: int = typer.Option(30, help="Noisy set, images per class."),
    n_clean: int = typer.Option(15, help="Clean set, images per class (1/3 held out)."),
    n_external: int = typer.Option(10, help="Each external set, images per class."),
    steps: int = typer.Option(150, help="Training steps per model."),
    size: int = typer.Option(256, help="Network input side (cpu preset: 256)."),
    seed: int = typer.Option(0, help="Training seed."),
    data_seed: int = typer.Option(0, help="Phantom seed."),
    name: str = typer.Option("small", help="Result name: results/cxr_table2_NAME.json."),
) -> None:
    """Train the four models and evaluate them on the internal and both external sets."""
    import torch

    from activecad.models.cxr.data import load_cxr_items
    from activecad.models.cxr.evaluate import ModelPredictions, compare_models, evaluate_predictions
    from activecad.models.cxr.train import preset_cxr_config, train_cxr
    from activecad.phantom.cxr_cohort import write_cxr_sets

    torch.set_num_threads(2)
    data = WORK / f"data_{data_seed}_{n_noisy}_{n_clean}_{n_external}"
    t0 = time.perf_counter()
    if not (data / "done.json").is_file():
        info = write_cxr_sets(data, data_seed, n_noisy, n_clean, n_external)
        (data / "done.json").write_text(json.dumps(info))
    gen_s = time.perf_counter() - t0
    clean_items = load_cxr_items(data / "clean")
    # Hold out a third of the clean set (by patient = by image here) as the internal test.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clean_items))
    n_test = len(clean_items) // 3
    test_ids = sorted(clean_items[i].image_id for i in order[:n_test])
    train_ids = [clean_items[i].image_id for i in order[n_test:]]
    internal = WORK / f"internal_{data_seed}_{seed}"
    if not internal.exists():
        for sub in ("images", "masks", "lungs"):
            (internal / sub).mkdir(parents=True, exist_ok=True)
            for i in test_ids:
                (internal / sub / f"{i}.png").symlink_to(data / "clean" / sub / f"{i}.png")
        lab = pd.read_csv(data / "clean" / "labels.csv")
        lab[lab["image_id"].isin(test_ids)].to_csv(internal / "labels.csv", index=False)
    noisy_items = load_cxr_items(data / "noisy", "label_noisy")
    clean_train = load_cxr_items(data / "clean", ids=train_ids)
    models = WORK / f"models_{data_seed}_{seed}_{steps}_{size}"
    cfg1 = preset_cxr_config("cpu", network=1, steps=steps, seed=seed, size=size)
    cfg2 = preset_cxr_config("cpu", network=2, steps=steps, seed=seed, size=size)
    timings = {}
    plan = [
        ("1_noisy_image", noisy_items, cfg1, None),
        ("2_clean_image", clean_train, cfg1, None),
        ("3_noisy_to_clean_image", clean_train, cfg1, models / "1_noisy_image"),
        ("4_noisy_to_clean_pixel", clean_train, cfg2, models / "1_noisy_image"),
    ]
    nets = {}
    for mname, items, cfg, init in plan:
        t = time.perf_counter()
        net, hist = train_cxr(items, cfg, models / mname, init_from=init)
        timings[mname] = {"train_s": round(time.perf_counter() - t, 1), "last": hist[-1]}
        nets[mname] = (net, cfg)
        typer.echo(f"{mname}: {timings[mname]}", err=True)
    sets = {
        "internal": internal,
        "external_a": data / "external_a",
        "external_b": data / "external_b",
    }
    gt_all = pd.concat(
        [pd.read_csv(data / s / "boxes.csv") for s in ("clean", "external_a", "external_b")]
    )
    result: dict[str, object] = {
        "command": f"python benchmarks/cxr.py table2 --n-noisy {n_noisy} --n-clean {n_clean} "
        f"--n-external {n_external} --steps {steps} --size {size} --seed {seed} "
        f"--data-seed {data_seed} --name {name}",
        "preset": f"cpu ({size} px, DenseNet growth 12, blocks 4-8-12-8, batch 8, Adam 1e-3)",
        "sets_per_class": {"noisy": n_noisy, "clean": n_clean, "external": n_external},
        "phantom_seconds": round(gen_s, 1),
        "training": timings,
        "results": {},
        "delong": {},
        "images_per_s": {},
    }
    curves = {}
    for sname, folder in sets.items():
        probs = {}
        for mname, (net, cfg) in nets.items():
            items, y, p, maps, masks, boxes, ips = _predict(net, cfg, folder)
            ids = [it.image_id for it in items]
            r = evaluate_predictions(y, ModelPredictions(p, maps, boxes), masks, ids, gt_all)
            result["results"].setdefault(sname, {})[mname] = r  # type: ignore[union-attr]
            result["images_per_s"][f"{sname}/{mname}"] = round(ips, 2)  # type: ignore[index]
            probs[mname] = p
            curves[(sname, mname)] = (y, p)
            if sname == "external_a" and mname in ("2_clean_image", "4_noisy_to_clean_pixel"):
                _heatmap_examples(items, maps, y, RESULTS / f"cxr_heatmaps_{name}_{mname}.png")
        result["delong"][sname] = compare_models(y, probs).to_dict(orient="records")  # type: ignore[index]
    _roc_plot(curves, RESULTS / f"cxr_roc_{name}.png")
    out = RESULTS / f"cxr_table2_{name}.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    typer.echo(str(out))


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
    for i in pos:
        tmp = WORK / "overlay.png"
        write_overlay(read_cxr_image(items[i].image), maps[i], tmp)
        with Image.open(tmp) as im:
            tiles.append(np.asarray(im.convert("RGB").resize((256, 256))))
    if tiles:
        Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


if __name__ == "__main__":
    app()
