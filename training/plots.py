"""The loss curve every training run writes beside its weights (``loss_curve.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.history import History


def save_loss_curve(
    history: History, path: Path, title: str, *, ylabel: str = "loss (nats per item)", log: bool = False
) -> None:
    """Plot train loss per step (raw and smoothed) and validation loss per evaluation (``log``: a
    log y axis, for losses that fall by decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if history.train:
        steps = np.arange(1, len(history.train) + 1)
        ax.plot(steps, history.train, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        window = min(50, len(history.train))
        smooth = np.convolve(history.train, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train ({window}-step mean)")
    if history.val:
        val_steps, val_losses = zip(*history.val, strict=True)
        ax.plot(val_steps, val_losses, "o-", color="tab:orange", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
