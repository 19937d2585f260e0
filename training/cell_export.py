"""Export a stack of the zoo's cells (``training.nets.cell_step.CellStepNet``) as a one-step graph.

The graph is one time step, ``(x, state...) -> (y, state_out...)``: input ``x`` and output ``y``
``[batch, 1, size]`` (named by the caller: ``frame`` and ``logits`` for a classifier) and one
zero-initialised state tensor per cell state (``h0 -> h0_out``, ...). The time axis is fixed at
1 (``decoding.steps_per_call = 1``): the zoo's layers loop over time in Python, which the exporter
would unroll over the example's steps (docs/zoo.md). Nothing is installed unless ONNX Runtime
computes what PyTorch computes, one step per call with the state carried, for one stream and for
a batch (``training.onnx_export.check_parity``), and the folder loads back as the server loads it.

The tasks build on :func:`cell_manifest` and :func:`export_cell_model` (:func:`export_one_step`
for any other one-step net, such as a whole-sequence classifier).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec, check_graph
from training.nets.cell_step import CellStepNet
from training.nets.step import StepNet
from training.onnx_export import (
    GRAPH_FILE,
    OPSET,
    ParityReport,
    check_parity,
    export_step_graph,
    record_golden,
    staged_folder,
)
from training.onnx_replay import open_session

#: Steps of the golden trace recorded into the manifest (replayed by the server at load).
GOLDEN_STEPS = 16
#: Max |ONNX - PyTorch| of any output at any step: float32 kernels differ by ~1e-7 per step,
#: and the carried state lets that grow slowly over a few hundred steps.
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CellExportReport:
    folder: Path
    manifest: Manifest
    parity: ParityReport


def cell_state_specs(net: CellStepNet) -> tuple[StateSpec, ...]:
    """One state tensor per cell tensor of every layer (``h0``, ``c0``, ``h1``...), zeros at the start."""
    return tuple(
        StateSpec(
            state_name,
            f"{state_name}_out",
            "float32",
            (size,),
            "zeros",
            f"cell state {state_name} (layer {state_name[1:]})",
        )
        for state_name, size in zip(net.state_names, net.state_sizes, strict=True)
    )


def cell_manifest(
    net: CellStepNet,
    *,
    name: str,
    task: str,
    description: str,
    input_name: str = "x",
    input_doc: str = "the input vector of this time step",
    output_name: str = "y",
    output_doc: str = "the readout of this time step",
    decoding: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    scores: Mapping[str, float] | None = None,
) -> Manifest:
    """The manifest of ``net``'s one-step graph (golden trace empty until :func:`export_cell_model`)."""
    return Manifest(
        name=name,
        version="1",
        task=task,
        description=description,
        step_graph=GRAPH_FILE,
        inputs=(TensorSpec(input_name, "float32", (net.input_size,), input_doc),),
        outputs=(TensorSpec(output_name, "float32", (net.output_size,), output_doc),),
        state=cell_state_specs(net),
        golden=GoldenTrace({}, {}),
        decoding={"steps_per_call": 1, **dict(decoding or {})},
        training=dict(training or {}),
        scores=dict(scores or {}),
    )


def export_one_step(
    net: StepNet,
    manifest: Manifest,
    out: Path,
    *,
    parity_inputs: Mapping[str, np.ndarray],
    golden_steps: int = GOLDEN_STEPS,
    tolerance: float = PARITY_TOLERANCE,
) -> CellExportReport:
    """Write any one-step net (time axis 1) to the model folder ``out`` after its parity checks.

    ``parity_inputs``: each manifest input as ``[streams >= 2, steps, *shape]``, run one step per
    call from the initial state; the first ``golden_steps`` steps of stream 0 become the golden
    trace. Raises ``training.onnx_export.ParityError`` when ONNX Runtime and PyTorch differ by more
    than ``tolerance``; nothing is written then.
    """
    net.eval()
    golden = {name: np.asarray(parity_inputs[name])[0, :golden_steps].tolist() for name in parity_inputs}
    manifest = replace(manifest, golden=record_golden(net, manifest, golden))
    with staged_folder(out) as staging:
        used = export_step_graph(net, manifest, staging / GRAPH_FILE, exporter="torchscript", time_axis=False)
        session = open_session(staging / GRAPH_FILE)
        check_graph(manifest, session)
        parity = check_parity(net, session, manifest, parity_inputs, chunk=1, tolerance=tolerance)
        manifest = replace(
            manifest,
            training=manifest.training
            | {"exporter": used, "opset": OPSET, "parity_max_abs_diff": parity.max_diff, "parity_steps": parity.steps},
        )
        manifest.save(staging)
    return CellExportReport(folder=Path(out), manifest=manifest, parity=parity)


def export_cell_model(
    net: CellStepNet,
    manifest: Manifest,
    out: Path,
    *,
    parity_inputs: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> CellExportReport:
    """Write ``net`` (with a :func:`cell_manifest`) to the model folder ``out``; nothing is written unless parity and the self-check pass.

    ``parity_inputs`` (``[streams >= 2, steps, input_size]`` float32) are run one step per call
    from the zero state, one stream alone and all together; the first :data:`GOLDEN_STEPS` steps
    of stream 0 become the golden trace. Raises ``training.onnx_export.ParityError`` when ONNX
    Runtime and PyTorch differ by more than ``tolerance``.
    """
    inputs = np.asarray(parity_inputs, dtype=np.float32)
    if inputs.ndim != 3 or inputs.shape[0] < 2 or inputs.shape[2] != net.input_size:
        raise ValueError(f"parity_inputs must be [streams >= 2, steps, {net.input_size}], got {list(inputs.shape)}")
    return export_one_step(net, manifest, out, parity_inputs={manifest.inputs[0].name: inputs}, tolerance=tolerance)
