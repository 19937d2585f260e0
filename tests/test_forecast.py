"""Forecasting on the training side: the data, the ESN against its equations, RLS against numpy, export parity.

Tiny reservoirs (20 and 12 units) keep this fast; the shipped models' scores are re-checked
from their ONNX graphs at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract import Manifest
from service.datasets.laser import LASER_PATH, load_laser
from service.datasets.mackey_glass import DRIFT_CHANGE, drifting_mackey_glass, mackey_glass
from training.checkpoints import WEIGHTS_FILE
from training.experiments.drift_ceiling import Ceiling, ceiling
from training.nets.cell_step import CellStepNet
from training.onnx_export import ParityError
from training.onnx_replay import open_session, ort_step_fn
from training.recipes import RecipeError, from_table
from training.tasks import ExportOptions, TrainOptions
from training.tasks.forecaster.esn import AdaptiveESN, EchoStateNetwork, state_bytes
from training.tasks.forecaster.evaluate import evaluate
from training.tasks.forecaster.export import check_forecast_parity, export
from training.tasks.forecaster.free_run_training import window_loss
from training.tasks.forecaster.gated_net import GatedForecaster
from training.tasks.forecaster.recipe import ForecastRecipe, FreeRunTraining
from training.tasks.forecaster.scoring import GraphRunner, free_runs, teacher_forced
from training.tasks.forecaster.train import build_esn, train, wrap

ROOT = Path(__file__).resolve().parent.parent

TINY = ForecastRecipe(
    name="tiny_mg",
    task="forecaster",
    series="mackey_glass",
    net="esn",
    description="a tiny test ESN",
    out="unused",
    units=20,
    spectral_radius=0.9,
    leak=0.5,
    input_scaling=0.5,
    ridge=1e-8,
    washout=100,
    max_horizon=50,
)
TINY_ADAPTIVE = replace(
    TINY,
    name="tiny_adaptive",
    series="mackey_glass_drift",
    net="adaptive_esn",
    units=12,
    forgetting=0.998,
    p_start=0.01,
    renewal=0.003,
    p_renewed=1000.0,
)

TINY_GRU = ForecastRecipe(
    name="tiny_gru",
    task="forecaster",
    series="mackey_glass",
    net="gru",
    description="a tiny test GRU",
    out="unused",
    units=6,
    max_horizon=50,
    bptt=FreeRunTraining(steps=12, batch=8, warmup=40, burn=20, horizon=10, eval_every=6),
)


def export_tiny(recipe: ForecastRecipe, root: Path) -> Path:
    """Train and export ``recipe`` through the task's own commands; returns the model folder."""
    run = root / f"run_{recipe.name}"
    train(recipe, TrainOptions(recipe_file=Path(f"{recipe.name}.toml"), out=str(run), progress=False))
    export(ExportOptions(checkpoint=run / WEIGHTS_FILE, out=root / recipe.name))
    return root / recipe.name


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forecasters")
    export_tiny(TINY, root)
    export_tiny(TINY_ADAPTIVE, root)
    export_tiny(TINY_GRU, root)
    return root


def graph_runner(folder: Path) -> GraphRunner:
    manifest = Manifest.load(folder)
    return GraphRunner(ort_step_fn(open_session(folder / manifest.step_graph)), manifest)


# -- data --------------------------------------------------------------------------------------


def test_the_bundled_laser_is_the_documented_file_split_80_20() -> None:
    assert hashlib.md5(LASER_PATH.read_bytes()).hexdigest() == "1541ee6df55d82a111c5bbe0c4cbffc6"
    laser = load_laser()
    assert (len(laser.train), len(laser.test)) == (8074, 2019)
    assert laser.mean == pytest.approx(laser.train.mean()) and laser.test.min() >= 0 and laser.test.max() <= 255


def test_mackey_glass_is_chaotic_in_its_usual_range_and_drifts_only_after_the_change() -> None:
    series = mackey_glass(1500)
    assert 0.35 < series.min() < 0.5 and 1.2 < series.max() < 1.4  # the tau = 17 attractor's range
    drifting = drifting_mackey_glass(1500, 1000)
    # One integration: identical until tau changes (the delayed term reaches back 17, then 23, units).
    np.testing.assert_array_equal(drifting[:1000], series[:1000])
    assert np.abs(drifting[1100:] - series[1100:]).max() > 0.1
    assert DRIFT_CHANGE > 0


# -- the networks against their equations ---------------------------------------------------------


