"""The step-model contract: what a servable model is, checked against its ONNX graph.

Every model the server runs is ``step(inputs_t, state_{t-1}) -> (outputs_t, state_t)``.
The manifest (``manifest.json`` beside the graph) names each tensor, its dtype and its
per-session shape; the server knows nothing else about the network. This module is the
one piece of ``service/`` that ``training/`` imports, so it holds the schema and its
checks and nothing of the server (ONNX Runtime is imported only where a graph is checked).

Graph conventions (all tensors have the batch as their leading, dynamic axis):

* a per-step input or output has shape ``[batch, time, *shape]``; the time axis is dynamic,
  so one call can run a chunk of K consecutive steps of every session in the batch;
* a state tensor has shape ``[batch, *shape]``: the graph reads ``state.input`` and writes
  the state after the last time step to ``state.output``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

#: Manifest dtype names and the numpy type each maps to.
DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "int64": np.int64,
    "int32": np.int32,
}
#: The ONNX Runtime type strings of the same dtypes, for checking a graph's signature.
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "int32": "tensor(int32)"}

#: Model names become folder names and metric labels: keep them to a safe alphabet.
MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
STATE_INITS = ("zeros",)


class ContractError(ValueError):
    """A manifest or graph that breaks the contract; the message says what and where."""


def check_model_name(name: str) -> str:
    """Refuse names that could escape the model folder or break a metric label."""
    if not MODEL_NAME_RE.match(name) or ".." in name:
        raise ContractError(f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    return name


def _strict(cls_name: str, data: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ContractError(f"{cls_name}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(set(required) - set(data))
    if missing:
        raise ContractError(f"{cls_name}: missing key(s) {missing}")


def _dtype(name: str, where: str) -> str:
    if name not in DTYPES:
        raise ContractError(f"{where}: dtype {name!r} is not one of {sorted(DTYPES)}")
    return name


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(d, int) and d > 0 for d in value):
        raise ContractError(f"{where}: shape must be a list of positive integers, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class TensorSpec:
    """A per-step input or output: ``shape`` excludes the batch and time axes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    doc: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        _strict("tensor", data, ("name", "dtype", "shape", "doc"), ("name", "dtype", "shape"))
        where = f"tensor {data['name']!r}"
        return cls(
            str(data["name"]), _dtype(data["dtype"], where), _shape(data["shape"], where), str(data.get("doc", ""))
        )

    @property
    def np_dtype(self) -> type[np.generic]:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class StateSpec:
    """One tensor the server keeps per session between steps.

    ``input`` is the graph input that receives ``state_{t-1}``, ``output`` the graph output
    that returns ``state_t``; ``shape`` excludes the batch axis. ``init`` says how a new
    session's row starts (``zeros``).
    """

    input: str
    output: str
    dtype: str
    shape: tuple[int, ...]
    init: str = "zeros"
    doc: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateSpec:
        _strict(
            "state", data, ("input", "output", "dtype", "shape", "init", "doc"), ("input", "output", "dtype", "shape")
        )
        where = f"state {data['input']!r}"
        init = str(data.get("init", "zeros"))
        if init not in STATE_INITS:
            raise ContractError(f"{where}: init {init!r} is not one of {STATE_INITS}")
        return cls(
            str(data["input"]),
            str(data["output"]),
            _dtype(data["dtype"], where),
            _shape(data["shape"], where),
            init,
            str(data.get("doc", "")),
        )

    @property
    def np_dtype(self) -> type[np.generic]:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes one session's row of this tensor takes."""
        return int(np.prod(self.shape)) * np.dtype(self.np_dtype).itemsize


@dataclass(frozen=True)
class GoldenTrace:
    """A short recorded run that proves the graph is the one the manifest describes.

    ``inputs[name]`` holds ``T`` steps (``[T, *shape]``); they are fed one step per call to a
    single session that starts from its initial state, and every step's outputs must match
    ``outputs[name]`` within ``tolerance`` (max absolute difference).
    """

    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    tolerance: float = 1e-4

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenTrace:
        _strict("golden", data, ("inputs", "outputs", "tolerance"), ("inputs", "outputs"))
        return cls(dict(data["inputs"]), dict(data["outputs"]), float(data.get("tolerance", 1e-4)))


