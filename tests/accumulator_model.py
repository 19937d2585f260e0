"""The accumulator model of ``tests/accumulator_driver.py``: an init graph, a context, a step graph.

Built with onnx.helper (no torch), with golden traces recorded by running the graphs, as an
export would. ``offline_run`` is the reference a served session must match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.contract import ContextSpec, GoldenTrace, InitSpec, Manifest, StateSpec, TensorSpec

UNITS = 3
GOLDEN_OFFSET = [0.5, -1.0, 2.0]


def _value(name: str, leading: list[str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [*leading, UNITS])


def _save(graph: onnx.GraphProto, path: Path) -> None:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def step_graph(path: Path) -> None:
    """y = acc_in + cumsum(x * scale) over time; acc_out = y at the last step."""
    nodes = [
        helper.make_node("Unsqueeze", ["scale", "axis1"], ["scale_t"]),
        helper.make_node("Mul", ["x", "scale_t"], ["scaled"]),
        helper.make_node("CumSum", ["scaled", "axis1_scalar"], ["summed"]),
        helper.make_node("Unsqueeze", ["acc_in", "axis1"], ["acc_t"]),
        helper.make_node("Add", ["summed", "acc_t"], ["y"]),
        helper.make_node("Gather", ["y", "last"], ["acc_out"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator_step",
        [_value("x", ["batch", "time"]), _value("acc_in", ["batch"]), _value("scale", ["batch"])],
        [_value("y", ["batch", "time"]), _value("acc_out", ["batch"])],
        [
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis1_scalar", TensorProto.INT64, [], [1]),
            helper.make_tensor("last", TensorProto.INT64, [], [-1]),
        ],
    )
    _save(graph, path)


def init_graph(path: Path, *, scale_bias: float = 1.0) -> None:
    """acc_in = offset; scale = |offset| + scale_bias."""
    nodes = [
        helper.make_node("Identity", ["offset"], ["acc_in"]),
        helper.make_node("Abs", ["offset"], ["magnitude"]),
        helper.make_node("Add", ["magnitude", "bias"], ["scale"]),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator_init",
        [_value("offset", ["batch"])],
        [_value("acc_in", ["batch"]), _value("scale", ["batch"])],
        [helper.make_tensor("bias", TensorProto.FLOAT, [], [scale_bias])],
    )
    _save(graph, path)


def offline_run(offset: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The reference: y for each step of ``xs`` ([T, UNITS]) from a session opened with ``offset``."""
    scale = np.abs(offset) + 1.0
    return np.asarray(offset, np.float32) + np.cumsum(xs * scale, axis=0, dtype=np.float32)


def build(folder: Path, *, name: str = "accumulator", task: str = "accumulator") -> Path:
    """Writes the model folder; the golden traces are what the graphs compute."""
    folder.mkdir(parents=True, exist_ok=True)
    step_graph(folder / "step.onnx")
    init_graph(folder / "init.onnx")
    init_session = ort.InferenceSession(str(folder / "init.onnx"), providers=["CPUExecutionProvider"])
    offset = np.asarray(GOLDEN_OFFSET, np.float32)
    acc0, scale = init_session.run(["acc_in", "scale"], {"offset": offset[None]})
    acc = acc0
    step_session = ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    xs = np.linspace(-1, 1, 4 * UNITS, dtype=np.float32).reshape(4, UNITS)
    outputs = []
    for x in xs:
        y, acc = step_session.run(["y", "acc_out"], {"x": x[None, None], "acc_in": acc, "scale": scale})
        outputs.append(y[0, 0].tolist())
    Manifest(
        name=name,
        version="1",
        task=task,
        description="a running sum with an init graph and a context, for tests",
        step_graph="step.onnx",
        inputs=(TensorSpec("x", "float32", (UNITS,)),),
        outputs=(TensorSpec("y", "float32", (UNITS,)),),
        state=(StateSpec("acc_in", "acc_out", "float32", (UNITS,), init="init"),),
        golden=GoldenTrace({"x": xs.tolist()}, {"y": outputs}, 1e-5),
        context=(ContextSpec("scale", "float32", (UNITS,), "1 + |offset|, read at every step"),),
        init=InitSpec(
            "init.onnx",
            (TensorSpec("offset", "float32", (UNITS,)),),
            GoldenTrace({"offset": offset.tolist()}, {"acc_in": acc0[0].tolist(), "scale": scale[0].tolist()}, 1e-6),
        ),
    ).save(folder)
    return folder
