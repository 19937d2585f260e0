"""Model folders → loaded models: an ONNX Runtime session checked against its manifest.

A model is served only after its graph's signature matches the manifest and its golden trace
replays within tolerance; a folder that fails either is refused with one log line that says
why, and the server goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract import MANIFEST_FILE, ContractError, Manifest, check_graph, replay_golden
from service.errors import NotFound
from service.settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: str) -> list[str]:
    """CUDA when asked for or when ``auto`` finds it, CPU otherwise (always as the fallback)."""
    available = ort.get_available_providers()
    if requested == "cuda":
        if CUDA not in available:
            raise RuntimeError(f"--provider cuda, but this onnxruntime offers only {available}")
        return [CUDA, CPU]
    if requested == "auto" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


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

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ONNX Runtime call; the result maps every output (and new state) by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))


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
