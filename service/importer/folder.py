"""``import_onnx``: a foreign graph and its spec in, a proved model folder out (nothing written on failure).

The order is the proof's: place every tensor (``signature``), run the original graph for the
golden trace (``proof.OriginalGraph``), build the wrapper (``wrapper``), check it as the server
will (``service.contract``: signature and golden replay) and for batch invariance, and only then
write ``step.onnx`` and ``manifest.json`` into a staging folder that replaces ``out`` at the end.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from service.contract import (
    ContractError,
    GoldenTrace,
    Manifest,
    StateSpec,
    TensorSpec,
    check_graph,
    check_model_name,
    holds_something_else,
    replay_golden,
)
from service.importer.proof import OriginalGraph, check_batch_invariance, open_graph
from service.importer.signature import ImportPlan, plan_import
from service.importer.spec import ImportRefused, ImportSpec
from service.importer.wrapper import build_wrapper, carry_state_names

STEP_GRAPH = "step.onnx"
DEFAULT_TASK = "sequence_model"


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote and how closely it was proved."""

    folder: Path
    manifest: Manifest
    golden_error: float
    batch_error: float


def _manifest(
    plan: ImportPlan, golden: GoldenTrace, shapes: dict[str, tuple[int, ...]], name: str, task: str, source: str,
    spec: ImportSpec, sha256: str,
) -> Manifest:  # fmt: skip
    steps = "a chunk of steps per call" if plan.time_axis is not None else "one step per call"
    inputs = tuple(TensorSpec(p.name, p.dtype_name, p.shape, f"graph input {p.name!r} ({steps})") for p in plan.inputs)
    outputs = tuple(TensorSpec(t.name, t.dtype.name, shapes[t.name], f"graph output {t.name!r}") for t in plan.outputs)
    state = [
        StateSpec(
            rule.input,
            rule.output,
            placed.dtype_name,
            placed.shape,
            doc=f"graph state, batch axis {rule.batch_axis} in the original",
        )
        for rule, placed, _ in plan.state
    ]
    if plan.carried is not None:
        carried = plan.carried
        state_in, state_out = carry_state_names(carried.name)
        shape = (*carried.shape[:-1], plan.carry_keep)
        state.append(
            StateSpec(
                state_in,
                state_out,
                carried.dtype_name,
                shape,
                doc=f"the last {plan.carry_keep} values of {carried.name!r}'s previous step",
            )
        )
    return Manifest(
        name=check_model_name(name),
        version="1",
        task=task,
        description=f"imported from {source} by statestream import",
        step_graph=STEP_GRAPH,
        inputs=inputs,
        outputs=outputs,
        state=tuple(state),
        golden=golden,
        training={"imported_from": source, "sha256": sha256, "spec": spec.to_dict()},
    )


def import_onnx(
    graph: Path, spec: ImportSpec, out: Path, *, name: str | None = None, task: str = DEFAULT_TASK
) -> ImportReport:
    """Wraps the ONNX graph at ``graph`` as ``spec`` says and writes the model folder ``out``.

    ``name`` defaults to ``out``'s folder name; ``task`` names the driver that will serve it
    (``sequence_model``: raw tensors in and out). Raises ImportRefused (one line) naming the check
    that failed; ``out`` is then left as it was.
    """
    graph, out = Path(graph), Path(out)
    try:
        data = graph.read_bytes()
        model = onnx.load_from_string(data)
    except OSError as exc:
        raise ImportRefused(f"{graph}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ImportRefused(f"{graph}: not an ONNX model ({' '.join(str(exc).split())[:200]})") from None
    if not data:  # protobuf reads no bytes as an empty model, refused later as one lacking every input
        raise ImportRefused(f"{graph}: the file is empty, not an ONNX model")
    plan = plan_import(model, spec)
    reference = OriginalGraph(open_graph(data, "original graph"), plan)
    golden, shapes = reference.record_golden()
    wrapped = build_wrapper(model, plan, shapes).SerializeToString()
    manifest = _manifest(
        plan, golden, shapes, name or out.name, task, graph.name, spec, hashlib.sha256(data).hexdigest()
    )
    session = open_graph(wrapped, "wrapped graph")
    check_graph(manifest, session)
    _check_task_fit(manifest)
    golden_error = replay_golden(manifest, session)
    batch_error = check_batch_invariance(session, manifest, reference)
    _install(out, wrapped, manifest)
    return ImportReport(out, manifest, golden_error, batch_error)


def _check_task_fit(manifest: Manifest) -> None:
    """Refuses a graph its task's driver cannot serve (the loader's ``task_fit`` rule), before anything
    is written: a folder that 'serve' and 'check' would refuse is no import."""
    from service.tasks import driver_class  # the drivers, only once a graph has been wrapped

    try:
        driver_class(manifest.task).check_manifest(manifest)
    except ContractError as exc:
        raise ImportRefused(f"task {manifest.task!r} cannot serve this graph: {exc}") from None


def _install(out: Path, wrapped: bytes, manifest: Manifest) -> None:
    """Writes the folder beside ``out`` and moves it into place; never replaces a folder that is not a model's."""
    if holds_something_else(out):
        raise ImportRefused(f"--out {out} exists and is not a model folder; refusing to replace it")
    staging = out.parent / f".{out.name}.importing"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:  # a parent that is a file, or a place no folder can be made
        raise ImportRefused(f"--out {out}: cannot make its folder ({exc.strerror or exc})") from None
    try:
        (staging / STEP_GRAPH).write_bytes(wrapped)
        manifest.save(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
