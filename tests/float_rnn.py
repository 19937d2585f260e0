"""A tiny float-input recurrent model built directly in ONNX, with a numpy reference.

The shipped models take token ids; this one takes real-valued vectors (like a sensor forecaster),
so tests can exercise the tensor path: dtypes, shapes, NaN and Inf. The graph is the ONNX ``RNN``
op between transposes to and from the batch-leading contract: ``h_t = tanh(x_t Wᵀ + h_{t-1} Rᵀ + b)``, output ``y_t = h_t``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec

FEATURES, HIDDEN = 3, 4


def weights(seed: int = 0, hidden: int = HIDDEN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (1, hidden, FEATURES)).astype(np.float32)
    r = rng.normal(0, 0.5, (1, hidden, hidden)).astype(np.float32)
    b = rng.normal(0, 0.1, (1, 2 * hidden)).astype(np.float32)
    return w, r, b


def reference(xs: np.ndarray, h: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """``[T, HIDDEN]`` outputs for inputs ``[T, FEATURES]``, in float64."""
    w, r, b = (a.astype(np.float64) for a in weights(seed))
    state = np.zeros(HIDDEN) if h is None else h
    rows = []
    for x in xs:
        state = np.tanh(x @ w[0].T + state @ r[0].T + b[0, :HIDDEN] + b[0, HIDDEN:])
        rows.append(state)
    return np.stack(rows)


def build(folder: Path, name: str = "float_rnn", seed: int = 0, hidden: int = HIDDEN) -> Path:
    """The model folder; ``hidden`` sets the state size (``4 * hidden`` bytes a session)."""
    folder.mkdir(parents=True, exist_ok=True)
    w, r, b = weights(seed, hidden)
    nodes = [  # ORT's RNN kernel is time-major: transpose the batch-leading contract around it
        helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h"], ["h_1bh"], perm=[1, 0, 2]),
        helper.make_node("RNN", ["x_tbf", "W", "R", "B", "", "h_1bh"], ["Y", "Y_h"], hidden_size=hidden),
        helper.make_node("Transpose", ["Y"], ["Y_bt1h"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["Y_bt1h", "y_shape"], ["y"]),  # [B, T, 1, H] -> [B, T, H]
        helper.make_node("Transpose", ["Y_h"], ["h_out"], perm=[1, 0, 2]),  # [1, B, H] -> [B, 1, H]
    ]
    graph = helper.make_graph(
        nodes,
        "float_rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", FEATURES]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 1, hidden]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", hidden]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 1, hidden]),
        ],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(r, "R"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(np.array([0, 0, hidden], dtype=np.int64), "y_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "step.onnx"))

    inputs = np.linspace(-1, 1, 8 * FEATURES, dtype=np.float32).reshape(8, FEATURES)
    session = ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    state, outputs = np.zeros((1, 1, hidden), np.float32), []
    for x in inputs:
        y, state = session.run(["y", "h_out"], {"x": x[None, None], "h": state})
        outputs.append(y[0, 0].tolist())
    Manifest(
        name=name,
        version="1",
        task="sequence_model",
        description="tiny float RNN for tests",
        step_graph="step.onnx",
        inputs=(TensorSpec("x", "float32", (FEATURES,)),),
        outputs=(TensorSpec("y", "float32", (hidden,)),),
        state=(StateSpec("h", "h_out", "float32", (1, hidden)),),
        golden=GoldenTrace({"x": inputs.tolist()}, {"y": outputs}, 1e-5),
    ).save(folder)
    return folder
