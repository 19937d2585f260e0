"""Export a trained step net to a servable model folder: ``step.onnx`` + ``manifest.json``.

Nothing is written unless the graph provably computes what the PyTorch net computes:

1. the net (eval mode) is exported to ONNX with dynamic ``batch`` and ``time`` axes, into a
   staging folder beside the destination;
2. parity: ONNX Runtime against PyTorch, one step per call over >= 1,000 held-out steps with
   the state carried, and again in chunks of several steps for a batch of streams; any
   |difference| above the tolerance refuses the export (:class:`ParityError`);
3. the score is computed from the graph (``training.evaluate``), not from PyTorch;
4. the staged folder is loaded back through ``service.contract`` (signature check and golden
   replay, as the server does at load) and only then moved into place; the installed folder
   is checked once more.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import (
    MANIFEST_FILE,
    ContractError,
    GoldenTrace,
    Manifest,
    StateSpec,
    TensorSpec,
    check_graph,
    check_init_graph,
    replay_golden,
)
from service.datasets.shakespeare import TRAIN_DATA_DESCRIPTION, Vocabulary, load_shakespeare
from training.checkpoints import LOSS_CURVE_FILE, load_weights
from training.evaluate import Arrays, StepFn, open_session, ort_step_fn, run_sequence, val_loss_from_onnx
from training.nets import CharLSTM, StepNet
from training.recipes import describe_recipe_path

OPSET = 17
GRAPH_FILE = "step.onnx"
#: Max |ONNX - PyTorch| over every output of every step; fp32 kernels differ by ~1e-6.
PARITY_TOLERANCE = 1e-4
PARITY_STEPS = 1000
#: Steps per call in the chunked parity run; it does not divide PARITY_STEPS, so the last
#: chunk is shorter and a second time length is exercised.
PARITY_CHUNK = 64
PARITY_BATCH = 3
GOLDEN_TEXT = "ROMEO:\nBut soft,"  # 16 characters fed one per call from the zero state
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


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    manifest: Manifest
    parity: ParityReport
    exporter: str
    val_loss_nats_per_char: float


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
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    net.eval()
    example = _example_inputs(manifest, time=3 if time_axis else 1)
    in_names = [t.name for t in manifest.inputs] + [s.input for s in manifest.state]
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    axes = _dynamic_axes(manifest, time_axis=time_axis)
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
    _require_dynamic_axes(path, axes)
    return used


def _require_dynamic_axes(path: Path, axes: Mapping[str, Mapping[int, str]]) -> None:
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
    if out.exists():
        if any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
            raise FileExistsError(f"{out} exists and is not a model folder; refusing to replace it")
        shutil.rmtree(out)
    staging.rename(out)


def record_scores(folder: Path, report: Mapping[str, Any]) -> dict[str, float]:
    """Write an evaluation report's numbers into the installed model's manifest as its scores and
    check the folder again; the scores describe the graph as installed, so they come after it."""
    scores = {k: float(v) for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    replace(Manifest.load(folder), scores=scores).save(folder)
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


def char_lm_manifest(net: CharLSTM, vocab: Vocabulary, *, training: Mapping[str, Any], golden: GoldenTrace) -> Manifest:
    """The manifest of a character language model (without scores)."""
    state_shape = (net.layers, net.hidden)
    return Manifest(
        name="char_lm",
        version="1",
        task="language_model",
        description=(
            f"Character-level LSTM language model ({net.layers} x {net.hidden}) trained on Tiny Shakespeare; "
            "one character in, the next character's logits out."
        ),
        step_graph=GRAPH_FILE,
        inputs=(TensorSpec("char_id", "int64", (), "id of the current character: its index in decoding.vocabulary"),),
        outputs=(
            TensorSpec("logits", "float32", (len(vocab),), "unnormalised log-probabilities of the next character"),
        ),
        state=(
            StateSpec(
                "h", "h_out", "float32", state_shape, "zeros", "LSTM hidden state h of each layer, [layers, hidden]"
            ),
            StateSpec(
                "c", "c_out", "float32", state_shape, "zeros", "LSTM cell state c of each layer, [layers, hidden]"
            ),
        ),
        golden=golden,
        decoding={"vocabulary": list(vocab.chars), "tokenizer": "char"},
        training=dict(training),
    )


def export_char_lm(
    checkpoint: Path,
    out: Path,
    *,
    parity_steps: int = PARITY_STEPS,
    loss_curve: Path | None = None,
    exporter: str = "auto",
) -> ExportReport:
    """Export a char-LM checkpoint (weights or resumable) to the model folder ``out``.

    ``loss_curve`` defaults to the ``loss_curve.png`` beside the checkpoint and is copied into
    the folder when it exists. Raises :class:`ParityError` (nothing written) if ONNX Runtime
    and PyTorch disagree.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    weights = load_weights(checkpoint)
    corpus = load_shakespeare()
    vocab = Vocabulary(weights.metadata["vocabulary"])
    if vocab != corpus.vocab:
        raise ValueError(f"{checkpoint}: its vocabulary is not the Tiny Shakespeare vocabulary")
    net = CharLSTM(**weights.metadata["model"])
    net.load_state_dict(weights.model)
    net.eval()

    facts = weights.training
    recipe_file = str(weights.metadata.get("recipe_file", ""))
    training = {
        "recipe": weights.metadata.get("recipe", {}),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
        "data": TRAIN_DATA_DESCRIPTION,
        "steps": facts.get("steps"),
        "time_s": facts.get("time_s"),
        "device": facts.get("device"),
        "torch": facts.get("torch"),
        "final_train_loss": facts.get("final_train_loss"),
        "checkpoint": checkpoint.name,
    }
    manifest = char_lm_manifest(net, vocab, training=training, golden=GoldenTrace({}, {}))
    manifest = replace(manifest, golden=record_golden(net, manifest, {"char_id": vocab.encode(GOLDEN_TEXT).tolist()}))

    if parity_steps < PARITY_STEPS:
        raise ValueError(f"parity needs >= {PARITY_STEPS} steps, got {parity_steps}")
    val = corpus.val_ids
    starts = [0, len(val) // 3, 2 * len(val) // 3]  # three different passages of held-out text
    streams = {"char_id": np.stack([val[s : s + parity_steps] for s in starts[:PARITY_BATCH]])}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        used = export_step_graph(net, manifest, staging / GRAPH_FILE, exporter=exporter)
        session = open_session(staging / GRAPH_FILE)
        check_graph(manifest, session)
        parity = check_parity(net, session, manifest, streams)
        manifest = replace(
            manifest,
            training=manifest.training | {"exporter": used, "opset": OPSET, "parity_max_abs_diff": parity.max_diff},
        )
        manifest.save(staging)
        loss = val_loss_from_onnx(staging)
        manifest = replace(manifest, scores={"val_loss_nats_per_char": loss})
        manifest.save(staging)
        curve = loss_curve if loss_curve is not None else checkpoint.parent / LOSS_CURVE_FILE
        if curve.exists():
            shutil.copyfile(curve, staging / LOSS_CURVE_FILE)
        self_check(staging)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    self_check(out)
    return ExportReport(folder=out, manifest=manifest, parity=parity, exporter=used, val_loss_nats_per_char=loss)
