"""The step-model contract: what a servable model is, checked against its ONNX graphs.

Every model the server runs is ``step(inputs_t, state_{t-1}, context) -> (outputs_t, state_t)``,
optionally with an ``init(payload) -> (state_0, context)`` graph run once when a session opens.
The manifest (``manifest.json`` beside the graphs) names each tensor, its dtype and per-session
shape, and the task whose driver serves the model; the server knows nothing else of the network.
``training/`` imports this module, so it holds the schema and its checks and nothing of the
server (ONNX Runtime is imported only where a graph is checked).

Graph conventions (every tensor's leading axis is the batch, dynamic):
* a per-step input or output is ``[batch, time, *shape]``, time dynamic: one call runs K steps;
* a state is ``[batch, *shape]``, read at ``state.input``, written after the last step at ``state.output``;
* a context is ``[batch, *shape]``: a per-session, read-only step input (a captioner's image), never an output;
* the init graph takes ``init.inputs`` (``[batch, *shape]``, one payload per row) and returns one
  output named after each state *input* whose ``init`` is ``"init"`` and one per context tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


def holds_something_else(out: Path) -> bool:
    """Whether ``out`` is there and is not a model folder (nor an empty one): a command that writes a
    model there (export, import, the lstm256 builder) never replaces it."""
    return out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).exists()))


#: Tensors by name: a step's inputs or outputs, a session's state row, a graph's feed.
Arrays = dict[str, np.ndarray]

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
STATE_INITS = ("zeros", "init")


class ContractError(ValueError):
    """A manifest or graph that breaks the contract; the message says what and where.

    ``rule`` names the loader's check that refused it (``service.registry.LOAD_RULES``), for
    ``statestream check`` to say how to fix it.
    """

    rule: str = "manifest"


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
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
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
class ContextSpec(TensorSpec):
    """A per-session, read-only step input, made by the init graph when the session opens.

    It lives in the state slabs beside the state (so fork, snapshot and restore carry it) but
    is gathered into every step's batch and never written back. ``shape`` excludes the batch axis.
    """

    @property
    def input(self) -> str:
        """The step graph input that receives it (its own name): slabs key rows by input name."""
        return self.name

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.np_dtype).itemsize


#: A tensor the server keeps per session in its slabs: state (written by every step) or context.
RowSpec = StateSpec | ContextSpec


@dataclass(frozen=True)
class GoldenTrace:
    """A short recorded run that proves the graph is the one the manifest describes.

    For the step graph, ``inputs[name]`` holds ``T`` steps (``[T, *shape]``); they are fed one
    step per call to a single session that starts from its initial state (the init graph's
    answer to the init trace's inputs, when the model has one), and every step's outputs must
    match ``outputs[name]`` within ``tolerance`` (max absolute difference). For the init graph,
    ``inputs[name]`` is one session's payload (``[*shape]``) and ``outputs`` its initial state
    and context, one call.
    """

    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    tolerance: float = 1e-4

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenTrace:
        _strict("golden", data, ("inputs", "outputs", "tolerance"), ("inputs", "outputs"))
        return cls(dict(data["inputs"]), dict(data["outputs"]), float(data.get("tolerance", 1e-4)))


@dataclass(frozen=True)
class InitSpec:
    """The optional init graph: a session's payload in, its initial state and context out.

    ``inputs`` are per-session tensors (``shape`` excludes the batch axis; a TensorSpec's shape
    here has no time axis). The graph's outputs are named after the state inputs whose ``init``
    is ``"init"`` and after the context tensors.
    """

    graph: str
    inputs: tuple[TensorSpec, ...]
    golden: GoldenTrace

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InitSpec:
        _strict("init", data, ("graph", "inputs", "golden"), ("graph", "inputs", "golden"))
        graph = str(data["graph"])
        if Path(graph).name != graph:
            raise ContractError(f"init: graph {graph!r} must be a file name in the model folder")
        inputs = tuple(TensorSpec.from_dict(t) for t in data["inputs"])
        if not inputs:
            raise ContractError("init: an init graph needs at least one input")
        golden = GoldenTrace.from_dict(data["golden"])
        missing = sorted({t.name for t in inputs} - set(golden.inputs))
        if missing:
            raise ContractError(f"init golden: no payload for input(s) {missing}")
        return cls(graph, inputs, golden)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for spec in data["inputs"]:
            spec["shape"] = list(spec["shape"])
        return data


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
    context: tuple[ContextSpec, ...] = ()
    init: InitSpec | None = None

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
        "context",
        "init",
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
            context=tuple(ContextSpec.from_dict(c) for c in data.get("context", ())),
            init=InitSpec.from_dict(data["init"]) if data.get("init") is not None else None,
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
        except OSError as exc:  # a folder of that name, or one it may not read
            raise ContractError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:  # a ValueError, but no JSONDecodeError: it was a traceback
            raise ContractError(f"{path}: not valid JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ContractError(f"{path}: the manifest must be a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("inputs", "outputs", "state", "context"):
            for spec in data[key]:
                spec["shape"] = list(spec["shape"])
        data["init"] = self.init.to_dict() if self.init is not None else None
        # A model without context or init graph writes the manifest it always did.
        return {key: data[key] for key in self.KEYS if key not in ("context", "init") or data[key]}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def _check_self_consistent(self) -> None:
        if Path(self.step_graph).name != self.step_graph:
            raise ContractError(f"manifest: step_graph {self.step_graph!r} must be a file name in the model folder")
        names = [t.name for t in self.inputs] + [s.input for s in self.state] + [c.name for c in self.context]
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
        from_init = [s.input for s in self.state if s.init == "init"] + [c.name for c in self.context]
        if self.init is None and from_init:
            raise ContractError(f"manifest: {sorted(from_init)} start from the init graph, but there is none")
        if self.init is not None:
            if not from_init:
                raise ContractError("manifest: the init graph makes no state or context (set a state's init to 'init')")
            if self.init.graph == self.step_graph:
                raise ContractError("manifest: the init graph and the step graph must be different files")

    @property
    def state_bytes(self) -> int:
        """Bytes one session holds in the slabs: its state and its context."""
        return sum(s.nbytes for s in self.rows)

    @property
    def rows(self) -> tuple[RowSpec, ...]:
        """Everything kept per session in the slabs: the state, then the context."""
        return (*self.state, *self.context)

    @property
    def init_outputs(self) -> list[str]:
        """The init graph's outputs: the state inputs it starts, then the context tensors."""
        return [s.input for s in self.state if s.init == "init"] + [c.name for c in self.context]

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
    """Initial state for ``batch`` fresh sessions of a model without init graph, by graph input name."""
    return {s.input: np.zeros((batch, *s.shape), dtype=s.np_dtype) for s in manifest.rows}


def initial_rows(manifest: Manifest, made: Mapping[str, np.ndarray], batch: int = 1) -> dict[str, np.ndarray]:
    """The starting slab rows of ``batch`` sessions: the init graph's outputs (``made``), zeros elsewhere."""
    rows = zero_state(manifest, batch)
    for name in manifest.init_outputs:
        rows[name] = np.asarray(made[name], dtype=rows[name].dtype).reshape(rows[name].shape)
    return rows


def check_init_graph(manifest: Manifest, session: onnxruntime.InferenceSession) -> None:
    """Refuse an init graph whose signature differs from what the manifest says it makes."""
    assert manifest.init is not None
    rows = {r.input: r for r in manifest.rows}
    expected_in = {t.name: (t.dtype, t.shape, 1) for t in manifest.init.inputs}
    expected_out = {name: (rows[name].dtype, rows[name].shape, 1) for name in manifest.init_outputs}
    _check_signature("init graph", session, expected_in, expected_out)


def check_graph(manifest: Manifest, session: onnxruntime.InferenceSession) -> None:
    """Refuse a graph whose signature differs from the manifest's, naming the first mismatch."""
    expected_in: dict[str, tuple[str, tuple[int, ...], int]] = {}
    expected_out: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for t in manifest.inputs:
        expected_in[t.name] = (t.dtype, t.shape, 2)
    for t in manifest.outputs:
        expected_out[t.name] = (t.dtype, t.shape, 2)
    for s in manifest.state:
        expected_in[s.input] = (s.dtype, s.shape, 1)
        expected_out[s.output] = (s.dtype, s.shape, 1)
    for c in manifest.context:
        expected_in[c.name] = (c.dtype, c.shape, 1)
    _check_signature("graph", session, expected_in, expected_out)
    takes_one_step(manifest, session)  # a time axis fixed at another size is refused here


def takes_one_step(manifest: Manifest, session: onnxruntime.InferenceSession) -> bool:
    """Whether the step graph takes one step per call (its time axis fixed at 1) rather than any K.

    A chunk of K steps is then K calls in order (``LoadedModel.run``). A time axis fixed at
    another size, or fixed on some per-step tensors and not others, is refused (ContractError).
    """
    per_step = {t.name for t in (*manifest.inputs, *manifest.outputs)}
    fixed: dict[str, int | None] = {}
    for arg in (*session.get_inputs(), *session.get_outputs()):
        if arg.name in per_step:
            dim = list(arg.shape)[1]
            fixed[arg.name] = dim if isinstance(dim, int) else None
    sizes = set(fixed.values())
    if sizes - {1, None}:
        name, dim = next((n, d) for n, d in fixed.items() if d not in (1, None))
        raise ContractError(
            f"graph tensor {name!r}: its time axis (axis 1) is fixed at {dim}; make it dynamic (any chunk in one "
            "call), or fixed at 1 (one step per call)"
        )
    if len(sizes) > 1:
        raise ContractError(f"graph: the time axis is fixed at 1 on some per-step tensors and not others: {fixed}")
    return sizes == {1}


def _check_signature(
    what: str,
    session: onnxruntime.InferenceSession,
    expected_in: Mapping[str, tuple[str, tuple[int, ...], int]],
    expected_out: Mapping[str, tuple[str, tuple[int, ...], int]],
) -> None:
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for kind, graph, expected in (("input", graph_inputs, expected_in), ("output", graph_outputs, expected_out)):
        if set(graph) != set(expected):
            raise ContractError(f"{what} {kind}s {sorted(graph)} differ from the manifest's {sorted(expected)}")
        for name, (dtype, shape, leading) in expected.items():
            arg = graph[name]
            if arg.type != ORT_TYPES[dtype]:
                raise ContractError(f"{what} {kind} {name!r} has type {arg.type}, the manifest says {dtype}")
            dims = list(arg.shape)
            if len(dims) != leading + len(shape):
                raise ContractError(
                    f"{what} {kind} {name!r} has rank {len(dims)}, the manifest implies {leading + len(shape)}"
                )
            if isinstance(dims[0], int):
                raise ContractError(f"{what} {kind} {name!r}: the batch axis must be dynamic, it is fixed at {dims[0]}")
            for got, want in zip(dims[leading:], shape, strict=True):
                if isinstance(got, int) and got != want:
                    raise ContractError(
                        f"{what} {kind} {name!r} has shape {dims}, the manifest says [batch, ..., {list(shape)}]"
                    )


def replay_init_golden(
    manifest: Manifest, session: onnxruntime.InferenceSession
) -> tuple[dict[str, np.ndarray], float]:
    """Runs the init graph on its golden payload; returns the starting rows and the largest error.

    Raises ContractError when an output differs from the recorded one by more than the tolerance.
    """
    assert manifest.init is not None
    trace = manifest.init.golden
    feed = {
        t.name: np.asarray(trace.inputs[t.name], dtype=t.np_dtype).reshape(1, *t.shape) for t in manifest.init.inputs
    }
    names = manifest.init_outputs
    made = dict(zip(names, session.run(names, feed), strict=True))
    worst = 0.0
    for name, expected in trace.outputs.items():
        if name not in made:
            raise ContractError(f"init golden: {name!r} is not an init graph output")
        worst = max(worst, _max_error(f"init golden: output {name!r}", made[name], expected))
    if worst > trace.tolerance:
        raise ContractError(f"init golden trace mismatch: max |diff| {worst:.3g} > tolerance {trace.tolerance:g}")
    return initial_rows(manifest, made), worst


def _max_error(where: str, got: np.ndarray, expected: Any) -> float:
    want = np.asarray(expected, dtype=np.float64)
    if got.size != want.size:
        raise ContractError(f"{where}: {got.size} values, the trace records {want.size}")
    err = float(np.max(np.abs(got.reshape(want.shape).astype(np.float64) - want))) if want.size else 0.0
    if not np.isfinite(err):
        raise ContractError(f"{where} is not finite")
    return err


def replay_golden(
    manifest: Manifest,
    session: onnxruntime.InferenceSession,
    init_session: onnxruntime.InferenceSession | None = None,
) -> float:
    """Feed the golden trace one step at a time and return the largest output error.

    A model with an init graph starts from the init graph's answer to its golden payload
    (checked too). Raises ContractError when an error exceeds its trace's tolerance, so a
    loaded model is known to compute what its manifest recorded.
    """
    steps = len(next(iter(manifest.golden.inputs.values())))
    worst = 0.0
    if manifest.init is not None:
        if init_session is None:
            raise ContractError("the model has an init graph, but it was not given to the golden replay")
        rows, worst = replay_init_golden(manifest, init_session)
    else:
        rows = zero_state(manifest, 1)
    state = {s.input: rows[s.input] for s in manifest.state}
    context = {c.name: rows[c.name] for c in manifest.context}
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    for t in range(steps):
        feed: dict[str, np.ndarray] = {}
        for spec in manifest.inputs:
            step = np.asarray(manifest.golden.inputs[spec.name][t], dtype=spec.np_dtype)
            feed[spec.name] = step.reshape(1, 1, *spec.shape)
        feed.update(state)
        feed.update(context)
        results = dict(zip(out_names, session.run(out_names, feed), strict=True))
        for name, expected in manifest.golden.outputs.items():
            worst = max(worst, _max_error(f"golden step {t}: output {name!r}", results[name], expected[t]))
        state = {s.input: results[s.output] for s in manifest.state}
    if worst > manifest.golden.tolerance:
        raise ContractError(f"golden trace mismatch: max |diff| {worst:.3g} > tolerance {manifest.golden.tolerance:g}")
    return worst
