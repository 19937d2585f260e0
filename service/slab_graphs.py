"""The three tiny ONNX graphs that move state rows inside a device's memory.

Device slabs (``service.device_slabs``) must gather a batch's rows, scatter the new state back
and grow, all without copying the slab to the host and without torch in the serving image. ONNX
Runtime does each with one standard operator on any execution provider, so each is a graph of
one node per state tensor, built here from the model's state specs:

* **gather**: ``Gather(slab, rows, axis=0)`` → ``[B, *shape]``, the batch's state in call order;
* **scatter**: ``ScatterND(slab, rows[:, None], new)`` → the slab with the batch's rows replaced.
  Its output is bound to the slab's own memory: ORT's CPU and CUDA ScatterND kernels skip their
  input-to-output copy when the two are one buffer, so only B rows are written, not the whole
  slab (measured in docs/benchmarks.md, "Device slabs in the server");
* **grow**: ``Pad(slab, pads)`` with zeros → a new, longer slab that ORT allocates on the device.

The slab and batch axes (``capacity``, ``batch``, ``grown``) are dynamic: one graph serves every size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.contract import RowSpec

#: Opset of the graphs: ScatterND without reduction, Pad taking ``pads`` as an input.
OPSET = 18
ROWS = "rows"


def slab_input(spec: RowSpec) -> str:
    return f"slab.{spec.input}"


def rows_output(spec: RowSpec) -> str:
    """Gather's result, and scatter's update input, for one state tensor."""
    return f"rows.{spec.input}"


def slab_output(spec: RowSpec) -> str:
    return f"new.{spec.input}"


def _tensor(name: str, spec: RowSpec, leading: str) -> onnx.ValueInfoProto:
    element = helper.np_dtype_to_tensor_dtype(np.dtype(spec.np_dtype))
    return helper.make_tensor_value_info(name, element, [leading, *spec.shape])


def _model(
    name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="statestream")
    model.ir_version = 9  # what every ONNX Runtime since 1.15 reads
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def gather_graph(specs: Sequence[RowSpec]) -> bytes:
    """Inputs: each slab ``[capacity, *shape]`` and ``rows`` (int64 ``[B]``); outputs: ``[B, *shape]`` each."""
    nodes = [helper.make_node("Gather", [slab_input(s), ROWS], [rows_output(s)], axis=0) for s in specs]
    inputs = [_tensor(slab_input(s), s, "capacity") for s in specs]
    inputs.append(helper.make_tensor_value_info(ROWS, TensorProto.INT64, ["batch"]))
    return _model("slab_gather", nodes, inputs, [_tensor(rows_output(s), s, "batch") for s in specs])


def scatter_graph(specs: Sequence[RowSpec]) -> bytes:
    """Inputs: each slab, ``rows`` (int64 ``[B, 1]``) and each new state ``[B, *shape]``; outputs: each slab."""
    nodes = [helper.make_node("ScatterND", [slab_input(s), ROWS, rows_output(s)], [slab_output(s)]) for s in specs]
    inputs = [_tensor(slab_input(s), s, "capacity") for s in specs]
    inputs.append(helper.make_tensor_value_info(ROWS, TensorProto.INT64, ["batch", 1]))
    inputs.extend(_tensor(rows_output(s), s, "batch") for s in specs)
    return _model("slab_scatter", nodes, inputs, [_tensor(slab_output(s), s, "capacity") for s in specs])


def pads_input(spec: RowSpec) -> str:
    return f"pads.{spec.input}"


def grow_graph(specs: Sequence[RowSpec]) -> bytes:
    """Inputs: each slab and its ``pads`` (int64 ``[2 * rank]``); outputs: each slab, zero-padded."""
    nodes = [helper.make_node("Pad", [slab_input(s), pads_input(s)], [slab_output(s)], mode="constant") for s in specs]
    inputs = [_tensor(slab_input(s), s, "capacity") for s in specs]
    inputs.extend(
        helper.make_tensor_value_info(pads_input(s), TensorProto.INT64, [2 * (1 + len(s.shape))]) for s in specs
    )
    return _model("slab_grow", nodes, inputs, [_tensor(slab_output(s), s, "grown") for s in specs])


def grow_pads(spec: RowSpec, extra_rows: int) -> np.ndarray:
    """Pad's ``pads`` for adding ``extra_rows`` zero rows at the end of axis 0 of a slab."""
    rank = 1 + len(spec.shape)
    pads = np.zeros(2 * rank, dtype=np.int64)
    pads[rank] = extra_rows  # ONNX order: all begins, then all ends
    return pads
