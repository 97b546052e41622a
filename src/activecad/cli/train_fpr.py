"""``activecad train fpr``: train the FP-reduction classifier on a data folder's candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from activecad.cli._common import atomic_output, output_folder, usage_error
from activecad.cli.detector import train_app


@train_app.command("fpr")
def train_fpr_command(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="LUNA16-style folder: ct/, annotations.csv (annotations_excluded.csv "
            "optional) and, without --candidates, candidates.csv.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    candidates: Annotated[
        Path | None,
        typer.Option(
            "--candidates",
            help="Candidates CSV: the output of 'activecad detect' (the realistic source) or "
            "a LUNA16 candidates.csv. Default: DATA_DIR/candidates.csv.",
        ),
    ] = None,
    blobs: Annotated[
        int,
        typer.Option(
            "--blobs",
            min=0,
            help="Also learn from this many blob candidates a scan that no candidate covers "
            "(as 'detect --fpr --blobs N' hands them over). 0: none.",
        ),
    ] = 0,
    seriesuids: Annotated[
        Path | None,
        typer.Option(
            "--seriesuids",
            help="Train only on these scans: a CSV with one seriesuid per line, or "
            "MODEL/split.json:train.",
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Fine-tune: start from this FP-reduction model."),
    ] = None,
    preset: Annotated[str, typer.Option("--preset", help="cpu or paper.")] = "cpu",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Preprocessing cache folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train the 3D encoder-decoder FP-reduction classifier (nodule vs non-nodule).

    After Park, Lee, Park & Jung, "How transferable are the deep features from false positive
    reduction network for lung nodule detection in CT to malignancy prediction?" (2017)
    and Dou et al., "Automated pulmonary nodule detection via 3D ConvNets with online sample
    filtering and hybrid-loss residual learning" (MICCAI 2017). Candidates are labelled by
    the LUNA16 hit rule; every annotated nodule is added as a candidate.
    """
    from activecad.cli.eval import read_seriesuids
    from activecad.models.fpr import PRESETS, load_fpr, preset_config
    from activecad.models.fpr.train import train_fpr_on_folder
    from activecad.registry import unknown_name_message

    if preset not in PRESETS:
        raise usage_error(unknown_name_message("preset", preset, PRESETS), option="--preset")
    out = output_folder(out, writes="weights.pt, config.yaml, history.json and split.json")
    overrides: dict[str, object] = {"seed": seed}
    if steps is not None:
        overrides["steps"] = steps
    config = preset_config(preset, **overrides)
    if init_from is not None:
        _, start = load_fpr(init_from)  # checked before any scan is read
        config = start.model_copy(update=overrides)
    only = list(read_seriesuids(seriesuids)) if seriesuids is not None else None
    extra = None
    if blobs:
        from activecad.active.loop import scan_uid
        from activecad.data.candidates import read_candidates
        from activecad.data.folders import read_luna_folder
        from activecad.data.preprocess import PreprocessCache
        from activecad.models.blobs import BlobConfig, blob_candidates_for_files

        # A missing or malformed table fails now, not after minutes of blob filtering.
        read_candidates(candidates or Path(data_dir) / "candidates.csv")
        scans = read_luna_folder(data_dir).scans
        if only is not None:
            wanted = set(only)
            scans = [path for path in scans if scan_uid(path) in wanted]
        extra = blob_candidates_for_files(
            scans, PreprocessCache(cache), BlobConfig(per_scan=blobs), progress=not as_json
        )
    with atomic_output(out, folder=True) as tmp:
        summary = train_fpr_on_folder(
            data_dir,
            tmp,
            config,
            candidates=candidates,
            extra_candidates=extra,
            seriesuids=only,
            init_from=init_from,
            cache_dir=cache,
            progress=not as_json,
        )
    summary["model_dir"] = str(out)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"model written to {out} (validation AUC {summary['val_auc']})")
