"""The wrapper step graph: the foreign graph inside the contract's layout, built with ``onnx``'s own helpers.

A "before" graph (``onnx.helper``) turns the contract's tensors into what the original graph
takes: per-step inputs lose the time axis the contract adds (a graph that takes one step per
call) and are transposed to the graph's layout, state goes from batch-first to its own batch
axis, constants become ``Constant`` nodes, and the carried input is the carried tail
concatenated with the step (its last ``keep`` values become the next carry, one more state
row). An "after" graph moves outputs and new state back. ``onnx.compose.merge_models`` joins
the three; the original's names are prefixed (``onnx.compose.add_prefix``), so no name clashes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from service.importer.signature import GraphTensor, ImportPlan, Placed
from service.importer.spec import ImportRefused

ORIGINAL = "original/"
WRAPPER = "statestream/"
#: Squeeze and Unsqueeze take their axes as an input from opset 13 on, as an attribute before.
AXES_AS_INPUT_OPSET = 13
#: Slice takes starts/ends/axes as inputs from opset 10 on: the oldest graph the importer wraps.
OLDEST_OPSET = 10


def carry_state_names(input_name: str) -> tuple[str, str]:
    """The state input and output that keep the carried tail of ``input_name``."""
    return f"{input_name}.carried", f"{input_name}.carried_next"


class _Builder:
    """Nodes, inputs and outputs of one of the small graphs around the original."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def axes_op(self, op: str, source: str, target: str, axis: int) -> None:
        if self.opset >= AXES_AS_INPUT_OPSET:
            axes = self.constant(f"{target}/axes", np.array([axis], dtype=np.int64))
            self.nodes.append(helper.make_node(op, [source, axes], [target]))
        else:
            self.nodes.append(helper.make_node(op, [source], [target], axes=[axis]))

    def transpose(self, source: str, target: str, perm: list[int]) -> None:
        if perm == sorted(perm):
            self.nodes.append(helper.make_node("Identity", [source], [target]))
        else:
            self.nodes.append(helper.make_node("Transpose", [source], [target], perm=perm))

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def model(self, like: onnx.ModelProto, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        return helper.make_model(graph, opset_imports=list(like.opset_import), ir_version=like.ir_version)


def _value(name: str, tensor: GraphTensor, dims: list[Any] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, tensor.elem_type, dims)


def _step_dims(placed: Placed, shape: tuple[int, ...], time_axis: int | None) -> list[Any]:
    return ["batch", "time" if time_axis is not None else 1, *shape]


def _before(plan: ImportPlan, opset: int) -> _Builder:
    before = _Builder(opset)
    with_time = plan.time_axis is not None
    for placed in plan.inputs:
        before.inputs.append(_value(placed.name, placed.tensor, _step_dims(placed, placed.shape, plan.time_axis)))
        step = placed.name
        if not with_time:
            step = f"{WRAPPER}{placed.name}/step"
            before.axes_op("Squeeze", placed.name, step, 1)
        if placed is plan.carried:
            step = _carry(before, placed, step, plan.carry_keep)
        before.transpose(step, f"{WRAPPER}to/{placed.name}", placed.to_graph_perm(with_time))
        before.outputs.append(_value(f"{WRAPPER}to/{placed.name}", placed.tensor, None))
    for rule, placed, _ in plan.state:
        before.inputs.append(_value(rule.input, placed.tensor, ["batch", *placed.shape]))
        before.transpose(rule.input, f"{WRAPPER}to/{rule.input}", placed.to_graph_perm(False))
        before.outputs.append(_value(f"{WRAPPER}to/{rule.input}", placed.tensor, None))
    for name, value in plan.constants.items():
        before.nodes.append(
            helper.make_node("Constant", [], [f"{WRAPPER}to/{name}"], value=numpy_helper.from_array(value))
        )
        before.outputs.append(helper.make_tensor_value_info(f"{WRAPPER}to/{name}", plan.constant_types[name], None))
    return before


def _carry(before: _Builder, placed: Placed, step: str, keep: int) -> str:
    """Prepends the carried tail to the step (last axis) and keeps the new tail; returns the joined tensor."""
    state_in, state_out = carry_state_names(placed.name)
    before.inputs.append(_value(state_in, placed.tensor, ["batch", *placed.shape[:-1], keep]))
    before.outputs.append(_value(state_out, placed.tensor, ["batch", *placed.shape[:-1], keep]))
    joined = f"{WRAPPER}{placed.name}/joined"
    before.nodes.append(helper.make_node("Concat", [state_in, step], [joined], axis=-1))
    starts = before.constant(f"{WRAPPER}{placed.name}/starts", np.array([-keep], dtype=np.int64))
    ends = before.constant(f"{WRAPPER}{placed.name}/ends", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    axes = before.constant(f"{WRAPPER}{placed.name}/axes", np.array([-1], dtype=np.int64))
    before.nodes.append(helper.make_node("Slice", [joined, starts, ends, axes], [state_out]))
    return joined


def _after(plan: ImportPlan, shapes: dict[str, tuple[int, ...]], opset: int) -> _Builder:
    after = _Builder(opset)
    with_time = plan.time_axis is not None
    for tensor in plan.outputs:
        placed = plan.place_output(tensor, shapes[tensor.name])
        after.inputs.append(_value(f"{WRAPPER}from/{tensor.name}", tensor, None))
        after.outputs.append(_value(tensor.name, tensor, _step_dims(placed, placed.shape, plan.time_axis)))
        moved = tensor.name if with_time else f"{WRAPPER}{tensor.name}/step"
        after.transpose(f"{WRAPPER}from/{tensor.name}", moved, placed.contract_order(with_time))
        if not with_time:
            after.axes_op("Unsqueeze", moved, tensor.name, 1)
    for rule, placed, target in plan.state:
        after.inputs.append(_value(f"{WRAPPER}from/{rule.output}", target, None))
        after.outputs.append(_value(rule.output, target, ["batch", *placed.shape]))
        after.transpose(f"{WRAPPER}from/{rule.output}", rule.output, placed.contract_order(False))
    return after


def default_opset(model: onnx.ModelProto) -> int:
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if not versions:
        raise ImportRefused("the graph imports no version of the default ONNX operator set")
    return max(versions)


def build_wrapper(model: onnx.ModelProto, plan: ImportPlan, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The contract's step graph around ``model``; ``shapes`` gives each per-step output's shape."""
    opset = default_opset(model)
    if opset < OLDEST_OPSET:
        raise ImportRefused(f"the graph uses opset {opset}; the importer wraps opset {OLDEST_OPSET} or newer")
    original = compose.add_prefix(model, ORIGINAL)
    before = _before(plan, opset).model(model, "before")
    fed = [p.name for p in plan.inputs] + [r.input for r, _, _ in plan.state] + list(plan.constants)
    joined = compose.merge_models(before, original, io_map=[(f"{WRAPPER}to/{n}", ORIGINAL + n) for n in fed])
    after = _after(plan, shapes, opset).model(model, "after")
    made = [t.name for t in plan.outputs] + [target.name for _, _, target in plan.state]
    wrapped = compose.merge_models(joined, after, io_map=[(ORIGINAL + n, f"{WRAPPER}from/{n}") for n in made])
    wrapped.graph.name = "statestream_step"
    wrapped.producer_name = "statestream import"
    onnx.checker.check_model(wrapped)
    return wrapped
