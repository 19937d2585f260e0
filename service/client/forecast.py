"""``statestream client forecast``: stream a held-out series to a forecaster, with rollouts along the way.

    statestream client forecast --model laser --steps 400 --rollout-every 100 --horizon 20 --json
    statestream client forecast --model mackey_glass --plot forecast.png

The series is the project's own (``service/datasets``, numpy only): the Santa Fe laser's held-out
20 %, or Mackey-Glass after its training part (``training/forecast_tasks.py``); ``--series``
picks it when the model's name is not one of them. ``--warmup`` observations before the
held-out part are streamed first (the reservoir needs them), then ``--steps`` held-out ones; the
command prints the one-step NRMSE of the predictions it got back. Every ``--rollout-every``
steps it asks for a rollout of ``--horizon`` steps (a Run, computed on a copy of the session's
row) and scores it against what the series really does next; the session goes on with the next
observation as if no rollout had happened. ``--plot`` draws truth, one-step predictions and the
rollouts (matplotlib, from the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, non_negative_int, positive_int
from service.tensors import from_proto

DESCRIPTION = "stream a held-out series to a forecaster; print its one-step error and H-step rollouts"
SERIES = ("laser", "mackey_glass", "mackey_glass_drift")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--series", choices=SERIES, help="the data to stream (default: the model's name)")
    parser.add_argument("--warmup", type=non_negative_int, default=200, help="observations streamed before scoring")
    parser.add_argument("--steps", type=positive_int, default=500, help="held-out observations streamed and scored")
    parser.add_argument("--rollout-every", type=non_negative_int, default=100, help="steps between rollouts (0: none)")
    parser.add_argument("--horizon", type=positive_int, default=20, help="steps of each rollout")
    parser.add_argument("--plot", type=Path, help="draw truth against the forecasts (needs matplotlib)")


def held_out_stream(series: str) -> tuple[np.ndarray, int]:
    """``(values, first_scored)``: the series to stream and where its held-out part starts."""
    if series == "laser":
        from service.datasets.laser import load_laser

        laser = load_laser()
        return np.concatenate([laser.train, laser.test]), len(laser.train)
    from service.datasets import mackey_glass as mg

    if series == "mackey_glass":
        return mg.mackey_glass(mg.MG_SAMPLES), mg.MG_TRAIN
    return mg.drifting_mackey_glass(mg.DRIFT_SAMPLES, mg.DRIFT_CHANGE), mg.DRIFT_CHANGE - 200


def forecast(client: Client, args: argparse.Namespace) -> int:
    if args.plot is not None and not _has_matplotlib():
        raise CommandError("--plot needs matplotlib", EXIT_USAGE, hint="pip install 'statestream[train]'")
    info = client.get_model(args.model)
    if info.task != "forecaster":
        raise CommandError(f"{args.model!r} is not a forecaster (its task is {info.task!r})", EXIT_USAGE)
    series = args.series or args.model
    if series not in SERIES:
        raise CommandError(f"say which data to stream: --series {{{','.join(SERIES)}}}", EXIT_USAGE)
    values, first = held_out_stream(series)
    start = first - args.warmup
    if start < 0 or first + args.steps > len(values):
        raise CommandError(
            f"--warmup and --steps must fit the series: {first} observations before the held-out part, "
            f"{len(values) - first} in it",
            EXIT_USAGE,
        )
    predictions: dict[int, float] = {}  # index t -> prediction of values[t + 1]
    rollouts: list[dict[str, Any]] = []
    session = client.open(args.model)
    try:
        for t in range(start, first + args.steps):
            result = session.step(tensors={"observation": np.asarray([[values[t]]], np.float32)})
            predictions[t] = float(from_proto(result.outputs[0].tensors[0])[0])
            scored = t - first + 1
            due = args.rollout_every and scored > 0 and scored % args.rollout_every == 0
            if due and t + args.horizon < len(values):
                path = [
                    float(from_proto(event.output.tensors[0])[0])
                    for event in session.run(args.horizon)
                    if isinstance(event, pb.RunOutput)
                ]
                truth = values[t + 1 : t + 1 + args.horizon]
                rollouts.append({"after": t, "forecast": path, "nrmse": _nrmse(np.asarray(path), truth, values)})
    finally:  # a refused step or run (StepFailed) is reported by the client's one error path
        session.close()
    scored_at = np.arange(first - 1, first + args.steps - 1)
    one_step = _nrmse(np.asarray([predictions[t] for t in scored_at]), values[scored_at + 1], values)
    summary: dict[str, Any] = {
        "model": args.model,
        "series": series,
        "warmup": args.warmup,
        "steps": args.steps,
        "one_step_nrmse": one_step,
        "rollouts": [{"after": r["after"] - first + 1, "horizon": args.horizon, "nrmse": r["nrmse"]} for r in rollouts],
    }
    if args.plot is not None:
        draw(args.plot, values, first, args.steps, predictions, rollouts, args.model)
        summary["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.model}: {args.steps} held-out steps of {series}, one-step NRMSE {one_step}")
        for row in summary["rollouts"]:
            print(f"  rollout after step {row['after']:>5}: {row['horizon']} steps, NRMSE {row['nrmse']}")
    return 0


def _nrmse(predicted: np.ndarray, truth: np.ndarray, values: np.ndarray) -> float:
    """RMSE over the standard deviation of the streamed series, 4 significant digits."""
    return float(f"{np.sqrt(np.mean(np.square(predicted - truth))) / values.std():.4g}")


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(
    path: Path,
    values: np.ndarray,
    first: int,
    steps: int,
    predictions: dict[int, float],
    rollouts: list[dict[str, Any]],
    model: str,
) -> None:
    """Truth, one-step predictions and each rollout over the held-out steps (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(first, first + steps)
    figure, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(t, values[t], color="black", linewidth=1.0, label="truth")
    ax.plot(
        t, [predictions[int(i) - 1] for i in t], color="tab:blue", linewidth=0.8, linestyle="--", label="one step ahead"
    )
    for index, rollout in enumerate(rollouts):
        ahead = np.arange(rollout["after"] + 1, rollout["after"] + 1 + len(rollout["forecast"]))
        ax.plot(ahead, rollout["forecast"], color="tab:red", linewidth=1.4, label="rollout" if index == 0 else None)
    ax.set_xlabel("time step")
    ax.set_title(f"{model}: truth against forecast")
    ax.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