@dataclass(frozen=True)
class Manifest:
    """Everything the server needs to know about a model, and nothing about its insides."""

    name: str
    version: str
    task: str
    description: str
    step_graph: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[StateSpec, ...]
    golden: GoldenTrace
    decoding: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    KEYS = (
        "schema_version",
        "name",
        "version",
        "task",
        "description",
        "step_graph",
        "inputs",
        "outputs",
        "state",
        "golden",
        "decoding",
        "training",
        "scores",
    )
    REQUIRED = ("schema_version", "name", "version", "task", "step_graph", "inputs", "outputs", "state", "golden")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        _strict("manifest", data, cls.KEYS, cls.REQUIRED)
        if data["schema_version"] != SCHEMA_VERSION:
            raise ContractError(f"manifest: schema_version {data['schema_version']!r} is not {SCHEMA_VERSION}")
        manifest = cls(
            name=check_model_name(str(data["name"])),
            version=str(data["version"]),
            task=str(data["task"]),
            description=str(data.get("description", "")),
            step_graph=str(data["step_graph"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            state=tuple(StateSpec.from_dict(s) for s in data["state"]),
            golden=GoldenTrace.from_dict(data["golden"]),
            decoding=dict(data.get("decoding", {})),
            training=dict(data.get("training", {})),
            scores={str(k): float(v) for k, v in dict(data.get("scores", {})).items()},
        )
        manifest._check_self_consistent()
        return manifest

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContractError(f"{path}: no manifest") from None
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ContractError(f"{path}: the manifest must be a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("inputs", "outputs", "state"):
            for spec in data[key]:
                spec["shape"] = list(spec["shape"])
        return {key: data[key] for key in self.KEYS}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def _check_self_consistent(self) -> None:
        if Path(self.step_graph).name != self.step_graph:
            raise ContractError(f"manifest: step_graph {self.step_graph!r} must be a file name in the model folder")
        names = [t.name for t in self.inputs] + [s.input for s in self.state]
        outs = [t.name for t in self.outputs] + [s.output for s in self.state]
        for kind, seq in (("input", names), ("output", outs)):
            dupes = sorted({n for n in seq if seq.count(n) > 1})
            if dupes:
                raise ContractError(f"manifest: {kind} name(s) {dupes} are used twice")
        if not self.inputs:
            raise ContractError("manifest: a step model needs at least one input")
        for name, steps in self.golden.inputs.items():
            if name not in {t.name for t in self.inputs}:
                raise ContractError(f"golden: input {name!r} is not a manifest input")
            if not steps:
                raise ContractError(f"golden: input {name!r} has no steps")
        missing = {t.name for t in self.inputs} - set(self.golden.inputs)
        if missing:
            raise ContractError(f"golden: no steps for input(s) {sorted(missing)}")
        for name in self.golden.outputs:
            if name not in {t.name for t in self.outputs}:
                raise ContractError(f"golden: output {name!r} is not a manifest output")

    @property
    def state_bytes(self) -> int:
        """Bytes of state one session holds."""
        return sum(s.nbytes for s in self.state)

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def vocabulary(self) -> list[str]:
        """The token strings of a language model (index = token id); empty for other tasks."""
        return list(self.decoding.get("vocabulary", []))


def zero_state(manifest: Manifest, batch: int) -> dict[str, np.ndarray]:
    """Initial state for ``batch`` fresh sessions, keyed by graph input name."""
    return {s.input: np.zeros((batch, *s.shape), dtype=s.np_dtype) for s in manifest.state}


def check_graph(manifest: Manifest, session: onnxruntime.InferenceSession) -> None:
    """Refuse a graph whose signature differs from the manifest's, naming the first mismatch."""
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    expected_in: dict[str, tuple[str, tuple[int, ...], int]] = {}
    expected_out: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for t in manifest.inputs:
        expected_in[t.name] = (t.dtype, t.shape, 2)
    for t in manifest.outputs:
        expected_out[t.name] = (t.dtype, t.shape, 2)
    for s in manifest.state:
        expected_in[s.input] = (s.dtype, s.shape, 1)
        expected_out[s.output] = (s.dtype, s.shape, 1)
    for kind, graph, expected in (("input", graph_inputs, expected_in), ("output", graph_outputs, expected_out)):
        if set(graph) != set(expected):
            raise ContractError(f"graph {kind}s {sorted(graph)} differ from the manifest's {sorted(expected)}")
        for name, (dtype, shape, leading) in expected.items():
            arg = graph[name]
            if arg.type != ORT_TYPES[dtype]:
                raise ContractError(f"graph {kind} {name!r} has type {arg.type}, the manifest says {dtype}")
            dims = list(arg.shape)
            if len(dims) != leading + len(shape):
                raise ContractError(
                    f"graph {kind} {name!r} has rank {len(dims)}, the manifest implies {leading + len(shape)}"
                )
            if isinstance(dims[0], int):
                raise ContractError(f"graph {kind} {name!r}: the batch axis must be dynamic, it is fixed at {dims[0]}")
            for got, want in zip(dims[leading:], shape, strict=True):
                if isinstance(got, int) and got != want:
                    raise ContractError(
                        f"graph {kind} {name!r} has shape {dims}, the manifest says [batch, ..., {list(shape)}]"
                    )


def replay_golden(manifest: Manifest, session: onnxruntime.InferenceSession) -> float:
    """Feed the golden trace one step at a time and return the largest output error.

    Raises ContractError when the error exceeds the trace's tolerance, so a loaded model
    is known to compute what its manifest recorded.
    """
    steps = len(next(iter(manifest.golden.inputs.values())))
    state = zero_state(manifest, 1)
    worst = 0.0
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    for t in range(steps):
        feed: dict[str, np.ndarray] = {}
        for spec in manifest.inputs:
            step = np.asarray(manifest.golden.inputs[spec.name][t], dtype=spec.np_dtype)
            feed[spec.name] = step.reshape(1, 1, *spec.shape)
        feed.update(state)
        results = dict(zip(out_names, session.run(out_names, feed), strict=True))
        for name, expected in manifest.golden.outputs.items():
            want = np.asarray(expected[t], dtype=np.float64)
            got = results[name].reshape(want.shape).astype(np.float64)
            err = float(np.max(np.abs(got - want))) if want.size else 0.0
            if not np.isfinite(err):
                raise ContractError(f"golden step {t}: output {name!r} is not finite")
            worst = max(worst, err)
        state = {s.input: results[s.output] for s in manifest.state}
    if worst > manifest.golden.tolerance:
        raise ContractError(f"golden trace mismatch: max |diff| {worst:.3g} > tolerance {manifest.golden.tolerance:g}")
    return worst
