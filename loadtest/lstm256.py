"""The benchmark's LSTM-256 step model: the shape Triton users benchmark, with seeded-random weights.

``statestream bench --model lstm256`` and the ``minimal`` variant need a step model that is
neither a language model nor tiny: one 256-unit LSTM layer, 64 float inputs and 64 float
outputs per step, one step per message. Its weights are drawn from a seeded generator and never
trained (the numbers it answers mean nothing; only their cost does), so the model is rebuilt
byte for byte by this command rather than by a training recipe:

    python -m loadtest.lstm256 --out models/lstm256

The graph is ONNX's own LSTM op (built with ``onnx.helper``, no torch needed), wrapped to the
step contract (``x`` ``[B, T, 64]``, state ``h``/``c`` ``[B, 1, 256]``, ``y`` ``[B, T, 64]``).
The golden trace is computed by the plain numpy LSTM below, not by ONNX Runtime, so loading the
model proves the graph against an independent implementation of the same equations.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service import command
from service.command import Parser, check_model_folder_to_write, nonempty_path
from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec

NAME = "lstm256"
INPUTS = 64
HIDDEN = 256
OUTPUTS = 64
SEED = 256
OPSET = 17
GOLDEN_STEPS = 4


def weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """ONNX LSTM weights (gates in i, o, f, c order), scaled like a fresh PyTorch layer (±1/sqrt(hidden))."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(HIDDEN)

    def draw(*shape: int) -> np.ndarray:
        return rng.uniform(-scale, scale, shape).astype(np.float32)

    return {
        "W": draw(1, 4 * HIDDEN, INPUTS),
        "R": draw(1, 4 * HIDDEN, HIDDEN),
        "B": draw(1, 8 * HIDDEN),
        "W_out": draw(HIDDEN, OUTPUTS),
        "b_out": draw(OUTPUTS),
    }


def build_graph(w: dict[str, np.ndarray]) -> bytes:
    """The step graph: ONNX Runtime's CPU LSTM takes time-major input only, hence the transposes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),  # [T, B, 64]
        helper.make_node("Transpose", ["h"], ["h_dm"], perm=[1, 0, 2]),  # [1, B, 256]
        helper.make_node("Transpose", ["c"], ["c_dm"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_tm", "W", "R", "B", "", "h_dm", "c_dm"], ["Y", "Y_h", "Y_c"], hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["Y", "axis1"], ["Y_seq"]),  # [T, B, 256]
        helper.make_node("MatMul", ["Y_seq", "W_out"], ["y_tm"]),
        helper.make_node("Add", ["y_tm", "b_out"], ["y_tm_b"]),
        helper.make_node("Transpose", ["y_tm_b"], ["y"], perm=[1, 0, 2]),  # [B, T, 64]
        helper.make_node("Transpose", ["Y_h"], ["h_out"], perm=[1, 0, 2]),  # [B, 1, 256]
        helper.make_node("Transpose", ["Y_c"], ["c_out"], perm=[1, 0, 2]),
    ]
    initializers = [numpy_helper.from_array(array, name) for name, array in w.items()]
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        NAME,
        [
            helper.make_tensor_value_info("x", f32, ["batch", "time", INPUTS]),
            helper.make_tensor_value_info("h", f32, ["batch", 1, HIDDEN]),
            helper.make_tensor_value_info("c", f32, ["batch", 1, HIDDEN]),
        ],
        [
            helper.make_tensor_value_info("y", f32, ["batch", "time", OUTPUTS]),
            helper.make_tensor_value_info("h_out", f32, ["batch", 1, HIDDEN]),
            helper.make_tensor_value_info("c_out", f32, ["batch", 1, HIDDEN]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="loadtest.lstm256")
    model.ir_version = 8  # readable by every ONNX Runtime this project supports
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def reference_steps(w: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """``y`` for each row of ``xs`` (``[T, 64]``), one step at a time from zero state, in float64 numpy."""

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-v)))

    W, R = w["W"][0].astype(np.float64), w["R"][0].astype(np.float64)
    bias = w["B"][0, : 4 * HIDDEN].astype(np.float64) + w["B"][0, 4 * HIDDEN :]
    h, c = np.zeros(HIDDEN), np.zeros(HIDDEN)
    ys = []
    for x in xs.astype(np.float64):
        i, o, f, g = np.split(W @ x + R @ h + bias, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        ys.append(h @ w["W_out"].astype(np.float64) + w["b_out"])
    return np.stack(ys)


def manifest(w: dict[str, np.ndarray], seed: int = SEED) -> Manifest:
    xs = np.random.default_rng(seed + 1).standard_normal((GOLDEN_STEPS, INPUTS)).astype(np.float32)
    ys = reference_steps(w, xs)
    state_doc = "of the one LSTM layer, [layers, hidden]"
    return Manifest(
        name=NAME,
        version="1",
        task="sequence_model",
        description=(
            "Benchmark model, never trained: one 256-unit LSTM layer with seeded-random weights, "
            "64 floats in and 64 out per step (python -m loadtest.lstm256)."
        ),
        step_graph="step.onnx",
        inputs=(TensorSpec("x", "float32", (INPUTS,), "the step's input vector"),),
        outputs=(TensorSpec("y", "float32", (OUTPUTS,), "a linear read-out of the hidden state"),),
        state=(
            StateSpec("h", "h_out", "float32", (1, HIDDEN), "zeros", f"hidden state h {state_doc}"),
            StateSpec("c", "c_out", "float32", (1, HIDDEN), "zeros", f"cell state c {state_doc}"),
        ),
        golden=GoldenTrace(
            inputs={"x": [[float(v) for v in row] for row in xs]},
            outputs={"y": [[round(float(v), 7) for v in row] for row in ys]},
            tolerance=1e-4,
        ),
        training={"trained": False, "weights": f"numpy default_rng({seed}), uniform ±1/sqrt({HIDDEN})", "opset": OPSET},
    )


def write(out: Path, seed: int = SEED) -> Path:
    """Writes ``step.onnx`` and ``manifest.json`` into ``out``; returns the folder."""
    out.mkdir(parents=True, exist_ok=True)
    w = weights(seed)
    (out / "step.onnx").write_bytes(build_graph(w))
    manifest(w, seed).save(out)
    return out


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.lstm256", description=__doc__.split("\n\n")[0])
    made.add_argument("--out", type=nonempty_path, default=Path("models") / NAME, help="model folder to write")
    return made


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_model_folder_to_write(args.out)
    print(f"wrote {write(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
