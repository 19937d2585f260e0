"""Model folders → loaded models: an ONNX Runtime session checked against its manifest.

A model is served only after its graph's signature matches the manifest and its golden trace
replays within tolerance; a folder that fails either is refused with one log line that says
why, and the server goes on with the others.

``StepCalls`` is how the scheduler calls a model without per-step allocation: preallocated feed
and result arrays for a batch of B sessions × K steps, bound to the graph once per (B, K) with
ONNX Runtime's IOBinding, so a call is one ``run_with_iobinding`` with no conversion of Python
dicts and no output allocation (about 6 µs less per call, ~25% of a tiny model's batch-1 call).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.buffers import HOST, Device, DeviceArray, StateBuffer, bind_input, bind_output, head, host
from service.contract import MANIFEST_FILE, ContractError, Manifest, check_graph, replay_golden
from service.errors import NotFound
from service.settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


Providers = list[str | tuple[str, dict[str, str]]]

#: CUDA provider options. TF32 matmuls are off: on Ampere and later they move an LSTM's logits
#: by ~3e-4 (measured on an H100), past the golden trace's 1e-4 tolerance, so the model would be
#: refused at load; fp32 keeps CUDA within 1e-5 of the CPU (6.2e-6 measured).
CUDA_OPTIONS = {"use_tf32": "0"}


def choose_providers(requested: str) -> Providers:
    """CUDA when asked for or when ``auto`` finds it, CPU otherwise (always as the fallback)."""
    available = ort.get_available_providers()
    if requested == "cuda" and CUDA not in available:
        raise RuntimeError(f"--provider cuda, but this onnxruntime offers only {available}")
    if requested == "cuda" or (requested == "auto" and CUDA in available):
        _preload_cuda_libraries()
        return [(CUDA, dict(CUDA_OPTIONS)), CPU]
    return [CPU]


def _preload_cuda_libraries() -> None:
    """Loads the CUDA/cuDNN libraries of pip's nvidia-* packages, where onnxruntime-gpu can use them.

    Without it, onnxruntime-gpu finds them only on the system's library path, and otherwise falls
    back to the CPU with one error line. ``preload_dlls`` exists from onnxruntime-gpu 1.21 on.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a missing library is reported by the CUDA provider itself
            log.warning("onnxruntime.preload_dlls failed: %s", exc)


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = "1" if settings.ort_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


@dataclass
class LoadedModel:
    """A manifest and the ONNX Runtime session that runs its step graph."""

    manifest: Manifest
    folder: Path
    session: ort.InferenceSession
    output_names: list[str] = field(default_factory=list)
    golden_error: float = 0.0

    @classmethod
    def from_folder(cls, folder: Path, settings: Settings) -> LoadedModel:
        """Loads and proves a model folder; raises ContractError naming what is wrong."""
        manifest = Manifest.load(folder)
        graph = folder / manifest.step_graph
        if graph.suffix != ".onnx" or not graph.is_file():
            raise ContractError(f"{graph}: step graph missing (only .onnx graphs are loaded)")
        try:
            session = ort.InferenceSession(
                str(graph), sess_options=session_options(settings), providers=choose_providers(settings.provider)
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise ContractError(f"{graph}: ONNX Runtime cannot load it ({exc})") from None
        check_graph(manifest, session)
        error = replay_golden(manifest, session)
        outputs = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
        return cls(manifest, folder, session, outputs, error)

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.name, self.manifest.version)

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    @property
    def providers(self) -> Providers:
        """Providers for helper graphs (the slab graphs) that must run on this model's device.

        Only the device and the options the server sets are carried over: the full option dict
        ORT reports holds entries (stream handles, arena settings) not meant to be passed back.
        """
        if self.provider != CUDA:
            return [CPU]
        return [(CUDA, {**CUDA_OPTIONS, "device_id": str(self._cuda_device_id())}), CPU]

    def _cuda_device_id(self) -> int:
        return int(self.session.get_provider_options().get(CUDA, {}).get("device_id", 0))

    def state_device(self, state_memory: str) -> Device:
        """Where this model's session state lives for ``--state-memory`` (see Settings).

        ``auto`` puts it on the device the model runs on: the GPU with CUDA (so it never crosses
        the bus), host memory with the CPU provider, where numpy's gather is cheaper than ORT's.
        """
        if state_memory == "host" or (state_memory == "auto" and self.provider != CUDA):
            return HOST
        if self.provider == CUDA:
            return Device("cuda", self._cuda_device_id())
        return Device("cpu")  # device-resident code path on host OrtValues (tests, CPU-only machines)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ONNX Runtime call; the result maps every output (and new state) by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))


