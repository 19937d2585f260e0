"""A tiny stand-in voice-activity model: the driver's mechanics tested without Silero's weights.

Its step graph, built with the ``onnx`` helpers, keeps a recurrent energy: per frame of
``frame`` samples, ``energy = mean(x^2)``, ``state' = state / 2 + energy`` (2 values), and
``probability = sigmoid(400 * mean(state') - 2)``: loud frames push it towards 1, quiet ones let
it decay, and it depends on every earlier frame (so a misplaced or dropped frame shows). At
8 kHz (frame 256) it stands in for the rate the shipped model is not imported for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper


def energy_graph(frame: int) -> onnx.ModelProto:
    """The step graph: input [B, 1, frame], state [B, 2] -> output [B, 1, 1], stateN [B, 2]."""
    nodes = [
        helper.make_node("Mul", ["input", "input"], ["squares"]),
        helper.make_node("ReduceMean", ["squares"], ["energy3"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["energy3", "one_axis"], ["energy"]),
        helper.make_node("Mul", ["state", "half"], ["kept"]),
        helper.make_node("Add", ["kept", "energy"], ["stateN"]),
        helper.make_node("ReduceMean", ["stateN"], ["level"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["level", "gain"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node("Unsqueeze", ["probability", "one_axis"], ["output"]),
    ]
    constants = [
        helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [400.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [2.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "energy_vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, frame]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, ["batch", 2]),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def write_energy_vad(folder: Path, name: str = "energy_vad", frame: int = 512) -> Path:
    """A model folder (manifest + step.onnx, golden trace recorded by ONNX Runtime) served as voice_activity."""
    target = folder / name
    target.mkdir(parents=True)
    onnx.save(energy_graph(frame), target / "step.onnx")
    session = onnxruntime.InferenceSession(str(target / "step.onnx"), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(0).normal(0, 0.05, (3, frame)).astype(np.float32)
    state = np.zeros((1, 2), np.float32)
    outputs = []
    for step in inputs:
        probability, state = session.run(["output", "stateN"], {"input": step[None, None], "state": state})
        outputs.append(probability[0, 0].tolist())
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": "1",
        "task": "voice_activity",
        "description": "test stand-in: speech probability from a decaying frame energy",
        "step_graph": "step.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [frame], "doc": "one frame of samples"}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [1], "doc": "speech probability"}],
        "state": [{"input": "state", "output": "stateN", "dtype": "float32", "shape": [2], "init": "zeros"}],
        "golden": {"inputs": {"input": inputs.tolist()}, "outputs": {"output": outputs}},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return target
