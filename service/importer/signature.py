"""What the spec says, checked against the graph: every tensor placed, every shape and dtype known.

The result, an ``ImportPlan``, says for each graph input and output whether it is a per-step
tensor, a state, a constant or the carried input, where its batch (and time) axis is, and its
per-session shape in the contract's order (batch first, then time, then the others in order).
A spec that names what the graph lacks, a state whose output differs from its input, a carry
longer than its input, a constant of the wrong dtype, or a batch axis the graph fixes is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.contract import DTYPES
from service.importer.spec import ImportRefused, ImportSpec, StateRule

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

#: A graph dimension: a fixed size, or the name of a dynamic one ("?" when it has none).
Dim = int | str


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as the graph declares it."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[Dim, ...]
    elem_type: int

    def describe(self) -> str:
        return f"{self.name!r} ({self.dtype.name} {list(self.dims)})"


@dataclass(frozen=True)
class Placed:
    """A graph tensor with its batch axis (and time axis) found: ``shape`` is one session's, per step."""

    tensor: GraphTensor
    batch_axis: int
    time_axis: int | None
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def dtype_name(self) -> str:
        return self.tensor.dtype.name

    def to_graph_perm(self, with_time: bool) -> list[int]:
        """Transpose perm from the contract's layout (batch, [time], others) to the graph's layout."""
        order = self.contract_order(with_time)
        return [order.index(axis) for axis in range(len(order))]

    def contract_order(self, with_time: bool) -> list[int]:
        """The graph's axes in the contract's order: batch, time (where the graph has it), the others."""
        lead = [self.batch_axis] + ([self.time_axis] if with_time and self.time_axis is not None else [])
        return lead + [a for a in range(len(self.tensor.dims)) if a not in lead]


@dataclass(frozen=True)
class ImportPlan:
    """Every tensor of the graph, placed: what the wrapper builds and the reference run feeds."""

    inputs: tuple[Placed, ...]
    outputs: tuple[GraphTensor, ...]
    state: tuple[tuple[StateRule, Placed, GraphTensor], ...]
    constants: dict[str, np.ndarray]
    carried: Placed | None
    carry_keep: int
    time_axis: int | None
    batch_axis: int
    #: Each constant's ONNX element type (the graph input's).
    constant_types: dict[str, int]

    def place_output(self, tensor: GraphTensor, shape: tuple[int, ...]) -> Placed:
        return Placed(tensor, self.batch_axis, self.time_axis, shape)


def graph_tensors(values: Any, initializers: set[str]) -> dict[str, GraphTensor]:
    """A graph's inputs (less those an initializer feeds) or outputs, by name."""
    from onnx import helper

    found = {}
    for value in values:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        found[value.name] = GraphTensor(value.name, dtype, dims, tensor_type.elem_type)
    return found


def plan_import(model: onnx.ModelProto, spec: ImportSpec) -> ImportPlan:
    """Checks ``spec`` against ``model``'s signature and places every tensor; ImportRefused names the first problem."""
    graph = model.graph
    inputs = graph_tensors(graph.input, {i.name for i in graph.initializer})
    outputs = graph_tensors(graph.output, set())
    state = tuple(_place_state(rule, inputs, outputs, spec) for rule in spec.state)
    constants = {name: _constant(name, value, inputs) for name, value in spec.constants.items()}
    taken = {rule.input for rule in spec.state} | set(constants)
    per_step_names = [name for name in inputs if name not in taken]
    if spec.carry is not None and spec.carry.input not in per_step_names:
        raise ImportRefused(
            f"[carry] input {spec.carry.input!r}: the graph has no such per-step input; {_names(inputs)}"
        )
    if not per_step_names:
        raise ImportRefused("the graph has no per-step input: every input is named as state or constant")
    layout = spec.steps
    per_step = tuple(_place_step(inputs[name], spec) for name in per_step_names)
    carried = next((p for p in per_step if spec.carry is not None and p.name == spec.carry.input), None)
    outs = tuple(t for name, t in outputs.items() if name not in {r.output for r in spec.state})
    if not outs:
        raise ImportRefused("the graph has no per-step output: every output is named as a state output")
    for tensor in outs:
        _check_axes(tensor, layout.batch_axis, layout.time_axis, "[steps]")
    return ImportPlan(
        per_step, outs, state, constants, carried, spec.carry.keep if spec.carry else 0, layout.time_axis,
        layout.batch_axis,
        {name: inputs[name].elem_type for name in constants},
    )  # fmt: skip


def _names(tensors: dict[str, GraphTensor]) -> str:
    return "the graph has " + ", ".join(t.describe() for t in tensors.values())


def _serveable(tensor: GraphTensor) -> None:
    if tensor.dtype.name not in DTYPES:
        raise ImportRefused(
            f"{tensor.describe()}: dtype {tensor.dtype.name} is not one the server streams ({sorted(DTYPES)})"
        )


def _check_axes(tensor: GraphTensor, batch_axis: int, time_axis: int | None, where: str) -> None:
    rank = len(tensor.dims)
    for what, axis in (("batch_axis", batch_axis), ("time_axis", time_axis)):
        if axis is not None and axis >= rank:
            raise ImportRefused(f"{where} {what} {axis} is out of range for {tensor.describe()} of rank {rank}")
    dim = tensor.dims[batch_axis]
    if isinstance(dim, int):
        if dim == 1 and all(isinstance(d, int) for d in tensor.dims):
            raise ImportRefused(
                f"{tensor.describe()}: its batch axis {batch_axis} is fixed at 1 and no axis is dynamic: the graph has "
                "no batch dimension; export it with a dynamic batch axis (torch.onnx.export's dynamic_axes)"
            )
        raise ImportRefused(
            f"{tensor.describe()}: axis {batch_axis} is fixed at {dim}, so it is not the batch axis; "
            f"set {where} batch_axis to the dynamic axis (nn.GRU/nn.LSTM h and c: 1)"
        )


