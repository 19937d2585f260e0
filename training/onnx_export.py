"""Export a trained step net to a servable model folder, shared by every task: graphs, parity, install.

Nothing is written unless the graph provably computes what the PyTorch net computes:

1. the net (eval mode) is exported to ONNX with dynamic axes, into a staging folder beside the
   destination (:func:`export_step_graph`, :func:`staged_folder`);
2. parity: ONNX Runtime against PyTorch, one step per call with the state carried, and again in
   chunks for a batch of streams; any |difference| above the tolerance refuses the export
   (:func:`check_parity`, :class:`ParityError`);
3. the score is computed from the graph (``training.onnx_replay``), not from PyTorch;
4. the staged folder is loaded back through ``service.contract`` (signature check and golden
   replay, as the server does at load) and only then moved into place; the installed folder
   is checked once more (:func:`self_check`).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import (
    Arrays,
    ContractError,
    GoldenTrace,
    Manifest,
    check_graph,
    check_init_graph,
    holds_something_else,
    replay_golden,
)
from training.nets.step import StepNet
from training.onnx_replay import StepFn, open_session, ort_step_fn, run_sequence
from training.scores import write_scores

OPSET = 17
GRAPH_FILE = "step.onnx"
#: Max |ONNX - PyTorch| over every output of every step; fp32 kernels differ by ~1e-6.
PARITY_TOLERANCE = 1e-4
#: Steps per call in the chunked parity run; it does not divide a language model's 1,000 parity
#: steps, so the last chunk is shorter and a second time length is exercised.
PARITY_CHUNK = 64
GOLDEN_TOLERANCE = 1e-4
EXPORTERS = ("auto", "torchscript", "dynamo")


class ParityError(RuntimeError):
    """The ONNX graph and the PyTorch net disagree: the export is refused."""


@dataclass(frozen=True)
class ParityReport:
    """Largest |ONNX - PyTorch| output difference of each parity run."""

    steps: int
    step_by_step_max_diff: float
    chunked_max_diff: float

    @property
    def max_diff(self) -> float:
        return max(self.step_by_step_max_diff, self.chunked_max_diff)


def torch_step_fn(net: StepNet, manifest: Manifest) -> StepFn:
    """Wrap a PyTorch step net as a step function with the graph's input and output names."""
    in_names = [t.name for t in manifest.inputs] + [s.input for s in manifest.state]
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]

    @torch.no_grad()
    def step(feed: Arrays) -> Arrays:
        results = net(*(torch.from_numpy(np.asarray(feed[name])) for name in in_names))
        return {name: value.numpy() for name, value in zip(out_names, results, strict=True)}

    return step


def _example_inputs(manifest: Manifest, batch: int = 2, time: int = 3) -> tuple[torch.Tensor, ...]:
    """Zeros shaped like one call's inputs; batch and time > 1 so neither is traced as a constant."""
    per_step = [torch.zeros((batch, time, *t.shape), dtype=getattr(torch, t.dtype)) for t in manifest.inputs]
    state = [torch.zeros((batch, *s.shape), dtype=getattr(torch, s.dtype)) for s in manifest.state]
    return (*per_step, *state)


def _dynamic_axes(manifest: Manifest, *, time_axis: bool = True) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in (*manifest.inputs, *manifest.outputs):
        axes[t.name] = {0: "batch", 1: "time"} if time_axis else {0: "batch"}
    for s in manifest.state:
        axes[s.input] = axes[s.output] = {0: "batch"}
    return axes


def export_step_graph(
    net: torch.nn.Module, manifest: Manifest, path: Path, *, exporter: str = "auto", time_axis: bool = True
) -> str:
    """Write the step graph of ``net`` with the manifest's names; returns the exporter used.

    ``time_axis=False`` fixes the time axis at 1, for a net that runs exactly one step per call
    (an associative memory's sweep, whose asynchronous unit order the exporter unrolls).

    The TorchScript exporter (``dynamo=False``) turns ``nn.LSTM`` into ONNX ``LSTM`` nodes,
    which ONNX Runtime runs as one fused kernel; ``auto`` uses it and falls back to the
    dynamo exporter only where it is unavailable. Either way the batch and time axes must
    come out symbolic, which is checked here: in torch 2.13 the dynamo exporter unrolls
    ``nn.LSTM`` over the example's time steps and fixes the time axis, so that export is
    refused with a ContractError rather than shipped.
    """
    net.eval()
    example = _example_inputs(manifest, time=3 if time_axis else 1)
    in_names = [t.name for t in manifest.inputs] + [s.input for s in manifest.state]
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    axes = _dynamic_axes(manifest, time_axis=time_axis)
    used = export_named(net, example, path, in_names, out_names, axes, exporter=exporter)
    require_dynamic_axes(path, axes)
    return used


