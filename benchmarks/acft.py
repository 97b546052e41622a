"""Candidate-level active learning on the phantom: ACFT against random fine-tuning.

Zhou et al., "Active, continual fine tuning of convolutional neural networks for reducing
annotation efforts" (Medical Image Analysis 2021), Table 2's strategies through
``activecad al run`` with ``items: candidate``: RFT (random selection, fine-tuned on
everything labelled), AFT (ACFT's selection, retrained from scratch on everything
labelled), ACFT(LQ) (continual, everything labelled) and ACFT(HQ) (continual, the new
queries plus the labelled candidates the current model misclassifies), three seeds each.

Candidates are the detector's marks (``benchmarks/fpr.py`` writes them: the active-learning
experiment's random/seed-0/cycle-4 detector run over the pool and the test scans, committed
under ``benchmarks/results/fpr_detections/`` so that every session uses the same set), the
``TOP_K`` most probable per scan, labelled by the LUNA16 hit rule. The split by patient is
the active-learning experiment's (same phantom, same test fraction), so the test scans are
the same held-out patients. Each cycle reports the AUC of the test scans' candidates.

    python benchmarks/acft.py run --work /work/exp/acft      # hours; resumable
    python benchmarks/acft.py report --work /work/exp/acft   # anytime, from what finished

Results: ``benchmarks/results/acft/`` (report.json, curves.png, metrics.jsonl per part).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer
import yaml

from _al_parts import keep_results, part_folder, run_part

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "acft"
PHANTOM = Path("/work/exp/active/phantom")
DETECTIONS = Path("/work/exp/fpr")
TOP_K = 5
STRATEGIES = ["RFT", "AFT", "ACFT(LQ)", "ACFT(HQ)"]
LOOP = {
    "items": "candidate",
    "initial_fraction": 0.05,
    "query_size": 40,
    "cycles": 7,
    "test_fraction": 0.35,  # the active-learning experiment's split
    "mode": "finetune",
    "initial_steps": 300,
    "steps_per_cycle": 150,
    "oracle": "simulated",
    # seconds per candidate, not minutes per scan
    "annotation_cost": {"base_minutes": 0.1, "per_nodule_minutes": 0.0, "per_10mm_minutes": 0.0},
    "fpr": {"preset": "cpu"},
}


def _slug(strategy: str) -> str:
    """``ACFT(HQ)`` -> ``acft-hq``: a folder name."""
    return strategy.lower().replace("(", "-").replace(")", "")


# One part per seed and strategy (about half an hour to an hour each on two shared cores):
# a part is the unit a new machine restarts, so a short one loses little.
PARTS = {
    f"seed{seed}-{_slug(strategy)}": {"strategies": [strategy], "seeds": [seed]}
    for seed in (0, 1, 2)
    for strategy in STRATEGIES
}

UNIT = (0.0, 1.0)  # AUC and its learning-curve area cannot leave it
TARGET_AUC = 0.9
app = typer.Typer(add_completion=False, no_args_is_help=True)


def _marks(part: str) -> pd.DataFrame:
    """The detector's marks on the pool or test scans: benchmarks/fpr.py's work folder, or
    the copy it commits (the same set in every session)."""
    path = DETECTIONS / f"{part}_detections.csv"
    if not path.is_file():
        path = RESULTS.parent / "fpr_detections" / f"{part}_detections.csv.gz"
    return pd.read_csv(path, dtype={"seriesuid": str})


def _candidates(work: Path) -> Path:
    out = work / "candidates.csv"
    if not out.is_file():
        marks = pd.concat([_marks(part) for part in ("pool", "test")], ignore_index=True)
        marks = marks.sort_values(["seriesuid", "probability"], ascending=[True, False])
        marks.groupby("seriesuid").head(TOP_K).to_csv(out, index=False)
    return out


def _config(work: Path, part: str) -> Path:
    config = {"data": str(PHANTOM), "candidates": str(_candidates(work)), **LOOP, **PARTS[part]}
    path = work / f"{part}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    return path


@app.command()
def run(
    work: Path = typer.Option(..., help="Folder for the configs and loop folders."),
    parts: list[str] = typer.Option(list(PARTS), "--part", help="Parts to run, in order."),
) -> None:
    """Run (or continue) every part; each finished cycle is kept."""
    work.mkdir(parents=True, exist_ok=True)
    for part in parts:
        run_part(work, part, _config(work, part), RESULTS)
        report(work)


@app.command()
def report(work: Path = typer.Option(..., help="The folder given to run.")) -> None:
    """Curves, ALC and annotation saved against RFT from what has finished."""
    from activecad.metrics import (
        annotation_saved,
        area_under_learning_curve,
        labels_to_reach,
        summarize_over_seeds,
    )

    rows = []
    for part in PARTS:
        keep_results(work, RESULTS, part, ("metrics.jsonl", "selections.csv"))
        folder = part_folder(work, RESULTS, part)
        if folder is not None:
            lines = (folder / "metrics.jsonl").read_text().splitlines()
            rows += [json.loads(line) for line in lines if line.strip()]
    if not rows:
        return
    table = pd.DataFrame(rows)
    table = table[table["auc"].notna()] if "auc" in table else table.iloc[:0]
    curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for (strategy, seed), group in table.groupby(["strategy", "seed"]):
        group = group.sort_values("cycle")
        curves.setdefault(strategy, {})[int(seed)] = (
            group["labelled"].to_numpy(float),
            group["auc"].to_numpy(float),
        )
    summary: dict[str, object] = {}
    for strategy, by_seed in curves.items():
        alc = [area_under_learning_curve(x, y) for x, y in by_seed.values() if len(x) > 1]
        finals = [float(y[-1]) for _, y in by_seed.values()]
        entry: dict[str, object] = {
            "seeds": sorted(by_seed),
            "cycles": {str(s): len(x) for s, (x, _) in by_seed.items()},
            "final_auc": {
                "per_seed": finals,
                **_summary(summarize_over_seeds(finals, bounds=UNIT)),
            },
            "alc": {"per_seed": alc, **_summary(summarize_over_seeds(alc, bounds=UNIT))},
        }
        # A fixed target beside RFT's final AUC, which one noisy last step decides: a round
        # figure between where the curves start (0.77-0.81) and end (0.85-0.95).
        entry[f"labels_to_auc_{TARGET_AUC:g}"] = [
            labels_to_reach(x, y, TARGET_AUC) for x, y in by_seed.values()
        ]
        saved = []
        for seed, (x, y) in by_seed.items():
            rft = curves.get("RFT", {}).get(seed)
            if strategy != "RFT" and rft is not None and len(rft[0]) == len(x) > 1:
                result = annotation_saved(x, y, rft[0], rft[1])
                saved.append(float(np.ravel(result.saved_percent)[0]))
        if saved:
            entry["annotation_saved_vs_rft_percent"] = saved
        summary[strategy] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.json").write_text(
        json.dumps(
            {
                "what": "AUC of held-out test candidates per active-learning step "
                "(Zhou et al. 2021, Table 2 strategies)",
                "setup": {**LOOP, "top_k_candidates_per_scan": TOP_K, "phantom": str(PHANTOM)},
                "candidates": _candidate_counts(work),
                "strategies": summary,
            },
            indent=2,
            default=float,
        )
    )
    _plot(curves, RESULTS / "curves.png")
    _gallery(work, RESULTS / "gallery.png")


def _candidate_counts(work: Path) -> dict[str, int] | None:
    """Candidates and nodules (LUNA16 hit rule) among the pool and the test patients."""
    from activecad.active.candidate_learner import candidate_pool

    splits = sorted(work.glob("*/split.json"))
    if not splits or not PHANTOM.is_dir():
        return None
    split = json.loads(splits[0].read_text())
    table = candidate_pool(PHANTOM, _candidates(work))
    out = {}
    for part in ("pool", "test"):
        rows = table[table["seriesuid"].isin(set(split[part]))]
        out.update({f"{part}_scans": len(split[part]), f"{part}_candidates": len(rows),
                    f"{part}_nodule_candidates": int(rows["label"].sum())})  # fmt: skip
    return out


def _gallery(work: Path, out: Path, strategy: str = "ACFT(HQ)", cycle: int = 1, n: int = 4) -> None:
    """Zhou et al. Fig. 7: the top and bottom candidates ACFT selected at a step, each as the
    middle axial slice of its first patch and the histogram of its m patch predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from activecad.active.candidate_learner import CandidateLearner

    part = f"seed0-{_slug(strategy)}"
    run = work / part
    selections = run / "selections.csv"
    model = run / "runs" / f"{strategy}-seed0" / "cycles" / str(cycle - 1) / "model"
    if not selections.is_file() or not (model / "weights.pt").is_file():
        return
    chosen = pd.read_csv(selections)
    chosen = chosen[(chosen.strategy == strategy) & (chosen.cycle == cycle)].sort_values("rank")
    if len(chosen) < 2 * n:
        return
    picks = pd.concat([chosen.head(n), chosen.tail(n)])
    config = yaml.safe_load((work / f"{part}.yaml").read_text())
    learner = CandidateLearner(config["data"], candidates=config["candidates"], fpr=config["fpr"])
    keys = picks["item"].tolist()
    probabilities = [s.probabilities for s in learner.score(model, keys, seed=0)]
    patches = learner._set(keys).patches(np.arange(len(keys)), learner.config)
    truth = learner.table.set_index("key").loc[keys, "label"].to_numpy()
    fig, axes = plt.subplots(2, 2 * n, figsize=(2 * 2 * n, 4.2))
    for i in range(len(keys)):
        image, hist = axes[0, i], axes[1, i]
        image.imshow(patches[i, 0, 0, patches.shape[3] // 2], cmap="gray")
        image.set_xticks([])
        image.set_yticks([])
        where = "top" if i < n else "bottom"
        image.set_title(f"{where}: {'nodule' if truth[i] else 'non-nodule'}", fontsize=8)
        hist.hist(probabilities[i], bins=10, range=(0, 1), color="tab:blue")
        hist.set_xlim(0, 1)
        hist.set_xlabel("patch P(nodule)", fontsize=7)
        hist.tick_params(labelsize=6)
    fig.suptitle(
        f"{strategy}, seed 0, step {cycle}: top and bottom {n} selected candidates", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _summary(s: object) -> dict[str, float]:
    return {k: float(v) for k, v in vars(s).items() if isinstance(v, (int, float, np.floating))}


def _plot(curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for strategy, by_seed in sorted(curves.items()):
        n = min(len(x) for x, _ in by_seed.values())
        x = next(iter(by_seed.values()))[0][:n]
        ys = np.array([y[:n] for _, y in by_seed.values()])
        seeds = f"{len(ys)} seed" + ("" if len(ys) == 1 else "s")
        (line,) = ax.plot(x, ys.mean(axis=0), marker="o", label=f"{strategy} ({seeds})")
        if len(ys) > 1:  # the band: lowest to highest seed
            ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labelled candidates")
    ax.set_ylabel("test AUC (candidates of held-out patients)")
    ax.set_title("mean over seeds; bands from the lowest to the highest seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    app()
