"""`organdetr predict CHECKPOINT INPUT... -o OUT`: organ boxes for new scans (JSON + pictures).

`organdetr predict CHECKPOINT --dicomweb URL --study UID -o OUT`: the same for a CT series on a PACS, with
the DICOM SEG and SR stored back (STOW-RS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from organdetr.cli._failures import exit_if_failed


def predict(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (one <case>.json [+ .png] per scan).")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Run folder (uses best/, else last/) or checkpoint folder. Several run folders before the "
            "scans (RUN1 RUN2 ... SCAN) predict as one ensemble (boxes fused per organ).",
            show_default=False,
        ),
    ] = None,
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="INPUT",
            help="Scans: image files (NIfTI/NRRD/MHA/MHD), DICOM series folders, or folders of them "
            "(none with --dicomweb).",
            show_default=False,
        ),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            "--score-threshold",
            "--min-score",
            help="Drop detections below this score, in [0, 1] (0 keeps the best query of every organ, as the "
            "paper evaluates). Default: the threshold training chose on the validation scans (best F1 of "
            "organ presence, stored with the checkpoint); 0 for runs trained before it was stored.",
            show_default=False,
        ),
    ] = None,
    organs: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="Only these organs (comma-separated, e.g. liver,spleen) in every output.",
            show_default=False,
        ),
    ] = None,
    statistics: Annotated[
        bool,
        typer.Option(
            "--statistics",
            help="Also write OUT/statistics.csv (one row per organ and scan: volume in ml from the mask or "
            "the box, mean/median/p5/p95 HU inside, box size and centre in mm, cut by the field of view) and "
            "the same rows under 'statistics' in each JSON.",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Scans per forward pass.")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (bf16 autocast on GPU).")] = "auto",
    amp: Annotated[
        str,
        typer.Option(
            help="Precision: auto (bf16 on a GPU that has it; on a CPU with bf16 instructions only where the "
            "first batch measures clearly faster in bf16), off (fp32), bf16, fp16 (GPU only).",
        ),
    ] = "auto",
    overlay: Annotated[bool, typer.Option(help="Write <case>.png: three views with the boxes.")] = True,
    save_box_mask: Annotated[
        bool, typer.Option(help="Write <case>_boxes.nii.gz: the boxes as a label volume on the scan's grid.")
    ] = False,
    resample_uneven_slices: Annotated[
        bool,
        typer.Option(
            "--resample-uneven-slices",
            help="DICOM series with a missing slice or uneven slice steps: interpolate onto the median step "
            "(and say so under 'warnings' in the JSON) instead of refusing the scan.",
        ),
    ] = False,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="Also write a sister tool's format (repeatable): slicer (<case>_boxes.mrk.json + "
            "<case>.seg.nrrd), monai (monai_datalist.json), nndetection (<case>_boxes.pkl), rtstruct "
            "(<case>_rtstruct.dcm: DICOM RT Structure Set, one ROI per organ; DICOM series input).",
        ),
    ] = None,
    html: Annotated[
        bool, typer.Option(help="Write OUT/viewer.html: every scan in three views with the boxes, offline.")
    ] = False,
    monai_box_mode: Annotated[
        str, typer.Option(help="--format monai: MONAI box mode (cccwhd, xyzxyz, xxyyzz, xyxyzz, xyzwhd).")
    ] = "cccwhd",
    monai_coordinates: Annotated[
        str, typer.Option(help="--format monai: world (LPS mm), world-ras (RAS mm) or image (voxels).")
    ] = "world",
    dicom_out: Annotated[
        bool,
        typer.Option(
            help="For DICOM series inputs also write <case>_seg.dcm (DICOM SEG of the organ masks) and "
            "<case>_sr.dcm (DICOM SR TID 1500: box, volume, score per organ)."
        ),
    ] = False,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            "--dicomweb",
            metavar="URL",
            help="DICOMweb root of a PACS (e.g. http://pacs:8042/dicom-web): fetch --study's CT series, "
            "predict, store SEG + SR back. Credentials: env ORGANDETR_DICOMWEB_TOKEN, or "
            "ORGANDETR_DICOMWEB_USER + ORGANDETR_DICOMWEB_PASSWORD.",
            rich_help_panel="PACS (DICOMweb)",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            metavar="UID",
            help="StudyInstanceUID to fetch (with --dicomweb).",
            rich_help_panel="PACS (DICOMweb)",
        ),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(
            metavar="UID",
            help="SeriesInstanceUID (default: the study's CT series with the most instances).",
            rich_help_panel="PACS (DICOMweb)",
        ),
    ] = None,
    dicomweb_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the server (connect and each read).", rich_help_panel="PACS (DICOMweb)"
        ),
    ] = 60.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    folds: Annotated[
        Path | None,
        typer.Option(
            metavar="RUNS",
            help="Ensemble every fold run in RUNS (run folders trained with `train --fold k`); then every "
            "positional argument is a scan.",
            rich_help_panel="Ensembles and TTA",
        ),
    ] = None,
    out_of_fold: Annotated[
        bool,
        typer.Option(
            help="With --folds and no scans: predict every case of the folds' cache with the one fold model "
            "that did not train on it (score with `organdetr evaluate OUT CACHE`); JSON and pictures only.",
            rich_help_panel="Ensembles and TTA",
        ),
    ] = False,
    tta: Annotated[
        bool,
        typer.Option(
            help="Test-time mirroring: also predict the scan flipped along --tta-axes (every combination), "
            "map the boxes back and fuse them; costs one forward pass per view (8 for ijk).",
            rich_help_panel="Ensembles and TTA",
        ),
    ] = False,
    tta_axes: Annotated[
        str,
        typer.Option(
            help="--tta: grid axes to mirror, letters of ijk (i = left-right: left/right organs swap back).",
            rich_help_panel="Ensembles and TTA",
        ),
    ] = "ijk",
) -> None:
    """Detect organs in CT scans with a trained checkpoint.

    Per scan: OUT/<case>.json (organ, score, box in voxels of the original scan and in LPS mm, centre and
    size in mm), OUT/<case>.png (W400/L40 views with boxes) and optionally OUT/<case>_boxes.nii.gz,
    files for 3D Slicer, MONAI or nnDetection (--format) and one offline HTML viewer (--html).
    With --dicom-out also OUT/<case>_seg.dcm and OUT/<case>_sr.dcm, with --format rtstruct
    OUT/<case>_rtstruct.dcm; with --dicomweb URL --study UID the series comes from a PACS and the SEG and SR
    (and RT Structure Set) go back to it.
    Ensembles (RUN1 RUN2 ... SCAN, or --folds RUNS SCAN) and --tta fuse the boxes of every model and
    view per organ (score-weighted) and name the members in the JSON; --folds RUNS --out-of-fold predicts
    a cross-validation's held-out cases.
    A bad scan is reported and skipped; the exit code is 1 if any scan failed.
    """
    import math

    import torch

    from organdetr.cli import _ensemble
    from organdetr.formats.run_outputs import RunOutputs
    from organdetr.inference.predict import predict_scans
    from organdetr.inference.selection import parse_organs, resolve_score_threshold
    from organdetr.io.discovery import find_scans, group_channels
    from organdetr.runtime.errors import InputError
    from organdetr.runtime.outputs import check_output_folder

    if score_threshold is not None and not (math.isfinite(score_threshold) and 0.0 <= score_threshold <= 1.0):
        raise typer.BadParameter(
            f"must be a number in [0, 1], got {score_threshold}", param_hint="--score-threshold"
        )
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise typer.BadParameter(f"must be auto, off, bf16 or fp16, got {amp!r}", param_hint="--amp")
    check_output_folder(out, "output folder")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    if dicomweb is not None or study is not None or series is not None:
        if folds is not None or tta or out_of_fold:
            raise InputError(None, "--folds, --tta and --out-of-fold work on scans, not with --dicomweb")
        if inputs:
            raise InputError(None, "give either INPUT scans or --dicomweb URL --study UID, not both")
        if dicomweb is None or study is None:
            raise InputError(None, "--dicomweb URL and --study UID go together (--series UID is optional)")
        _predict_dicomweb(
            checkpoint,
            dicomweb,
            study,
            series,
            out,
            device,
            amp,
            dicomweb_timeout,
            score_threshold=score_threshold,
            overlay=overlay,
            progress=progress,
            formats=formats or (),
        )
        return
    if out_of_fold:
        if checkpoint is not None or inputs or formats or html or dicom_out:
            raise InputError(checkpoint, "--out-of-fold takes no scans, --format, --html or --dicom-out")
        options = {"batch_size": batch_size, "score_threshold": score_threshold, "overlay": overlay}
        total, failed = _ensemble.predict_out_of_fold(
            folds, tta, tta_axes, device, amp,
            lambda p, scans: predict_scans(p, scans, out, progress=progress, **options),
        )  # fmt: skip
        typer.echo(f"predicted {total - len(failed)} of {total} case(s) out of fold -> {out}")
        exit_if_failed(failed, "scan(s)")
        return
    runs, inputs = _ensemble.members_and_inputs(checkpoint, inputs, folds)
    if not inputs:
        raise InputError(None, "no INPUT scans given (or use --dicomweb URL --study UID)")
    outputs = RunOutputs(
        out,
        formats or (),
        html=html,
        monai_box_mode=monai_box_mode,
        monai_coordinates=monai_coordinates,
        title=f"organdetr predict: {runs[0].name}",
    )
    scans = find_scans(inputs)
    predictor = _ensemble.load_predictor(runs, tta, tta_axes, device, amp)
    parse_organs(organs, predictor.classes)  # an unknown organ: one line listing the valid ones, exit 2
    if predictor.in_channels > 1:  # nnU-Net channel files <case>_0000 .. side by side make one scan
        scans = group_channels(scans, predictor.in_channels)
    typer.echo(
        f"{len(scans)} scan(s), {len(predictor.classes)} organ classes, model grid "
        f"{'x'.join(str(s) for s in predictor.preprocess_config.input_size)}, device {predictor.device}"
    )
    threshold = resolve_score_threshold(score_threshold, predictor.stored_score_threshold)
    typer.echo(f"{'warning: ' if threshold.warning else ''}organs kept: {threshold.detail}")
    summary = predict_scans(
        predictor,
        scans,
        out,
        batch_size=batch_size,
        score_threshold=score_threshold,
        overlay=overlay,
        save_box_mask=save_box_mask,
        uneven_slices="resample" if resample_uneven_slices else "refuse",
        dicom_out=dicom_out,
        progress=progress,
        outputs=outputs,
        organs=organs,
        statistics=statistics,
    )
    typer.echo(f"predicted {len(summary.done)} of {len(scans)} scan(s) -> {out}")
    if statistics and summary.done:
        typer.echo(f"organ statistics of the run -> {out / 'statistics.csv'}")
    if predictor.amp_choice is not None:
        typer.echo(f"precision: {predictor.amp_choice.describe()}")
    exit_if_failed(summary.failed, "scan(s)")


def _predict_dicomweb(checkpoint, url, study, series, out, device, amp, timeout, **options) -> None:
    from organdetr.formats.dicomweb import connect, find_series
    from organdetr.inference.dicomweb import predict_dicomweb
    from organdetr.inference.predictor import Predictor

    client = connect(url, timeout)
    remote = find_series(client, url, study, series)  # fail fast, before loading the model
    predictor = Predictor.from_checkpoint(checkpoint, device, amp)
    typer.echo(
        f"{url}: study {study}, CT series {remote.series_uid} ({remote.instances or '?'} instances"
        f"{', ' + remote.description if remote.description else ''}), device {predictor.device}"
    )
    result = predict_dicomweb(predictor, client, remote, out, **options)
    if result.stored:
        typer.echo(f"stored {len(result.stored)} DICOM instance(s) into study {study} -> {url}")
    exit_if_failed(result.summary.failed, "series")