def export_named(
    net: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    in_names: list[str],
    out_names: list[str],
    axes: Mapping[str, Mapping[int, str]],
    *,
    exporter: str = "auto",
) -> str:
    """``torch.onnx.export`` with these names and dynamic axes (see ``export_step_graph``); the exporter used."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    used = exporter
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                # The legacy exporter warns that it is legacy, and that an LSTM exported with a
                # batch > 1 needs its initial state as an input: it is an input here.
                warnings.simplefilter("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
                # nn.LSTM checks its input sizes in Python; the tracer warns that the checks
                # become constants, which they are (the sizes are fixed by the weights).
                warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
                torch.onnx.export(
                    net,
                    example,
                    str(path),
                    input_names=in_names,
                    output_names=out_names,
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=False,
                )
            used = "torchscript"
        except (ImportError, NotImplementedError, TypeError):
            if exporter == "torchscript":
                raise
            used = "dynamo"
    if used == "dynamo":
        dims = {label: torch.export.Dim(label) for label in ("batch", "time")}
        shapes = tuple({axis: dims[label] for axis, label in axes[name].items()} for name in in_names)
        torch.onnx.export(
            net,
            example,
            str(path),
            input_names=in_names,
            output_names=out_names,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    return used


def require_dynamic_axes(path: Path, axes: Mapping[str, Mapping[int, str]]) -> None:
    """Refuse a graph whose batch or time axis came out as a fixed number."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis in axes.get(value.name, {}):
            if dims[axis].HasField("dim_value"):
                raise ContractError(
                    f"{path.name}: axis {axis} of {value.name!r} is fixed at {dims[axis].dim_value}, not dynamic"
                )


def check_parity(
    net: StepNet,
    session: Any,
    manifest: Manifest,
    streams: Mapping[str, np.ndarray],
    *,
    chunk: int = PARITY_CHUNK,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on ``streams`` (each input ``[batch, time, ...]``).

    * step by step: stream 0 alone, one step per call, state carried, ONNX vs PyTorch;
    * chunked: all streams as one batch, ``chunk`` steps per call, ONNX vs PyTorch run the
      same way, and ONNX's stream 0 vs the step-by-step PyTorch reference.

    Raises :class:`ParityError` naming the run and the first step beyond ``tolerance``.
    """
    net.eval()
    reference, graph = torch_step_fn(net, manifest), ort_step_fn(session)
    first = {name: arr[:1] for name, arr in streams.items()}
    torch_steps = run_sequence(reference, manifest, first, chunk=1)
    onnx_steps = run_sequence(graph, manifest, first, chunk=1)
    torch_chunks = run_sequence(reference, manifest, streams, chunk=chunk)
    onnx_chunks = run_sequence(graph, manifest, streams, chunk=chunk)
    step_diff = _max_diff("one step per call", onnx_steps, torch_steps, tolerance)
    chunk_diff = max(
        _max_diff(
            f"batch of {len(next(iter(streams.values())))} in chunks of {chunk}", onnx_chunks, torch_chunks, tolerance
        ),
        _max_diff(
            f"chunks of {chunk} vs one step per call",
            {k: v[:1] for k, v in onnx_chunks.items()},
            torch_steps,
            tolerance,
        ),
    )
    steps = next(iter(streams.values())).shape[1]
    return ParityReport(steps=steps, step_by_step_max_diff=step_diff, chunked_max_diff=chunk_diff)


def _max_diff(run: str, got: Arrays, want: Arrays, tolerance: float) -> float:
    worst = 0.0
    for name, expected in want.items():
        diff = np.abs(got[name].astype(np.float64) - expected.astype(np.float64))
        per_step = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2))
        bad = np.flatnonzero(~(per_step <= tolerance))  # catches NaN too
        if bad.size:
            raise ParityError(
                f"parity failed ({run}): output {name!r} differs from PyTorch by {per_step[bad[0]]:.3g} "
                f"at step {bad[0]} (tolerance {tolerance:g}); the export is refused"
            )
        worst = max(worst, float(per_step.max()))
    return worst


def record_golden(net: StepNet, manifest: Manifest, inputs: Mapping[str, list[Any]]) -> GoldenTrace:
    """Run ``inputs`` (``T`` steps each) through PyTorch one step per call from the initial state."""
    batched = {
        t.name: np.asarray(inputs[t.name], dtype=t.np_dtype).reshape(1, len(inputs[t.name]), *t.shape)
        for t in manifest.inputs
    }
    outputs = run_sequence(torch_step_fn(net, manifest), manifest, batched, chunk=1)
    return GoldenTrace(
        inputs={name: list(values) for name, values in inputs.items()},
        outputs={name: value[0].tolist() for name, value in outputs.items()},
        tolerance=GOLDEN_TOLERANCE,
    )


def self_check(folder: Path) -> float:
    """Load a model folder as the server does: manifest, signature(s), golden replay (from the init
    graph's answer when the model has one). Returns the golden error."""
    manifest = Manifest.load(folder)
    session = open_session(Path(folder) / manifest.step_graph)
    check_graph(manifest, session)
    if manifest.init is None:
        return replay_golden(manifest, session)
    init = open_session(Path(folder) / manifest.init.graph)
    check_init_graph(manifest, init)
    return replay_golden(manifest, session, init)


def _install(staging: Path, out: Path) -> None:
    """Move the checked staging folder to ``out``, replacing an earlier model folder only."""
    if holds_something_else(out):
        raise FileExistsError(f"{out} exists and is not a model folder; refusing to replace it")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def record_scores(folder: Path, report: Mapping[str, Any]) -> dict[str, float]:
    """Write an evaluation report's numbers into the installed model's manifest as its scores and
    check the folder again; the scores describe the graph as installed, so they come after it."""
    scores = write_scores(folder, report)
    self_check(folder)
    return scores


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out`` to write a model into; installed as ``out`` only if the block succeeds.

    The block writes the graph and the manifest; on leaving it the staged folder is loaded
    back as the server would (:func:`self_check`), moved into place and checked once more.
    Any failure removes the staging folder and leaves ``out`` as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        self_check(staging)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    self_check(out)
