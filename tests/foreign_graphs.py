"""Stateful ONNX graphs as other tools write them, for the importer's tests: no statestream code makes them.

* ``write_lstm``: a 2-layer ``nn.LSTM`` and a linear head exported by plain ``torch.onnx.export``:
  ``x`` is ``[time, batch, 4]``, h and c are ``[2, batch, 16]`` (batch on axis 1), no wrapper;
  its outputs are ``y`` (the head's 3 values) and ``hidden`` (the top layer's 16) per step.
* ``write_one_step``: a Silero-like step graph: ``input`` ``[batch, 20]`` (16 new samples after 4
  carried ones), ``state`` ``[2, batch, 8]``, a constant ``sr`` (int64 scalar), one step per call.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

LSTM_SPEC = """
[[state]]
input = "h0"
output = "hn"
batch_axis = 1

[[state]]
input = "c0"
output = "cn"
batch_axis = 1

[steps]
batch_axis = 1
time_axis = 0
"""

ONE_STEP_SPEC = """
[[state]]
input = "state"
output = "stateN"
batch_axis = 1

[constant]
sr = 16000

[carry]
input = "input"
keep = 4
"""


class _LstmWithHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 16, num_layers=2)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden, (h, c) = self.lstm(x, (h, c))
        return self.head(hidden), hidden, h, c


class _OneStep(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.project = torch.nn.Linear(20, 8)
        self.cell = torch.nn.GRUCell(8, 8)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(self.project(x) * (sr.to(torch.float32) / 16000.0), state[0])
        return torch.sigmoid(self.out(h)), torch.stack([h, state[1] + h])


def _export(net: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, **names: object) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), example, str(path), dynamo=False, **names)  # type: ignore[arg-type]
    return path


def write_lstm(path: Path) -> Path:
    torch.manual_seed(0)
    batch_1 = {1: "batch"}
    return _export(
        _LstmWithHead(),
        (torch.zeros(3, 2, 4), torch.zeros(2, 2, 16), torch.zeros(2, 2, 16)),
        path,
        input_names=["x", "h0", "c0"],
        output_names=["y", "hidden", "hn", "cn"],
        dynamic_axes={"x": {0: "time", 1: "batch"}, "y": {0: "time", 1: "batch"}, "hidden": {0: "time", 1: "batch"},
                      "h0": batch_1, "c0": batch_1, "hn": batch_1, "cn": batch_1},
    )  # fmt: skip


def write_one_step(path: Path, *, dynamic_batch: bool = True) -> Path:
    torch.manual_seed(1)
    axes = {"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"}, "stateN": {1: "batch"}}
    return _export(
        _OneStep(),
        (torch.zeros(2 if dynamic_batch else 1, 20), torch.zeros(2, 2 if dynamic_batch else 1, 8), torch.tensor(16000)),
        path,
        input_names=["input", "state", "sr"],
        output_names=["output", "stateN"],
        dynamic_axes=axes if dynamic_batch else {},
    )
