"""Forecasters served: a session equals the offline run, a rollout leaves it where it was, bad input is refused.

The tiny models of ``tests/test_forecast.py`` are exported in a fixture and served by a real
server on a loopback port. The reference of every served number is the same ONNX graph run
offline (``training.tasks.forecaster.scoring``) from the zero state, one step per call: the server runs
the same float32 graph on the same inputs, so they agree to float32 rounding (1e-6; batching
cannot change a row).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service import command
from service.api import statestream_pb2 as pb
from service.client import commands
from service.client.forecast import DEFAULT_HORIZON, rollout_horizon
from service.client.sdk import Client, StepFailed, SyncSession
from service.datasets.mackey_glass import drifting_mackey_glass, mackey_glass
from service.servicers.models import model_info
from service.settings import Settings
from service.tensors import from_proto
from tests.servers import ServerThread
from tests.test_forecast import TINY, TINY_ADAPTIVE, export_tiny, graph_runner, numpy_rls
from training.checkpoints import WEIGHTS_FILE, load_weights
from training.tasks.forecaster.scoring import free_runs, teacher_forced
from training.tasks.forecaster.train import build_esn

TOLERANCE = 1e-6
MAX_RUN_STEPS = 100


@pytest.fixture(scope="module")
def forecast_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served_forecasters")
    export_tiny(TINY, root)
    export_tiny(TINY_ADAPTIVE, root)
    for run in root.glob("run_*"):  # the weights stay beside, not in the models folder
        run.rename(root.parent / f"{root.name}_{run.name}")
    return root


@pytest.fixture(scope="module")
def forecast_server(forecast_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=forecast_dir, max_run_steps=MAX_RUN_STEPS))
    yield running
    running.stop()


def observe(session: SyncSession, value: float) -> float:
    result = session.step(tensors={"observation": np.asarray([[value]], np.float32)})
    return float(from_proto(result.outputs[0].tensors[0])[0])


def rollout(session: SyncSession, horizon: int) -> tuple[np.ndarray, pb.RunDone]:
    answers = list(session.run(horizon))
    done = answers[-1]
    assert isinstance(done, pb.RunDone)
    return np.array([float(from_proto(a.output.tensors[0])[0]) for a in answers[:-1]]), done


SERIES = mackey_glass(400)


def test_a_forecast_session_equals_the_offline_run(forecast_server: ServerThread, forecast_dir: Path) -> None:
    runner = graph_runner(forecast_dir / "tiny_mg")
    want = teacher_forced(runner.step_fn, runner.manifest, SERIES[:200])
    with Client(forecast_server.target) as client:
        info = client.get_model("tiny_mg")
        assert info.task == "forecaster" and not info.task_info.run_moves_state
        session = client.open("tiny_mg")
        got = [observe(session, v) for v in SERIES[:200]]
    np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_model_info_says_the_longest_rollout_the_model_takes_here(forecast_server: ServerThread) -> None:
    with Client(forecast_server.target) as client:
        info = client.get_model("tiny_mg")
    assert info.task_info.max_run_steps == 50  # its max_horizon, under the server's --max-run-steps of 100
    runtime = forecast_server.server.runtimes.get("tiny_mg")
    assert model_info(runtime, max_run_steps=30).task_info.max_run_steps == 30  # the server's bound when smaller


def test_a_rollout_is_the_offline_free_run_and_does_not_move_the_session(
    forecast_server: ServerThread, forecast_dir: Path
) -> None:
    runner = graph_runner(forecast_dir / "tiny_mg")
    with Client(forecast_server.target) as client:
        session = client.open("tiny_mg")
        for v in SERIES[:150]:
            observe(session, v)
        forecast, done = rollout(session, 30)
        again, _ = rollout(session, 30)  # the same session, the same rollout: nothing moved
        after = [observe(session, v) for v in SERIES[150:200]]
    free = free_runs(runner.step_fn, runner.manifest, SERIES, [150], warmup=150, horizon=30)[0]
    np.testing.assert_allclose(forecast, free, atol=TOLERANCE)
    np.testing.assert_array_equal(again, forecast)
    assert (done.steps, done.stop_reason) == (30, "horizon")
    want = teacher_forced(runner.step_fn, runner.manifest, SERIES[:200])[150:]
    np.testing.assert_allclose(after, want, atol=TOLERANCE)  # as if no rollout had happened


def test_the_adaptive_session_equals_an_offline_rls_run_step_for_step(
    forecast_server: ServerThread, forecast_dir: Path
) -> None:
    series = drifting_mackey_glass(600, 300)
    weights = load_weights(forecast_dir.parent / f"{forecast_dir.name}_run_tiny_adaptive" / WEIGHTS_FILE)
    esn = build_esn(TINY_ADAPTIVE)
    esn.load_state_dict(weights.model)
    want = numpy_rls(esn, TINY_ADAPTIVE, series)
    with Client(forecast_server.target) as client:
        info = client.get_model("tiny_adaptive")
        d = TINY_ADAPTIVE.units + 2
        assert info.state_bytes == 4 * (TINY_ADAPTIVE.units + 2 * d + d * d)
        session = client.open("tiny_adaptive")
        got = np.array([observe(session, v) for v in series])
    # float32 graph against float64 numpy over 600 RLS updates: rounding only, far below the
    # one-step error itself (~1e-3 of the signal here).
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got[:-1] - series[1:]).mean() < 0.05  # and it forecasts


@pytest.mark.parametrize(
    ("request_kind", "payload", "code", "message"),
    [
        ("step", np.zeros((1, 2), np.float32), "INVALID_ARGUMENT", "the model takes [K, 1]"),
        ("step", np.full((1, 1), np.nan, np.float32), "INVALID_ARGUMENT", "NaN or Inf"),
        ("step", np.full((1, 1), np.inf, np.float32), "INVALID_ARGUMENT", "NaN or Inf"),
        ("step", np.zeros((2, 1), np.float32), "INVALID_ARGUMENT", "one observation per Step"),
        ("run", 51, "RESOURCE_EXHAUSTED", "max_horizon=50"),
        ("run", MAX_RUN_STEPS + 1, "RESOURCE_EXHAUSTED", "max_run_steps"),
    ],
)
def test_bad_input_is_refused_in_the_stream_and_the_session_goes_on_unchanged(
    forecast_server: ServerThread, forecast_dir: Path, request_kind: str, payload: object, code: str, message: str
) -> None:
    runner = graph_runner(forecast_dir / "tiny_mg")
    want = teacher_forced(runner.step_fn, runner.manifest, SERIES[:60])
    with Client(forecast_server.target) as client:
        session = client.open("tiny_mg")
        got = [observe(session, v) for v in SERIES[:30]]
        with pytest.raises(StepFailed) as raised:
            if request_kind == "step":
                session.step(tensors={"observation": payload})
            else:
                list(session.run(int(payload)))  # type: ignore[call-overload]
        assert raised.value.error.code_name == code and message in raised.value.error.message
        got += [observe(session, v) for v in SERIES[30:60]]
    np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_a_rollout_before_any_observation_is_refused(forecast_server: ServerThread) -> None:
    with Client(forecast_server.target) as client:
        session = client.open("tiny_mg")
        with pytest.raises(StepFailed) as raised:
            list(session.run(5))
    assert raised.value.error.code_name == "FAILED_PRECONDITION" and "no observation" in raised.value.error.message


# -- the client command --------------------------------------------------------------------------


def test_client_forecast_streams_held_out_data_with_rollouts(
    forecast_server: ServerThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "forecast.png"
    argv = ["forecast", "--target", forecast_server.target, "--model", "tiny_mg", "--series", "mackey_glass"]
    extra = ["--steps", "120", "--rollout-every", "50", "--horizon", "20", "--json", "--plot", str(png)]
    code = commands.main([*argv, *extra], environ={})
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["steps"] == 120 and 0 < summary["one_step_nrmse"] < 0.2
    assert [r["after"] for r in summary["rollouts"]] == [50, 100]
    assert all(0 < r["nrmse"] < 1.0 and r["horizon"] == 20 for r in summary["rollouts"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_forecast_refuses_what_it_cannot_do(
    forecast_server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["forecast", "--target", forecast_server.target, "--model", "tiny_mg"]

    def exit_code(*extra: str) -> int:  # through the one error path every command runs under
        return command.run(lambda: commands.main([*argv, *extra], environ={}))

    assert exit_code() == command.EXIT_USAGE  # which series? the model's name is none
    assert "--series" in capsys.readouterr().err
    refused = exit_code("--series", "mackey_glass", "--steps", "10", "--rollout-every", "5", "--horizon", "51")
    assert refused == command.EXIT_USAGE  # refused before a step streams: ModelInfo says 50
    assert "--horizon 51" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("horizon", "bound", "want"),
    [(None, 5, 5), (None, 500, DEFAULT_HORIZON), (None, 0, DEFAULT_HORIZON), (7, 7, 7), (600, 0, 600)],
    ids=["default-shortened", "default", "server-does-not-say", "asked-at-bound", "asked-unbounded"],
)
def test_the_rollout_horizon_keeps_within_what_model_info_allows(horizon: int | None, bound: int, want: int) -> None:
    info = pb.ModelInfo(task_info=pb.TaskInfo(max_run_steps=bound))
    assert rollout_horizon(argparse.Namespace(horizon=horizon, model="m"), info) == want


def test_a_horizon_past_what_model_info_allows_is_a_usage_error() -> None:
    info = pb.ModelInfo(task_info=pb.TaskInfo(max_run_steps=5))
    with pytest.raises(command.CommandError) as refused:
        rollout_horizon(argparse.Namespace(horizon=6, model="m"), info)
    assert refused.value.exit_code == command.EXIT_USAGE and "at most 5" in str(refused.value)
