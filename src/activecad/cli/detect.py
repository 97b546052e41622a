"""``activecad detect``: run a trained 3D nodule detector on CT scans.

Every input is checked before the first scan is processed (the scans exist and their
headers read, the model folder loads, ``--out`` is a writable file); the tables are written
atomically, so a failed run leaves neither a half-written CSV nor a half-written cache entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from activecad.cli._common import atomic_output, output_file, warn
from activecad.errors import InputError

_CT_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".dcm", ".dicom", ".ima")


def check_scan(path: Path) -> None:
    """Check that ``path`` is a CT scan whose header can be read, without reading its voxels.

    Raises:
        InputError: the path does not exist, is not a CT format, its header cannot be read,
            a MetaImage's data file is missing, or a folder holds no DICOM series.
    """
    from activecad.io.ct import list_dicom_series

    if not path.exists():
        raise InputError("no such scan file or folder", path=path, fix="check the path")
    if path.is_dir():
        try:
            series = list_dicom_series(path)
        except InputError:
            raise
        except Exception as exc:  # pydicom raises many kinds on foreign files
            raise InputError(
                f"cannot read the DICOM folder ({exc})", path=path, fix="give a DICOM series folder"
            ) from None
        if not series:
            from activecad.io.ct import no_dicom_error

            raise no_dicom_error(path)  # names the .mhd/.nii files to pass instead, if any
        return
    name = path.name.lower()
    if not name.endswith(_CT_SUFFIXES) and "." in name:
        raise InputError(
            f"not a CT scan file ({path.suffix})",
            path=path,
            fix="give .mhd, .mha, .nii, .nii.gz or .dcm files, or DICOM folders",
        )
    if name.endswith(".mhd"):
        _check_metaimage(path)
    import SimpleITK

    reader = SimpleITK.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            "cannot read the scan's header (corrupt or not a CT file)",
            path=path,
            fix="check the file, e.g. with 'activecad info'",
        ) from None


def _check_metaimage(path: Path) -> None:
    try:
        header = dict(
            line.split("=", 1)
            for line in path.read_text(errors="replace").splitlines()
            if "=" in line
        )
    except OSError as exc:
        raise InputError(
            f"cannot read ({exc.strerror})", path=path, fix="check permissions"
        ) from None
    data = {k.strip(): v.strip() for k, v in header.items()}.get("ElementDataFile", "")
    listed = data and data.upper() not in ("LOCAL", "LIST") and "%" not in data
    if listed and not (path.parent / data).is_file():
        raise InputError(
            f"its data file {data} is missing", path=path, fix=f"copy {data} next to {path.name}"
        )


def detect_command(
    scans: Annotated[
        list[Path],
        typer.Argument(
            help="CT scans (.mhd, .nii.gz, DICOM folder); for a MELD model also DeepLesion "
            "folders (DL_info.csv, Images_png/).",
            show_default=False,
        ),
    ],
    models: Annotated[
        list[Path],
        typer.Option(
            "--model",
            help="Model folder from 'train detector' (or 'train meld', 'train cxr'). Repeat it "
            "for an ensemble of detectors: each marks every scan and their detections are "
            "fused by weighted box clustering (probability = the models' best scores summed "
            "over the number of models).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Detections CSV to write (LUNA16 columns + diameter_mm; a MELD model: "
            "File_name, x1, y1, x2, y2, score per slice, as 'eval boxes' reads them).",
        ),
    ],
    uncertainty: Annotated[
        Path | None,
        typer.Option(
            "--uncertainty", help="CSV to write: l_scan and L_RoI (every reading) per scan."
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Preprocessing cache folder (default: $ACTIVECAD_CACHE, else the user's "
            "cache folder; see 'activecad cache info').",
            show_default=False,
        ),
    ] = None,
    fpr: Annotated[
        list[Path] | None,
        typer.Option(
            "--fpr",
            help="FP-reduction model folder ('activecad train fpr'): re-score every detection; "
            "probability = detector^(1-w) x classifier^w (w: --fpr-weight), both kept as "
            "columns. Repeat it for an ensemble: the classifiers' probabilities are averaged.",
        ),
    ] = None,
    fpr_weight: Annotated[
        float | None,
        typer.Option(
            "--fpr-weight",
            min=0.0,
            max=1.0,
            help="With --fpr: the classifier's weight w in the final probability (default "
            "0.5: sqrt(detector x classifier); 1: the classifier alone). Choose it on "
            "validation scans (see README, 'Quality and speed').",
            show_default=False,
        ),
    ] = None,
    blobs: Annotated[
        int,
        typer.Option(
            "--blobs",
            min=0,
            help="With --fpr: also hand the classifier this many blob candidates a scan (a "
            "Hessian dot filter's strongest spots in the lungs that no detection covers; "
            "they catch small nodules a detector misses), each given --blob-score as its "
            "detector probability; column source tells them apart. 0: none.",
        ),
    ] = 0,
    blob_score: Annotated[
        float | None,
        typer.Option(
            "--blob-score",
            min=0.0,
            max=1.0,
            help="With --blobs: the detector probability a blob candidate is given before "
            "the classifier's is combined with it (default: the detector's score threshold, "
            "the most it said there). Choose it on validation scans: 0.2 on the medium "
            "phantom's (see README, 'Quality and speed').",
            show_default=False,
        ),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Test-time augmentation: also run each scan mirrored along every subset of "
            "its axes (8 passes, 8 times the time) and fuse the passes' boxes, as "
            "nnDetection does. CT detectors only.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a summary as JSON.")] = False,
    heatmaps: Annotated[
        Path | None,
        typer.Option("--heatmaps", help="Folder for heat-map overlay PNGs (radiograph models)."),
    ] = None,
    stacked: Annotated[
        Path | None,
        typer.Option(
            "--stacked",
            help="CSV to write (MELD models): the slice detections stacked into 3D boxes "
            "(IoU > 0.5 on consecutive slices).",
        ),
    ] = None,
) -> None:
    """Detect nodules in CT scans with a trained detector.

    Writes one row per detection (world mm) to --out; with --uncertainty also each scan's
    predicted loss l_scan and RoI uncertainty L_RoI (an ensemble's: the models' means).
    Preprocessed scans are cached, so a second run on the same scans skips preprocessing.
    With --model repeated, the detectors' marks are fused. A MELD model ('train meld') detects
    lesions on every stored slice instead, one row per 2D box in slice pixels.
    """
    from activecad.cli._common import usage_error
    from activecad.cli.detect_cxr import detect_cxr, is_cxr_model
    from activecad.cli.detect_meld import detect_meld, is_meld_model

    model = models[0]
    if len(models) > 1 and any(is_meld_model(m) or is_cxr_model(m) for m in models):
        raise usage_error(
            "an ensemble needs CT detectors ('train detector'); give one MELD or radiograph model",
            option="--model",
        )
    if is_meld_model(model):  # a lesion model: 2D boxes on every stored slice
        given = {
            "--uncertainty": uncertainty,
            "--fpr": fpr or None,
            "--fpr-weight": fpr_weight,
            "--heatmaps": heatmaps,
            "--blobs": blobs or None,
            "--blob-score": blob_score,
            "--tta": tta or None,
        }
        for option, value in given.items():
            if value is not None:
                raise usage_error("does not apply to a MELD model; drop it", option=option)
        if cache is not None:
            warn("--cache is not used by a MELD model: its slices are prepared afresh")
        detect_meld(scans, model, out, stacked, as_json)
        return
    if stacked is not None:
        raise usage_error("applies to MELD models ('train meld') only; drop it", option="--stacked")
    if is_cxr_model(model):  # a chest-radiograph model: SCANS are radiographs
        ct_only = {
            "--fpr": fpr or None,
            "--fpr-weight": fpr_weight,
            "--blobs": blobs or None,
            "--blob-score": blob_score,
            "--tta": tta or None,
        }
        for option, value in ct_only.items():
            if value is not None:
                raise usage_error("applies to CT detectors only; drop it", option=option)
        return detect_cxr(scans, model, out, heatmaps, as_json)
    import pandas as pd

    from activecad.data.preprocess import PreprocessCache, default_cache_dir
    from activecad.io.tables import write_table
    from activecad.models.detector3d import load_bundle
    from activecad.models.detector3d.inference import detect_files, fuse_models
    from activecad.models.fpr import apply_fpr, load_fpr

    # Everything is checked before the first scan is processed.
    if blobs and not fpr:
        raise usage_error(
            "blob candidates need a classifier to score them: add --fpr MODEL_DIR",
            option="--blobs",
        )
    if blob_score is not None and not blobs:
        raise usage_error("scores blob candidates: add --blobs N", option="--blob-score")
    if fpr_weight is not None and not fpr:
        raise usage_error(
            "weighs the FP-reduction classifier: add --fpr MODEL_DIR", option="--fpr-weight"
        )
    out = output_file(out)
    if uncertainty is not None:
        uncertainty = output_file(uncertainty, option="--uncertainty")
        if uncertainty.resolve() == out.resolve():
            raise InputError(
                "--uncertainty and --out name the same file",
                path=out,
                fix="give --uncertainty another name, e.g. uncertainty.csv",
            )
    cache_dir = cache if cache is not None else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError(
            "the preprocessing cache must be a folder, but this is a file",
            path=cache_dir,
            fix="pass another --cache folder",
        )
    for scan in scans:
        check_scan(scan)
    detectors = [load_bundle(m) for m in models]  # every model is checked before scan one
    for detector in detectors:
        if tta:
            detector.config = detector.config.model_copy(update={"mirror_tta": True})
    for classifier in fpr or []:
        load_fpr(classifier)  # checked before the first scan

    found = [
        detect_files(detector, scans, progress=not as_json, cache=PreprocessCache(cache_dir))
        for detector in detectors
    ]
    detections, uncertainties = found[0]
    if len(found) > 1:
        config = detectors[0].config
        detections = fuse_models(
            [table for table, _ in found], config.nms_thresh, config.detections_per_scan
        )
        # Each scan's uncertainties are the models' means.
        uncertainties = (
            pd.concat([table for _, table in found])
            .groupby("seriesuid", sort=False)
            .mean()
            .reset_index()
        )
    if blobs:
        from activecad.models.blobs import BlobConfig, blob_candidates_for_files, merge_candidates

        found = blob_candidates_for_files(
            scans, PreprocessCache(cache_dir), BlobConfig(per_scan=blobs), progress=not as_json
        )
        score = detector.config.score_thresh if blob_score is None else blob_score
        detections = merge_candidates(detections, found, blob_score=score)
    if fpr:
        detections = apply_fpr(
            detections,
            scans,
            fpr,
            cache=PreprocessCache(cache_dir),
            fpr_weight=0.5 if fpr_weight is None else fpr_weight,
            progress=not as_json,
        )
    with atomic_output(out, folder=False) as tmp:
        write_table(detections, tmp, "submission")
    if uncertainty is not None:
        with atomic_output(uncertainty, folder=False) as tmp:
            uncertainties.to_csv(tmp, index=False)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "detections": len(detections),
                    "scans": uncertainties.to_dict(orient="records"),
                    "out": str(out),
                    "uncertainty": str(uncertainty) if uncertainty is not None else None,
                    "cache": str(cache_dir),
                }
            )
        )
    else:
        Console(stderr=True).print(
            f"{len(detections)} detections in {len(scans)} scans -> {out}", highlight=False
        )


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect_command)
