"""`organdetr export CHECKPOINT model.onnx`: the trained network as ONNX (runs in ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT", help="Run folder (uses best/, else last/) or checkpoint folder."
        ),
    ],
    out: Annotated[Path, typer.Argument(metavar="OUT.onnx", help="ONNX file to write, e.g. model.onnx.")],
    opset: Annotated[
        int, typer.Option(help="ONNX opset version (14 or newer; >= 20 for the deformable decoder).")
    ] = 20,
    check: Annotated[
        bool, typer.Option(help="Compare ONNX Runtime boxes with PyTorch on a random input.")
    ] = True,
) -> None:
    """Export a trained detector to ONNX: images [B,1,I,J,K] -> pred_logits, pred_boxes (raw DETR outputs).

    The grid size is the training grid (plans.json, stored in the ONNX metadata as "organdetr.plans");
    the batch axis is dynamic. Decode the outputs with organdetr.models.organdetr.postprocess.postprocess.
    """
    import numpy as np
    import torch

    from organdetr.inference.export import (
        check_opset,
        export_network,
        load_exportable,
        load_session,
        onnx_detect,
    )
    from organdetr.runtime.outputs import check_output_file

    check_opset(opset)
    check_output_file(out, "ONNX file")
    detector, plans = load_exportable(checkpoint)
    input_size = tuple(int(s) for s in plans["input_size"])
    export_network(detector.network, input_size, out, plans=plans, opset=opset)
    typer.echo(f"wrote {out} (input images [B, 1, {', '.join(map(str, input_size))}])")
    if check:
        images = np.random.default_rng(0).random((1, 1, *input_size), dtype=np.float32)
        ours = onnx_detect(load_session(out), images)[0]
        with torch.no_grad():
            ref = detector.detect(torch.from_numpy(images))[0]
        diff = float((ours["boxes"] - ref["boxes"]).abs().max()) if len(ref["boxes"]) else 0.0
        same = bool(torch.equal(ours["labels"], ref["labels"]))
        typer.echo(f"ONNX Runtime vs PyTorch: max box difference {diff:.2e} voxel, same class order: {same}")
        if diff > 1e-3 or not same:
            typer.echo("warning: ONNX Runtime output differs from PyTorch beyond 1e-3 voxel", err=True)
            raise typer.Exit(code=1)