def test_an_esn_step_is_the_leaky_reservoir_and_linear_readout_of_its_docstring() -> None:
    net = EchoStateNetwork(units=15, spectral_radius=0.8, leak=0.3, input_scaling=0.7, seed=4).double()
    rng = np.random.default_rng(0)
    net.w_out.copy_(torch.from_numpy(rng.normal(size=(1, net.features))))
    net.mean.fill_(2.0)
    net.std.fill_(3.0)
    w, w_in, w_out = (t.numpy() for t in (net.w, net.w_in, net.w_out))
    assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(0.8)
    r = np.zeros(15)
    state = net.initial_state(1)[0].double()
    for u in rng.normal(2.0, 3.0, size=30):
        u_norm = (u - 2.0) / 3.0
        r = 0.7 * r + 0.3 * np.tanh(w @ r + w_in @ np.array([1.0, u_norm]))
        want = 2.0 + 3.0 * (w_out @ np.concatenate([[1.0, u_norm], r]))[0]
        with torch.no_grad():
            got, state = net(torch.tensor([[[u]]], dtype=torch.float64), state)
        assert float(got) == pytest.approx(want, abs=1e-12)  # float64, same operations
        np.testing.assert_allclose(state[0].numpy(), r, atol=1e-12)


def numpy_rls(esn: EchoStateNetwork, recipe: ForecastRecipe, series: np.ndarray) -> np.ndarray:
    """Offline RLS in float64, written from AdaptiveESN's equations: the predictions of series[t + 1]."""
    lam, eps = recipe.forgetting, recipe.renewal
    mean, std = float(esn.mean[0]), float(esn.std[0])
    w_res, w_in = esn.w.double().numpy(), esn.w_in.double().numpy()
    d = esn.features
    w = esn.w_out[0].double().numpy().copy()
    p = np.eye(d) * recipe.p_start
    r, z = np.zeros(esn.units), np.zeros(d)
    out = []
    for u in series:
        u_norm = (u - mean) / std
        k = p @ z / (lam + z @ p @ z)
        w = w + k * (u_norm - w @ z)
        p = (1 - eps) * (p - np.outer(k, z @ p)) / lam + eps * recipe.p_renewed * np.eye(d)
        r = (1 - esn.leak) * r + esn.leak * np.tanh(w_res @ r + w_in @ np.array([1.0, u_norm]))
        z = np.concatenate([[1.0, u_norm], r])
        out.append(mean + std * (w @ z))
    return np.array(out)


def tiny_adaptive_net() -> tuple[EchoStateNetwork, AdaptiveESN]:
    esn = build_esn(TINY_ADAPTIVE)
    esn.fit(mackey_glass(1500).reshape(-1, 1), washout=100, ridge=1e-8)
    return esn, wrap(TINY_ADAPTIVE, esn)


def test_the_adaptive_step_is_recursive_least_squares_step_for_step() -> None:
    esn, net = tiny_adaptive_net()
    series = drifting_mackey_glass(400, 200)
    want = numpy_rls(esn, TINY_ADAPTIVE, series)
    net64 = net.double()
    state = net64.initial_state(1)
    got = []
    with torch.no_grad():
        for u in series:
            y, *state = net64(torch.tensor([[[u]]], dtype=torch.float64), *state)
            got.append(float(y))
    np.testing.assert_allclose(got, want, atol=1e-9)  # float64 both; only the summation order differs
    assert state_bytes(net) == 4 * (12 + 2 * 14 + 14 * 14)  # r, z, w, P: 4 * (N + 2D + D^2), D = N + 2


# -- gated forecasters -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_gated_forecaster_adds_its_readout_to_the_normalised_observation(cell: str) -> None:
    """y_t = μ + σ (ũ_t + W_o h_t + b_o): the cells see ũ, the readout gives the change."""
    torch.manual_seed(0)
    net = GatedForecaster(cell, hidden=5, layers=2, mean=1.5, std=0.25)
    u = 1.5 + 0.25 * torch.randn(3, 7, 1)
    stack = CellStepNet.build(cell, input_size=1, hidden_size=5, layers=2, readout_size=1)
    stack.load_state_dict(net.stack.state_dict())
    normalised = (u - 1.5) / 0.25
    change, *want_state = stack(normalised, *stack.initial_state(3))
    got, *got_state = net(u, *net.initial_state(3))
    torch.testing.assert_close(got, 1.5 + 0.25 * (normalised + change))
    for a, b in zip(got_state, want_state, strict=True):
        torch.testing.assert_close(a, b)