Arrays = dict[str, np.ndarray]
StateBuffers = dict[str, StateBuffer]


class BatchCall:
    """The arrays of one (B, K) call: fill ``inputs`` and ``state``, ``run()``, read the results.

    ``inputs[name]`` is ``[B, K, *shape]``, ``state[input]`` is ``[B, *shape]``; after ``run()``,
    ``outputs[name]`` is ``[B, K, *shape]`` and ``new_state`` is keyed by the state's *input*
    name. With IOBinding the result arrays are views of buffers that the next call overwrites:
    copy what must outlive it (``reused`` says so). ``state`` and ``new_state`` are on the
    device when the slabs are (``StepCalls(state_device=...)``); inputs and outputs are always
    host arrays.
    """

    __slots__ = ("_binding", "_model", "inputs", "new_state", "outputs", "reused", "state")

    def __init__(
        self,
        model: LoadedModel,
        inputs: Arrays,
        state: StateBuffers,
        outputs: Arrays,
        new_state: StateBuffers,
        binding: ort.IOBinding | None,
    ) -> None:
        self._model = model
        self.inputs = inputs
        self.state = state
        self.outputs = outputs
        self.new_state = new_state
        self._binding = binding
        self.reused = binding is not None

    def run(self) -> None:
        """The ONNX Runtime call (releases the GIL while it computes)."""
        if self._binding is not None:
            # The C++ method directly: InferenceSession.run_with_iobinding is a thin wrapper, but
            # run_with_ort_values' Python wrapper costs tens of µs; neither is needed here.
            self._model.session._sess.run_with_iobinding(self._binding._iobinding, None)
            return
        results = self._model.run({**self.inputs, **{name: host(value) for name, value in self.state.items()}})
        self.outputs = {t.name: results[t.name] for t in self._model.manifest.outputs}
        self.new_state = {s.input: results[s.output] for s in self._model.manifest.state}


