"""A forecaster's scores, recomputed from its ONNX graph by its series' protocol (``series.score``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.contract import Manifest
from training.onnx_replay import open_session, ort_step_fn
from training.tasks.forecaster.scoring import GraphRunner
from training.tasks.forecaster.series import score


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """The series' scores from the ONNX graph (seconds: no progress bar)."""
    manifest = Manifest.load(folder)
    runner = GraphRunner(ort_step_fn(open_session(Path(folder) / manifest.step_graph)), manifest)
    return {"model": manifest.name, **score(str(manifest.decoding["series"]), runner)}
