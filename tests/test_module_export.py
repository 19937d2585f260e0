"""Your own PyTorch module, served: ``statestream.export_rnn`` and ``export_module`` against PyTorch itself.

The reference is the PyTorch module run on the whole sequence (an RNN) or step by step (a step
module); the served answers come from a real server over gRPC, in chunks, several sessions at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import statestream
import torch

from service.settings import Settings
from tests.servers import STATESTREAM, ServerThread

#: ONNX Runtime against PyTorch in float32 over a few steps: kernels differ by ~1e-6.
TOLERANCE = 1e-5


class Leaky(torch.nn.Module):
    """A user's own step module: ``(x, state) -> (y, state)``, its state ``[2, batch, 6]`` (batch on axis 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(5 + 6, 6)
        self.out = torch.nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fast = torch.tanh(self.mix(torch.cat([x, state[0]], dim=-1)))
        slow = 0.9 * state[1] + 0.1 * fast
        return self.out(fast + slow), torch.stack([fast, slow])


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.GRU, torch.nn.Linear, Leaky]:
    torch.manual_seed(0)
    return torch.nn.GRU(8, 32, num_layers=2, batch_first=True), torch.nn.Linear(32, 4), Leaky().eval()


@pytest.fixture(scope="module")
def served(
    nets: tuple[torch.nn.GRU, torch.nn.Linear, Leaky], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    rnn, head, leaky = nets
    models = tmp_path_factory.mktemp("exported")
    report = statestream.export_rnn(rnn, head, models / "gru")
    assert [s.shape for s in report.manifest.state] == [(2, 32)]  # [layers, hidden] per session
    statestream.export_module(
        leaky, models / "leaky", example_input=torch.zeros(2, 5), example_state=torch.zeros(2, 2, 6), state_batch_axis=1
    )
    server = ServerThread(Settings(models_dir=models))
    yield server
    server.stop()


@torch.no_grad()
def test_gru_stack_with_head_streams_what_pytorch_computes(
    nets: tuple[torch.nn.GRU, torch.nn.Linear, Leaky], served: ServerThread
) -> None:
    rnn, head, _ = nets
    rng = np.random.default_rng(2)
    sequences = [rng.standard_normal((7, 8)).astype(np.float32) for _ in range(3)]
    with statestream.Client(served.target) as client:
        sessions = [client.open("gru") for _ in sequences]
        answers: list[list[np.ndarray]] = [[] for _ in sequences]
        for start, stop in ((0, 3), (3, 4), (4, 7)):
            for session, xs, into in zip(sessions, sequences, answers, strict=True):
                result = session.step(tensors={"x": xs[start:stop]})
                into += [step["y"] for step in statestream.outputs_of(result)]
    for xs, got in zip(sequences, answers, strict=True):
        want = head(rnn(torch.from_numpy(xs)[None])[0])[0].numpy()
        np.testing.assert_allclose(np.stack(got), want, atol=TOLERANCE)


@torch.no_grad()
def test_own_step_module_with_batch_on_axis_1_takes_chunks_as_steps(
    nets: tuple[torch.nn.GRU, torch.nn.Linear, Leaky], served: ServerThread
) -> None:
    _, _, leaky = nets
    xs = np.random.default_rng(4).standard_normal((5, 5)).astype(np.float32)
    state, want = torch.zeros(2, 1, 6), []
    for x in xs:
        y, state = leaky(torch.from_numpy(x)[None], state)
        want.append(y[0].numpy())
    with statestream.Client(served.target) as client:
        session = client.open("leaky")
        results = [session.step(tensors={"x": xs[:2]}), session.step(tensors={"x": xs[2:]})]  # 2 + 3 steps
    got = [step["y"] for r in results for step in statestream.outputs_of(r)]
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=TOLERANCE)


def test_client_step_streams_a_npy_file_to_an_exported_model(served: ServerThread, tmp_path: Path) -> None:
    xs = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    np.save(tmp_path / "steps.npy", xs)
    env = {**os.environ, "STATESTREAM_TARGET": served.target}
    done = subprocess.run(
        [*STATESTREAM, "client", "step", "--model", "leaky", "--tensor", f"x=@{tmp_path / 'steps.npy'}", "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert all(len(line["outputs"]["y"]) == 2 for line in lines)
    wrong = subprocess.run(
        [*STATESTREAM, "client", "step", "--model", "leaky", "--tensor", "x=steps.npy"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "statestream: error: --tensor 'x=steps.npy': write NAME=@FILE.npy, e.g. x=@steps.npy"
    ]
