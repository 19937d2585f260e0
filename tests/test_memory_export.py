"""Sweep graphs of the associative memories: ONNX Runtime equals PyTorch over chained sweeps; the folder loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract import Manifest, check_graph, replay_golden
from service.datasets.patterns import flip_bits, letter_patterns
from training.onnx_export import torch_step_fn
from training.onnx_replay import open_session, ort_step_fn
from training.tasks.associative_memory.boltzmann import RBM, BoltzmannMachine
from training.tasks.associative_memory.dense_hopfield import DenseHopfield
from training.tasks.associative_memory.export import (
    PARITY_TOLERANCE,
    TASK,
    chained_sweeps,
    export_memory,
    random_sweep_inputs,
)
from training.tasks.associative_memory.hopfield import Hopfield
from training.tasks.associative_memory.sweep import SweepNet


def _rbm() -> RBM:
    torch.manual_seed(0)
    net = RBM(visible=64, hidden=24)
    with torch.no_grad():
        net.weight.normal_(0.0, 0.5)
        net.visible_bias.normal_(0.0, 0.5)
    return net


def _boltzmann() -> BoltzmannMachine:
    torch.manual_seed(1)
    w = torch.randn(12, 12)
    w = (w + w.T) / 2
    w.fill_diagonal_(0.0)
    return BoltzmannMachine.from_energy(weight=w, bias=torch.randn(12))


CASES: dict[str, tuple[SweepNet, tuple[int, int]]] = {
    "hopfield_async": (Hopfield.from_patterns(letter_patterns("ACHLTX"), rule="storkey"), (7, 5)),
    "hopfield_sync": (Hopfield.from_patterns(letter_patterns("ACHLTX"), update="sync"), (7, 5)),
    "dense": (DenseHopfield(patterns=letter_patterns(), beta=2.0), (7, 5)),
    "boltzmann": (_boltzmann(), (3, 4)),
    "rbm": (_rbm(), (8, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exported_sweep_equals_pytorch_over_twenty_chained_sweeps(name: str, tmp_path: Path) -> None:
    net, shape = CASES[name]
    start = flip_bits(letter_patterns("A"), 0.2, seed=0)[0] if shape == (7, 5) else np.zeros(shape[0] * shape[1])
    report = export_memory(net, tmp_path / name, name=name, description=f"test {name}", shape=shape, golden_start=start)
    manifest = Manifest.load(tmp_path / name)
    assert manifest.task == TASK
    assert manifest.decoding["units"] == net.units and manifest.decoding["shape"] == list(shape)
    assert manifest.decoding["stochastic"] == net.stochastic
    assert [s.input for s in manifest.state] == ["pattern_in"] and [s.output for s in manifest.state] == ["pattern_out"]
    session = open_session(tmp_path / name / manifest.step_graph)
    check_graph(manifest, session)
    assert replay_golden(manifest, session) <= manifest.golden.tolerance

    # Independently of the exporter's own check: 20 chained sweeps, a batch of 4 sessions, new seed.
    feed = random_sweep_inputs(manifest, batch=4, sweeps=20, seed=123)
    want = chained_sweeps(torch_step_fn(net, manifest), manifest, feed)
    got = chained_sweeps(ort_step_fn(session), manifest, feed)
    assert set(got) == {"energy", "changed", "pattern_out"}
    for key, value in want.items():
        # 1e-5 absolute for patterns and counts (exact up to a softmax's rounding); energies, float32
        # sums up to |E| ~ 100, to 1e-5 relative (see PARITY_TOLERANCE).
        rtol = PARITY_TOLERANCE if key == "energy" else 0.0
        np.testing.assert_allclose(got[key], value, atol=PARITY_TOLERANCE, rtol=rtol, err_msg=key)
    assert report.parity_max_abs_diff <= PARITY_TOLERANCE
    assert want["pattern_out"].shape == (4, 20, net.units)


def test_served_graph_takes_noise_only_where_the_net_draws_it() -> None:
    from training.tasks.associative_memory.export import memory_manifest

    names = {
        name: [t.name for t in memory_manifest(net, name=name, description="", shape=shape).inputs]
        for name, (net, shape) in CASES.items()
    }
    assert names["hopfield_async"] == ["clamp_mask", "clamp_values", "noise"]
    assert names["hopfield_sync"] == ["clamp_mask", "clamp_values"]
    assert names["dense"] == ["clamp_mask", "clamp_values"]
    assert names["rbm"] == ["clamp_mask", "clamp_values", "noise", "temperature"]
    rbm_manifest = memory_manifest(CASES["rbm"][0], name="rbm", description="", shape=(8, 8))
    assert rbm_manifest.input_spec("noise").shape == (64 + 24,)