def _session_shape(tensor: GraphTensor, skip: set[int], spec: ImportSpec, where: str) -> tuple[int, ...]:
    """One session's dims of ``tensor`` (all axes but ``skip``), from the graph or from ``[shape]``."""
    dims = [d for axis, d in enumerate(tensor.dims) if axis not in skip]
    given = spec.shapes.get(tensor.name)
    if given is not None:
        if len(given) != len(dims):
            raise ImportRefused(
                f"[shape] {tensor.name} has {len(given)} dims, {where} {tensor.describe()} has {len(dims)}"
            )
        for got, want in zip(dims, given, strict=True):
            if isinstance(got, int) and got != want:
                raise ImportRefused(
                    f"[shape] {tensor.name} = {list(given)} differs from the graph's {tensor.describe()}"
                )
        return given
    if not all(isinstance(d, int) for d in dims):
        raise ImportRefused(
            f"{where} {tensor.describe()} has dynamic axes besides the batch: give one session's shape in the spec, "
            f"[shape] {tensor.name} = [...]"
        )
    return tuple(int(d) for d in dims)


def _place_state(
    rule: StateRule, inputs: dict[str, GraphTensor], outputs: dict[str, GraphTensor], spec: ImportSpec
) -> tuple[StateRule, Placed, GraphTensor]:
    if rule.input not in inputs:
        raise ImportRefused(f"[[state]] input {rule.input!r}: the graph has no such input; {_names(inputs)}")
    if rule.output not in outputs:
        raise ImportRefused(f"[[state]] output {rule.output!r}: the graph has no such output; {_names(outputs)}")
    source, target = inputs[rule.input], outputs[rule.output]
    _serveable(source)
    if source.dtype != target.dtype or len(source.dims) != len(target.dims):
        raise ImportRefused(
            f"[[state]] output {target.describe()} differs from its input {source.describe()} in dtype or rank"
        )
    for got, want in zip(target.dims, source.dims, strict=True):
        if isinstance(got, int) and isinstance(want, int) and got != want:
            raise ImportRefused(
                f"[[state]] output {target.describe()} differs in shape from its input {source.describe()}"
            )
    _check_axes(source, rule.batch_axis, None, f"[[state]] {rule.input!r}")
    shape = _session_shape(source, {rule.batch_axis}, spec, "state")
    return rule, Placed(source, rule.batch_axis, None, shape), target


def _place_step(tensor: GraphTensor, spec: ImportSpec) -> Placed:
    layout = spec.steps
    _serveable(tensor)
    _check_axes(tensor, layout.batch_axis, layout.time_axis, "[steps]")
    skip = {layout.batch_axis} | ({layout.time_axis} if layout.time_axis is not None else set())
    carry = spec.carry if spec.carry is not None and spec.carry.input == tensor.name else None
    if carry is None:
        return Placed(tensor, layout.batch_axis, layout.time_axis, _session_shape(tensor, skip, spec, "input"))
    last = tensor.dims[-1]
    if len(tensor.dims) - 1 in skip:
        raise ImportRefused(f"[carry] input {tensor.describe()} has no axis besides the batch to carry values along")
    if tensor.name not in spec.shapes and isinstance(last, int):
        # The graph takes keep + n values on its last axis; a step carries the n new ones.
        shape = (*_session_shape(tensor, skip | {len(tensor.dims) - 1}, spec, "input"), last - carry.keep)
        if shape[-1] < carry.keep:
            raise ImportRefused(
                f"[carry] keep {carry.keep} is longer than what a step of {tensor.describe()} brings "
                f"({last} values less the {carry.keep} carried = {last - carry.keep})"
            )
        return Placed(tensor, layout.batch_axis, None, shape)
    shape = _session_shape(tensor, skip, spec, "input")
    if isinstance(last, int) and last != shape[-1] + carry.keep:
        raise ImportRefused(
            f"[shape] {tensor.name}: {shape[-1]} new + {carry.keep} carried values != the graph's {last}"
        )
    if carry.keep > shape[-1]:
        raise ImportRefused(
            f"[carry] keep {carry.keep} is longer than input {tensor.name!r}'s {shape[-1]} values per step"
        )
    return Placed(tensor, layout.batch_axis, None, shape)


def _constant(name: str, value: Any, inputs: dict[str, GraphTensor]) -> np.ndarray:
    if name not in inputs:
        raise ImportRefused(f"[constant] {name}: the graph has no such input; {_names(inputs)}")
    tensor = inputs[name]
    array = np.asarray(value)
    kind = tensor.dtype.kind
    fits = {"b": "b", "i": "i", "u": "i", "f": "if"}.get(kind, "")
    if array.dtype.kind not in fits or array.dtype == object:
        raise ImportRefused(
            f"[constant] {name} = {value!r} is {array.dtype.name}, the graph's input {tensor.describe()} takes "
            f"{tensor.dtype.name}"
        )
    if len(tensor.dims) != array.ndim or any(
        isinstance(d, int) and d != n for d, n in zip(tensor.dims, array.shape, strict=False)
    ):
        raise ImportRefused(
            f"[constant] {name} has shape {list(array.shape)}, the graph's input is {tensor.describe()}"
        )
    converted = array.astype(tensor.dtype)
    if not np.array_equal(converted, array):
        raise ImportRefused(f"[constant] {name} = {value!r} does not fit the graph's {tensor.describe()}")
    return converted
