"""The zoo's cells exported as one-step graphs: ONNX Runtime against PyTorch, state carried.

Tolerance: 1e-5 max abs difference of every output and every state tensor over 40 steps, in
float32 (the served precision). Both sides compute the same float32 equations with different
kernels (~1e-7 per step); the weights are the default initialisation, so the recurrence is
contractive and the difference does not grow much over 40 steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract import Manifest
from training.cell_export import cell_manifest, export_cell_model
from training.nets.cell_step import CELL_KINDS, CellStepNet
from training.nets.cells import GRUCell, Recurrent
from training.onnx_replay import open_session

TOLERANCE = 1e-5
STEPS, FEATURES, HIDDEN, READOUT = 40, 4, 6, 3


def _export(net: CellStepNet, folder: Path, seed: int = 0) -> Manifest:
    inputs = np.random.default_rng(seed).normal(size=(3, 20, FEATURES)).astype(np.float32)
    manifest = cell_manifest(net, name="cells_probe", task="sequence_model", description="a probe")
    return export_cell_model(net, manifest, folder, parity_inputs=inputs).manifest


def _compare_stepwise(net: CellStepNet, folder: Path, manifest: Manifest, batch: int) -> float:
    """Runs ``batch`` random streams one step per call through both and returns the worst difference."""
    session = open_session(folder / manifest.step_graph)
    x = np.random.default_rng(1).normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
    torch_state = [s.numpy() for s in net.initial_state(batch)]
    onnx_state = [np.zeros((batch, size), np.float32) for size in net.state_sizes]
    state_in = [s.input for s in manifest.state]
    out_names = [manifest.outputs[0].name] + [s.output for s in manifest.state]
    worst = 0.0
    for t in range(STEPS):
        step = x[:, t : t + 1]
        with torch.no_grad():
            want = [v.numpy() for v in net(torch.from_numpy(step), *(torch.from_numpy(s) for s in torch_state))]
        got = session.run(out_names, {manifest.inputs[0].name: step, **dict(zip(state_in, onnx_state, strict=True))})
        worst = max(worst, *(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)))
        torch_state, onnx_state = want[1:], got[1:]
    return worst


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_each_cell_kind_exports_a_step_graph_equal_to_torch_over_steps(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = CellStepNet.build(kind, input_size=FEATURES, hidden_size=HIDDEN, readout_size=READOUT)
    manifest = _export(net, tmp_path / "m")
    assert manifest.decoding["steps_per_call"] == 1
    assert _compare_stepwise(net, tmp_path / "m", manifest, batch=1) <= TOLERANCE
    assert _compare_stepwise(net, tmp_path / "m", manifest, batch=5) <= TOLERANCE


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_stacked_net_names_and_carries_every_layers_state(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = CellStepNet.build(kind, input_size=FEATURES, hidden_size=HIDDEN, layers=2, readout_size=READOUT)
    manifest = _export(net, tmp_path / "m")
    expected = ["h0", "c0", "h1", "c1"] if kind == "lstm" else ["h0", "h1"]
    assert [s.input for s in manifest.state] == expected
    assert [s.output for s in manifest.state] == [f"{n}_out" for n in expected]
    assert _compare_stepwise(net, tmp_path / "m", manifest, batch=3) <= TOLERANCE


def test_without_readout_the_output_is_the_top_layer(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = CellStepNet.build("elman_tanh", input_size=FEATURES, hidden_size=HIDDEN)
    manifest = _export(net, tmp_path / "m")
    assert manifest.outputs[0].shape == (HIDDEN,)
    assert _compare_stepwise(net, tmp_path / "m", manifest, batch=2) <= TOLERANCE


def test_a_backward_layer_is_refused_because_a_stream_has_no_future() -> None:
    with pytest.raises(ValueError, match="forward-in-time"):
        CellStepNet([Recurrent(GRUCell(input_size=FEATURES, hidden_size=HIDDEN), reverse=True)])


def test_an_unknown_cell_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="cell kind must be one of"):
        CellStepNet.build("transformer", input_size=FEATURES, hidden_size=HIDDEN)