def test_the_window_loss_scores_teacher_forced_steps_after_the_burn_then_a_free_run() -> None:
    torch.manual_seed(0)
    net = GatedForecaster("gru", hidden=4, mean=0.9, std=0.2)
    windows = torch.from_numpy(mackey_glass(200)[:60].astype(np.float32)).reshape(2, 30)
    warmup, burn, horizon = 20, 5, 10
    errors = []
    with torch.no_grad():
        for window in windows:
            state = net.initial_state(1)
            for t in range(warmup):  # one step per call, teacher-forced
                y, *state = net(window[t].reshape(1, 1, 1), *state)
                if t >= burn:
                    errors.append(float(y) - float(window[t + 1]))
            for t in range(warmup + 1, warmup + horizon):  # its own predictions fed back
                y, *state = net(y, *state)
                errors.append(float(y) - float(window[t]))
        got = float(window_loss(net, windows, warmup, burn, horizon))
    want = np.mean(np.square(errors)) / 0.2**2
    assert got == pytest.approx(want, rel=1e-5)


def test_a_gated_recipe_has_no_reservoir_and_a_reservoir_has_no_bptt_table() -> None:
    table = {k: v for k, v in TINY_GRU.to_dict().items() if k != "bptt"}
    with pytest.raises(RecipeError, match="a gru forecaster has no reservoir: leave out spectral_radius"):
        from_table(ForecastRecipe, table | {"spectral_radius": 0.5}, where="r.toml")
    esn = {k: v for k, v in TINY.to_dict().items() if k != "bptt"}
    with pytest.raises(RecipeError, match=r"the \[bptt\] table belongs to a gru or lstm forecaster"):
        from_table(ForecastRecipe, esn | {"bptt": {"steps": 10}}, where="r.toml")
    with pytest.raises(RecipeError, match="burn must be in"):
        from_table(ForecastRecipe, table | {"bptt": {"warmup": 10, "burn": 10}}, where="r.toml")
    with pytest.raises(RecipeError, match="curriculum must be in"):
        from_table(ForecastRecipe, table | {"bptt": {"curriculum": 0}}, where="r.toml")


def test_an_adaptive_recipe_whose_inverse_correlation_would_grow_without_bound_is_refused() -> None:
    adaptive = {k: v for k, v in TINY_ADAPTIVE.to_dict().items() if k != "bptt"}
    # 1/0.995 - 1 = 0.005: a renewal of 0.003 leaves P growing as 0.995^-t in unexcited directions.
    with pytest.raises(RecipeError, match=r"renewal must be in \(1/forgetting - 1, 1\) = \(0.005025, 1\)"):
        from_table(ForecastRecipe, adaptive | {"forgetting": 0.995, "renewal": 0.003}, where="r.toml")
    assert (
        from_table(ForecastRecipe, adaptive | {"forgetting": 0.995, "renewal": 0.008}, where="r.toml").renewal == 0.008
    )


# -- export ---------------------------------------------------------------------------------------


def test_the_export_records_parity_over_free_runs_and_eval_recomputes_the_scores(tiny_models: Path) -> None:
    for name, horizon in (("tiny_mg", 84), ("tiny_adaptive", 5), ("tiny_gru", 84)):
        folder = tiny_models / name
        manifest = Manifest.load(folder)
        facts = manifest.training
        assert facts["parity_free_run_horizon"] == horizon
        scale = 1e-3 * float(np.std(mackey_glass(10_000)[6000:]))
        assert 0 < facts["parity_free_run_max_abs_diff"] <= scale  # the bound export enforced
        assert manifest.scores and evaluate(folder) == {"model": name, **manifest.scores}
    assert np.isfinite(Manifest.load(tiny_models / "tiny_mg").scores["nrmse84"])  # scored from the graph


def test_a_graph_that_computes_something_else_is_refused(tiny_models: Path) -> None:
    folder = tiny_models / "tiny_mg"
    manifest = Manifest.load(folder)
    other = replace(TINY, seed=1)
    esn = build_esn(other)
    esn.fit(mackey_glass(2000).reshape(-1, 1), washout=100, ridge=1e-8)
    with pytest.raises(ParityError, match="differ from PyTorch"):
        check_forecast_parity(esn, open_session(folder / manifest.step_graph), manifest, mackey_glass(1500), horizon=84)


def test_the_graphs_free_run_is_the_nets_free_run_in_float32(tiny_models: Path) -> None:
    """The exported graph fed its own predictions tracks the float64 net to float32 precision over 84 steps."""
    folder = tiny_models / "tiny_mg"
    runner = graph_runner(folder)
    series = mackey_glass(3000)
    graph = free_runs(runner.step_fn, runner.manifest, series, [1000, 2000], warmup=300, horizon=84)
    assert np.abs(graph - series[[[s + h for h in range(84)] for s in (1000, 2000)]]).max() < 0.2  # it forecasts
    assert np.isfinite(teacher_forced(runner.step_fn, runner.manifest, series[:100])).all()


