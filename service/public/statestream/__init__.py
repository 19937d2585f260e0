"""``import statestream``: the public face of the project, one import for a user's code.

The SDK (``Client``, ``AsyncClient``, typed ``SessionOptions``, ``outputs_of`` for a step's
answers as numpy), and the two ways in for a model of one's own: ``import_onnx`` (a stateful
ONNX graph and its spec, ``statestream import``) and ``export_module`` / ``export_rnn`` (a
PyTorch step module, ``training.module_export``; needs the ``train`` extra). The package lives
in ``service/public/`` and installs as ``statestream`` (pyproject's ``packages.find``), so the
product's top-level folders stay as they are; the heavy parts are imported on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.sdk import AsyncClient, AsyncSession, Client, SessionOptions, StepFailed, SyncSession
from service.tensors import from_proto

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.importer.folder import ImportReport
    from service.importer.spec import ImportSpec

try:
    __version__ = version("statestream")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "SessionOptions",
    "StepFailed",
    "SyncSession",
    "__version__",
    "export_module",
    "export_rnn",
    "import_onnx",
    "outputs_of",
    "to_numpy",
]


def to_numpy(tensor: pb.Tensor) -> np.ndarray:
    """One Tensor of an answer as a numpy array of its dtype and shape."""
    return from_proto(tensor)


def outputs_of(result: pb.StepResult) -> list[dict[str, np.ndarray]]:
    """A step's answer as numpy: one dict of output name → array per time step it answered."""
    return [{tensor.name: from_proto(tensor) for tensor in out.tensors} for out in result.outputs]


def import_onnx(
    graph: str | Path, spec: str | Path | ImportSpec, out: str | Path, *, name: str | None = None,
    task: str = "sequence_model",
) -> ImportReport:  # fmt: skip
    """``statestream import`` as a function: wraps ``graph`` as ``spec`` (a TOML file or an ImportSpec) says
    and writes the model folder ``out``; ImportRefused (a ValueError) names the check that failed."""
    from service.importer.folder import import_onnx as run
    from service.importer.spec import ImportSpec

    loaded = spec if isinstance(spec, ImportSpec) else ImportSpec.load(Path(spec))
    return run(Path(graph), loaded, Path(out), name=name, task=task)


def export_module(module: Any, out: str | Path, **options: Any) -> ImportReport:
    """Exports a PyTorch step module ``(x, state) -> (y, state)`` to a model folder: see
    ``training.module_export.export_module`` for its options. Needs the ``train`` extra (torch)."""
    report: ImportReport = _module_export().export_module(module, Path(out), **options)
    return report


def export_rnn(rnn: Any, head: Any, out: str | Path, **options: Any) -> ImportReport:
    """Exports an ``nn.GRU``/``nn.LSTM`` stack with a head to a model folder: see
    ``training.module_export.export_rnn``. Needs the ``train`` extra (torch)."""
    report: ImportReport = _module_export().export_rnn(rnn, head, Path(out), **options)
    return report


def _module_export() -> Any:
    try:
        from training import module_export
    except ImportError as exc:
        raise ImportError(
            f"exporting a PyTorch module needs the 'train' extra ({exc}): pip install 'statestream[cpu,train]'"
        ) from exc
    return module_export