class StepCalls:
    """Preallocated, IOBound arrays for calls of up to ``max_batch`` sessions × K steps.

    State buffers hold ``max_batch`` rows; per-step buffers hold B × K session-steps and grow
    (doubling) up to ``max_steps``. A (B, K) call uses their leading rows, which are contiguous,
    so ORT reads and writes them in place. Bindings are made once per (B, K) and kept (the cache
    is cleared past ``max_bindings`` shapes). A call larger than ``max_steps`` gets fresh arrays
    and no binding, so a rare huge chunk does not pin its memory; so does every call when
    ``io_binding`` is off. One call at a time: the scheduler runs one batch at a time, and a
    call's buffers are only reused by the next.

    With ``state_device`` (device-resident slabs), the state buffers are allocated on that
    device and bound there, so the state never crosses the bus; the unbound fallback keeps host
    state buffers, which device slabs gather into and scatter from as well.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        io_binding: bool,
        max_batch: int,
        max_steps: int,
        max_bindings: int = 1024,
        state_device: Device = HOST,
    ) -> None:
        self.model = model
        self.io_binding = io_binding
        self.max_batch = max_batch
        self.max_steps = max(max_steps, max_batch)
        self.max_bindings = max_bindings
        self._calls: dict[tuple[int, int], BatchCall] = {}
        self.state_device = state_device
        self._state_in = self._state_buffers()
        self._state_out = self._state_buffers()
        self._capacity = 0  # session-steps the per-step buffers hold
        self._per_step: dict[str, np.ndarray] = {}

    def _state_buffers(self) -> dict[str, StateBuffer]:
        specs = self.model.manifest.state
        if self.state_device == HOST:
            return {s.input: np.zeros((self.max_batch, *s.shape), s.np_dtype) for s in specs}
        return {
            s.input: DeviceArray.empty((self.max_batch, *s.shape), np.dtype(s.np_dtype), self.state_device)
            for s in specs
        }

    def _grow(self, steps: int) -> None:
        capacity = min(max(steps, 2 * self._capacity, 64), self.max_steps)
        manifest = self.model.manifest
        self._per_step = {
            t.name: np.zeros((capacity, *t.shape), t.np_dtype) for t in (*manifest.inputs, *manifest.outputs)
        }
        self._capacity = capacity
        self._calls.clear()

    def prepare(self, steps: int = 1) -> None:
        """Binds every batch size up to max_batch for chunks of ``steps`` now (~50 µs each).

        Under load the batch size takes every value up to max_batch; binding each on first use
        would cost the event loop during the first seconds of traffic instead of at start.
        """
        if not self.io_binding:
            return
        for batch in range(1, self.max_batch + 1):
            self.get(batch, steps)

    def get(self, batch: int, steps: int) -> BatchCall:
        """The arrays (and binding) of a call of ``batch`` sessions × ``steps`` time steps."""
        call = self._calls.get((batch, steps))
        if call is not None:
            return call
        if not self.io_binding or batch > self.max_batch or batch * steps > self.max_steps:
            return self._unbound(batch, steps)
        if batch * steps > self._capacity:
            self._grow(batch * steps)
        if len(self._calls) >= self.max_bindings:
            self._calls.clear()
        call = self._calls[(batch, steps)] = self._bound(batch, steps)
        return call

    def _bound(self, batch: int, steps: int) -> BatchCall:
        manifest = self.model.manifest

        def per_step(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return self._per_step[name][: batch * steps].reshape(batch, steps, *shape)

        inputs = {t.name: per_step(t.name, t.shape) for t in manifest.inputs}
        outputs = {t.name: per_step(t.name, t.shape) for t in manifest.outputs}
        state = {name: head(buffer, batch) for name, buffer in self._state_in.items()}
        new_state = {name: head(buffer, batch) for name, buffer in self._state_out.items()}
        binding = self.model.session.io_binding()
        for name, buffer in (*inputs.items(), *state.items()):
            bind_input(binding, name, buffer)
        for name, array in outputs.items():
            bind_output(binding, name, array)
        for s in manifest.state:
            bind_output(binding, s.output, new_state[s.input])
        return BatchCall(self.model, inputs, state, outputs, new_state, binding)

    def _unbound(self, batch: int, steps: int) -> BatchCall:
        manifest = self.model.manifest
        inputs = {t.name: np.zeros((batch, steps, *t.shape), t.np_dtype) for t in manifest.inputs}
        state: StateBuffers = {s.input: np.zeros((batch, *s.shape), s.np_dtype) for s in manifest.state}
        return BatchCall(self.model, inputs, state, {}, {}, None)


def _model_folders(root: Path) -> Iterator[Path]:
    """Folders holding a manifest: ``root/name/`` or ``root/name/version/``."""
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / MANIFEST_FILE).is_file():
            yield child
        else:
            yield from sorted(g for g in child.iterdir() if g.is_dir() and (g / MANIFEST_FILE).is_file())


class Registry:
    """The loaded models, by name and version."""

    def __init__(self, models: list[LoadedModel]) -> None:
        self._models: dict[tuple[str, str], LoadedModel] = {}
        for model in models:
            if model.key in self._models:
                raise ContractError(f"model {model.key} is loaded twice ({model.folder})")
            self._models[model.key] = model

    @classmethod
    def from_folder(cls, root: Path, settings: Settings) -> Registry:
        if not root.is_dir():
            raise FileNotFoundError(f"models folder {root} does not exist")
        models = []
        for folder in _model_folders(root):
            try:
                model = LoadedModel.from_folder(folder, settings)
            except ContractError as exc:
                log.error("refusing model %s: %s", folder, exc, extra={"model_folder": str(folder)})
                continue
            log.info(
                "loaded model %s version %s from %s on %s (golden max diff %.2e, state %d bytes/session)",
                model.manifest.name,
                model.manifest.version,
                folder,
                model.provider,
                model.golden_error,
                model.manifest.state_bytes,
            )
            models.append(model)
        return cls(models)

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(sorted(self._models.values(), key=lambda m: m.key))

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The model of that name and version (the newest version when ``version`` is empty)."""
        if version:
            model = self._models.get((name, version))
            if model is None:
                raise NotFound(f"model {name!r} version {version!r} is not loaded")
            return model
        candidates = [m for (n, _), m in self._models.items() if n == name]
        if not candidates:
            raise NotFound(f"model {name!r} is not loaded; loaded: {sorted({n for n, _ in self._models})}")
        return max(candidates, key=lambda m: _version_key(m.manifest.version))


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