# -- the shipped models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "renamed",
    [{"task": "kind"}, {"task": "kind", "series": "task"}],
    ids=["task-was-kind", "series-was-task-and-task-was-kind"],
)
def test_a_weights_file_whose_recipe_uses_the_old_key_names_still_exports(
    tiny_models: Path, tmp_path: Path, renamed: dict[str, str]
) -> None:
    """Weights written before the recipe's ``kind`` was named ``task`` (and, before that, its ``task``
    was named ``series``) export as they did."""
    import torch

    data = torch.load(tiny_models / "run_tiny_mg" / WEIGHTS_FILE, weights_only=True)
    recipe = data["metadata"]["recipe"]
    data["metadata"]["recipe"] = {renamed.get(key, key): value for key, value in recipe.items()}
    torch.save(data, tmp_path / WEIGHTS_FILE)
    export(ExportOptions(checkpoint=tmp_path / WEIGHTS_FILE, out=tmp_path / "model"))
    manifest = Manifest.load(tmp_path / "model")
    assert manifest.decoding["series"] == "mackey_glass" and manifest.training["recipe"]["task"] == "forecaster"


@pytest.mark.parametrize("name", ["mackey_glass", "laser", "mackey_glass_adaptive", "mackey_glass_gru"])
def test_eval_recomputes_the_shipped_scores(name: str) -> None:
    folder = ROOT / "models" / name
    recorded = Manifest.load(folder).scores
    assert recorded
    assert {k: v for k, v in evaluate(folder).items() if k != "model"} == pytest.approx(dict(recorded), rel=1e-3)


@pytest.mark.parametrize(("name", "floor"), [("mackey_glass", 1e-3), ("mackey_glass_gru", 1e-2)])
def test_the_shipped_mackey_glass_forecasters_meet_their_floors(name: str, floor: float) -> None:
    scores = Manifest.load(ROOT / "models" / name).scores
    assert scores["nrmse84"] <= floor and scores["trials"] >= 20


def _shipped_adaptive_ceiling(tau_after: float) -> Ceiling:
    """The best fixed readouts, before and after the change to ``tau_after``, over the shipped reservoir."""
    from training.recipes import load_recipe, recipe_path

    recipe = load_recipe(recipe_path("mackey_glass_adaptive"))
    return ceiling(
        recipe.units,
        recipe.spectral_radius,
        recipe.leak,
        recipe.input_scaling,
        bias_scaling=recipe.bias_scaling,
        seed=recipe.seed,
        tau_after=tau_after,
    )


def test_the_shipped_adaptive_session_recovers_from_the_even_drift_and_the_fixed_forecaster_does_not() -> None:
    """τ 17 → 19: a drift whose two regimes the shipped reservoir forecasts equally well (docs/zoo.md)."""
    from training.tasks.forecaster.series import DRIFT_RECOVERY_FACTOR, DRIFT_RECOVERY_STEPS, DRIFTS

    even = _shipped_adaptive_ceiling(DRIFTS["tau19_"])
    assert even.ratio < 1.5  # the best readouts of both regimes are alike: the criterion measures tracking
    adaptive = Manifest.load(ROOT / "models" / "mackey_glass_adaptive").scores
    assert 0 <= adaptive["tau19_recovery_steps"] <= DRIFT_RECOVERY_STEPS
    assert (
        adaptive["tau19_one_step_nrmse_after_change"]
        <= DRIFT_RECOVERY_FACTOR * adaptive["tau19_one_step_nrmse_before_change"]
    )
    fixed = Manifest.load(ROOT / "models" / "mackey_glass").scores
    assert fixed["drift_tau19_recovery_steps"] == -1
    assert fixed["drift_tau19_one_step_nrmse_after_change"] > 10 * adaptive["tau19_one_step_nrmse_after_change"]


def test_no_readout_over_the_shipped_adaptive_reservoir_can_meet_the_2x_drift_criterion() -> None:
    """The offline optima bound the adaptive session on both sides of the change (docs/zoo.md)."""
    from training.tasks.forecaster.series import DRIFT_RECOVERY_FACTOR, DRIFTS

    found = _shipped_adaptive_ceiling(DRIFTS[""])
    scores = Manifest.load(ROOT / "models" / "mackey_glass_adaptive").scores
    assert found.best_before <= scores["one_step_nrmse_before_change"]
    assert found.best_after <= scores["one_step_nrmse_after_change"]
    assert found.ratio > DRIFT_RECOVERY_FACTOR
