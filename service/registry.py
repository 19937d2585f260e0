"""Model folders → loaded models: ONNX Runtime sessions checked against their manifest.

A model is served only after its task has a driver, its graphs' signatures (step, and init
where it has one) match the manifest, and its golden traces replay within tolerance; a folder
that fails any of these is refused with one log line that says why, and the server goes on
with the others. Execution providers are chosen in ``service.providers``; the call buffers of
the hot path are ``service.calls``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from service.buffers import HOST, Device
from service.contract import (
    MANIFEST_FILE,
    ContractError,
    Manifest,
    check_graph,
    check_init_graph,
    replay_golden,
    takes_one_step,
)
from service.errors import NotFound
from service.providers import CPU, CUDA, CUDA_OPTIONS, Providers, choose_providers, session_options
from service.settings import Settings

log = logging.getLogger(__name__)


class Kind(Protocol):
    """What the registry asks of a model's kind: does this manifest fit it (a driver class does)."""

    def check_manifest(self, manifest: Manifest) -> None: ...


#: The kind of a task, ContractError if none serves it: ``service.tasks.driver_class``, passed in
#: so that the registry names no driver.
KindOf = Callable[[str], Kind]


#: The loader's checks, in order: what ``ContractError.rule`` names.
LOAD_RULES = ("manifest", "task", "graph", "signature", "task_fit", "golden")


@contextmanager
def _rule(name: str) -> Iterator[None]:
    """Tags a ContractError raised inside with the loader check it failed."""
    try:
        yield
    except ContractError as exc:
        exc.rule = name
        raise


def _open_graph(folder: Path, name: str, what: str, settings: Settings) -> ort.InferenceSession:
    graph = folder / name
    if graph.suffix != ".onnx" or not graph.is_file():
        raise ContractError(f"{graph}: {what} graph missing (only .onnx graphs are loaded)")
    try:
        return ort.InferenceSession(
            str(graph), sess_options=session_options(settings), providers=choose_providers(settings.provider)
        )
    except Exception as exc:  # ORT raises its own exception types for unreadable graphs
        raise ContractError(f"{graph}: ONNX Runtime cannot load it ({exc})") from None


@dataclass
class LoadedModel:
    """A manifest and the ONNX Runtime sessions that run its step graph (and its init graph)."""

    manifest: Manifest
    folder: Path
    session: ort.InferenceSession
    output_names: list[str] = field(default_factory=list)
    golden_error: float = 0.0
    init_session: ort.InferenceSession | None = None
    #: The step graph's time axis is fixed at 1: a chunk of K steps runs as K calls (``run``).
    one_step_per_call: bool = False

    @classmethod
    def from_folder(cls, folder: Path, settings: Settings, kind_of: KindOf) -> LoadedModel:
        """Loads and proves a model folder; raises ContractError naming what is wrong (its ``rule``, which check)."""
        with _rule("manifest"):
            manifest = Manifest.load(folder)
        with _rule("task"):
            kind = kind_of(manifest.task)  # an unknown task is refused here, naming the known ones
        with _rule("graph"):
            session = _open_graph(folder, manifest.step_graph, "step", settings)
        with _rule("signature"):
            check_graph(manifest, session)
        with _rule("task_fit"):
            kind.check_manifest(manifest)  # a graph that fits its manifest but not its kind
        init_session = None
        if manifest.init is not None:
            with _rule("graph"):
                init_session = _open_graph(folder, manifest.init.graph, "init", settings)
            with _rule("signature"):
                check_init_graph(manifest, init_session)
        with _rule("golden"):
            error = replay_golden(manifest, session, init_session)
        outputs = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
        return cls(manifest, folder, session, outputs, error, init_session, takes_one_step(manifest, session))

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
        A model with no state and no context (a whole-sequence classifier) keeps nothing per
        session: it stays on the host, since device slabs of no tensors would be graphs of no node.
        """
        if state_memory == "host" or (state_memory == "auto" and self.provider != CUDA) or not self.manifest.rows:
            return HOST
        if self.provider == CUDA:
            return Device("cuda", self._cuda_device_id())
        return Device("cpu")  # device-resident code path on host OrtValues (tests, CPU-only machines)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ONNX Runtime call (K in order for a K-step chunk of a one-step graph); every output and new state by name."""
        if self.one_step_per_call:
            steps = feed[self.manifest.inputs[0].name].shape[1]
            if steps > 1:
                return self._run_steps(feed, steps)
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def _run_steps(self, feed: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
        """A chunk through a graph that takes one step per call: K calls, each step's state fed to the next.

        Nothing is returned (so no state is written) unless every call succeeds."""
        per_step = [t.name for t in self.manifest.inputs]
        current = dict(feed)
        made: list[dict[str, np.ndarray]] = []
        for t in range(steps):
            current.update((name, feed[name][:, t : t + 1]) for name in per_step)
            results = dict(zip(self.output_names, self.session.run(self.output_names, current), strict=True))
            current.update((s.input, results[s.output]) for s in self.manifest.state)
            made.append(results)
        joined = {t.name: np.concatenate([r[t.name] for r in made], axis=1) for t in self.manifest.outputs}
        return {**joined, **{s.output: made[-1][s.output] for s in self.manifest.state}}

    def run_init(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The init graph over ``[B, *shape]`` payloads: each session's starting state and context."""
        assert self.init_session is not None, "the model has no init graph"
        names = self.manifest.init_outputs
        return dict(zip(names, self.init_session.run(names, feed), strict=True))


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
    def from_folder(cls, root: Path, settings: Settings, kind_of: KindOf) -> Registry:
        if not root.is_dir():
            raise FileNotFoundError(f"models folder {root} does not exist")
        models = []
        for folder in _model_folders(root):
            try:
                model = LoadedModel.from_folder(folder, settings, kind_of)
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
