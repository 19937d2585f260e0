"""Checkpoints and weights files: what a training run writes, and how it resumes.

A checkpoint holds everything needed to continue a run to the bit-identical result of an
uninterrupted one (the model, optimiser, schedule, step, every random generator, the carried
state and the loss history); a weights file holds the weights and the facts an exporter needs.
Files are written through a temporary file, so an interrupted save never leaves a torn one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"  # everything needed to resume (model, optimiser, RNGs, ...)
WEIGHTS_FILE = "weights.pt"  # the final weights and what produced them, for export
BEST_WEIGHTS_FILE = "best.pt"  # the weights with the lowest validation loss so far
LOSS_CURVE_FILE = "loss_curve.png"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FORMAT = "statestream-train-checkpoint/1"
WEIGHTS_FORMAT = "statestream-weights/1"


@dataclass(frozen=True)
class Weights:
    """A weights file: the state dict, the caller's metadata and the run that produced it."""

    model: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    training: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Every generator a run draws from: Python's, numpy's, torch's (and CUDA's)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """Write through a temporary file, so an interrupted save never leaves a torn file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_weights(path: Path, model: torch.nn.Module, metadata: Mapping[str, Any], training: Mapping[str, Any]) -> None:
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_atomic(
        {"format": WEIGHTS_FORMAT, "model": weights, "metadata": dict(metadata), "training": dict(training)}, path
    )


def load_weights(path: Path) -> Weights:
    """Read a weights file, or the model part of a resumable checkpoint; ValueError for any other file."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception:  # torch.load's EOFError, UnpicklingError, RuntimeError, KeyError... for a file not its own
        data = None
    if not isinstance(data, dict) or data.get("format") not in (WEIGHTS_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{path}: not a statestream weights file or checkpoint")
    return Weights(model=data["model"], metadata=dict(data["metadata"]), training=dict(data.get("training", {})))


def load_checkpoint(
    path: Path, config: Mapping[str, Any], metadata: Mapping[str, Any], resumable: Collection[str]
) -> dict[str, Any]:
    """A checkpoint to resume from; refused when it is of a different run (only ``resumable`` settings may differ)."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a statestream training checkpoint")
    saved = checkpoint["config"]
    changed = [name for name, value in config.items() if name not in resumable and saved.get(name) != value]
    if changed:
        raise ValueError(f"cannot resume: the checkpoint was trained with different {changed}")
    if dict(checkpoint["metadata"]) != dict(metadata):
        raise ValueError("cannot resume: the checkpoint's model / data metadata differ from this run's")
    return checkpoint
