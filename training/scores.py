"""A model folder's scores: the numbers of its scorer's report, written into its manifest.

Torch-free, so ``statestream eval --record`` (which scores an imported model's graph with ONNX
Runtime alone) and every exporter (``onnx_export.record_scores``) write them the one same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.contract import Manifest


def write_scores(folder: Path, report: Mapping[str, Any], manifest: Manifest | None = None) -> dict[str, float]:
    """The report's numbers (not its flags or names) saved as ``folder``'s manifest's scores by the
    manifest's own writer; nothing else of the file changes. ``manifest``: the folder's, if loaded."""
    scores = {k: float(v) for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    replace(manifest if manifest is not None else Manifest.load(folder), scores=scores).save(folder)
    return scores
