"""``statestream client forecast``: stream a held-out series to a forecaster, with rollouts along the way.

    statestream client forecast --model laser --steps 400 --rollout-every 100 --horizon 20 --json
    statestream client forecast --model mackey_glass_gru --plot forecast.png

The series is the project's own (``service/datasets``, numpy only): the Santa Fe laser's held-out
20 %, or Mackey-Glass after its training part; by default the one the model's name starts with.
``--warmup`` observations before the held-out part are streamed first (a reservoir needs them),
then ``--steps`` held-out ones, and the command prints the one-step NRMSE. Every
``--rollout-every`` steps it asks for a rollout (a Run on a copy of the session's row) and
scores it against what the series does next; the session goes on as if none had happened. A
rollout is ``--horizon`` steps, or by default 20 or the most the server lets a Run of the model
take if that is less (``TaskInfo.max_run_steps``: the model's ``max_horizon`` or the server's
``--max-run-steps``); a ``--horizon`` over it is refused before anything streams. ``--plot``
draws it all (matplotlib, the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.plots import check_drawing
from service.client.registry import command, served_model
from service.client.sdk import Client, SyncSession
from service.command import EXIT_USAGE, UINT32_MAX, CommandError, int_in, non_negative_int, positive_int
from service.tensors import from_proto

DESCRIPTION = "stream a held-out series to a forecaster; print its one-step error and H-step rollouts"
SERIES = ("laser", "mackey_glass", "mackey_glass_drift")
#: Steps of a rollout when --horizon is not given (fewer for a model that rolls out fewer).
DEFAULT_HORIZON = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument(
        "--series", choices=SERIES, help="the data to stream (default: the series the model's name starts with)"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=200, help="observations streamed before scoring")
    parser.add_argument("--steps", type=positive_int, default=500, help="held-out observations streamed and scored")
    parser.add_argument("--rollout-every", type=non_negative_int, default=100, help="steps between rollouts (0: none)")
    parser.add_argument(
        "--horizon",
        type=int_in(1, UINT32_MAX),
        help=f"steps of each rollout (default: {DEFAULT_HORIZON}, or the most a Run of the model may take where that is less)",
    )
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


@command("forecast", DESCRIPTION, add_arguments, tasks=("forecaster",))
def forecast(client: Client, args: argparse.Namespace) -> int:
    if args.plot is not None:
        check_drawing("--plot", args.plot)
    horizon = rollout_horizon(args, served_model(client, args))
    series = series_of(args)
    values, first = held_out_stream(series)
    start = first - args.warmup
    if start < 0 or first + args.steps > len(values):
        raise CommandError(
            f"--warmup and --steps must fit the series: {first} observations before the held-out part, "
            f"{len(values) - first} in it",
            EXIT_USAGE,
        )
    predictions, rollouts = _stream(client, args, values, range(start, first + args.steps), first, horizon)
    scored_at = np.arange(first - 1, first + args.steps - 1)
    one_step = _nrmse(np.asarray([predictions[t] for t in scored_at]), values[scored_at + 1], values)
    summary: dict[str, Any] = {
        "model": args.model,
        "series": series,
        "warmup": args.warmup,
        "steps": args.steps,
        "one_step_nrmse": one_step,
        "rollouts": [
            {"after": r["after"] - first + 1, "horizon": len(r["forecast"]), "nrmse": r["nrmse"]} for r in rollouts
        ],
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


def series_of(args: argparse.Namespace) -> str:
    """``--series``, or else the longest series name the model's name starts with."""
    if args.series is not None:
        return str(args.series)
    named = [s for s in SERIES if args.model == s or args.model.startswith(s + "_")]
    if not named:
        raise CommandError(f"say which data to stream: --series {{{','.join(SERIES)}}}", EXIT_USAGE)
    return max(named, key=len)


def rollout_horizon(args: argparse.Namespace, info: pb.ModelInfo) -> int:
    """The steps of each rollout: ``--horizon``, or DEFAULT_HORIZON, never more than a Run of the
    model may take on this server (its ModelInfo says; 0 there means it does not say)."""
    bound = info.task_info.max_run_steps
    if args.horizon is None:
        return min(DEFAULT_HORIZON, bound) if bound else DEFAULT_HORIZON
    if bound and args.horizon > bound:
        raise CommandError(
            f"--horizon {args.horizon}: model {args.model!r} rolls out at most {bound} steps on this server",
            EXIT_USAGE,
        )
    return int(args.horizon)


def _stream(
    client: Client, args: argparse.Namespace, values: np.ndarray, times: range, first: int, horizon: int
) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """Streams ``values[times]`` over one session, rolling out ``horizon`` steps every
    ``--rollout-every``; returns the one-step predictions and the rollouts."""
    predictions: dict[int, float] = {}  # index t -> prediction of values[t + 1]
    rollouts: list[dict[str, Any]] = []
    session = client.open(args.model)
    try:
        for t in times:
            result = session.step(tensors={"observation": np.asarray([[values[t]]], np.float32)})
            predictions[t] = float(from_proto(result.outputs[0].tensors[0])[0])
            scored = t - first + 1
            due = args.rollout_every and scored > 0 and scored % args.rollout_every == 0
            if due and t + horizon < len(values):
                path = _rollout_path(session, horizon)
                truth = values[t + 1 : t + 1 + horizon]
                rollouts.append({"after": t, "forecast": path, "nrmse": _nrmse(np.asarray(path), truth, values)})
    finally:  # a refused step or run (StepFailed) is reported by the client's one error path
        session.close()
    return predictions, rollouts


def _rollout_path(session: SyncSession, horizon: int) -> list[float]:
    return [
        float(from_proto(event.output.tensors[0])[0])
        for event in session.run(horizon)
        if isinstance(event, pb.RunOutput)
    ]


def _nrmse(predicted: np.ndarray, truth: np.ndarray, values: np.ndarray) -> float:
    """RMSE over the standard deviation of the streamed series, 4 significant digits."""
    return float(f"{np.sqrt(np.mean(np.square(predicted - truth))) / values.std():.4g}")


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
