"""Your own PyTorch step module, served: export it, prove it, and write a model folder.

``export_module`` takes a module whose step is ``(x, state) -> (y, state)`` (state one tensor
or a tuple of them, each with its batch on any axis); ``export_rnn`` builds that step from an
``nn.GRU``/``nn.LSTM`` stack and a head (PyTorch keeps their h and c with the batch on axis 1).
The module is exported as it is (``onnx_export.export_named``), checked against PyTorch step by
step, and handed to the importer (``service.importer``) with a spec saying where each state's
batch axis is: the layout is handled once, by the importer, which records the golden trace from
that graph and proves batch invariance before the folder is written (docs/your-model.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from service.importer.folder import DEFAULT_TASK, ImportReport, import_onnx
from service.importer.spec import ImportSpec, StateRule, StepLayout
from training.onnx_export import PARITY_TOLERANCE, ParityError, export_named
from training.onnx_replay import open_session

#: Steps of the parity run (PyTorch against ONNX Runtime on the exported graph).
PARITY_STEPS = 6
EXAMPLE_BATCH = 2


class _FlatStep(torch.nn.Module):
    """The user's module with flat tensors in and out, as the exporter names them: (x, *state) -> (y, *state)."""

    def __init__(self, module: torch.nn.Module, states: int) -> None:
        super().__init__()
        self.module = module
        self.states = states

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, new_state = self.module(x, state[0] if self.states == 1 else tuple(state))
        return (y, new_state) if self.states == 1 else (y, *new_state)


class _RnnStep(torch.nn.Module):
    """An ``nn.GRU``/``nn.LSTM`` stack and its head as one step module: (x, state) -> (head(out), state)."""

    def __init__(self, rnn: torch.nn.RNNBase, head: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[object, object]:
        out, new_state = self.rnn(x, state)
        return self.head(out), new_state


def export_module(
    module: torch.nn.Module,
    out: Path,
    *,
    example_input: torch.Tensor,
    example_state: torch.Tensor | Sequence[torch.Tensor],
    state_batch_axis: int | Sequence[int] = 0,
    state_names: Sequence[str] = (),
    input_name: str = "x",
    output_name: str = "y",
    batch_axis: int = 0,
    time_axis: int | None = None,
    name: str | None = None,
    task: str = DEFAULT_TASK,
) -> ImportReport:
    """Exports ``module`` (``module(x, state) -> (y, new_state)``) to the model folder ``out``.

    ``example_input`` and ``example_state`` are one call's tensors, their batch (of any size)
    at ``batch_axis`` and ``state_batch_axis`` (one per state tensor, or one for all);
    ``time_axis`` is where ``x`` and ``y`` hold a chunk of steps (None: one step per call).
    Names default to ``x``, ``y`` and ``state`` (``state0``, ``state1``, … for a tuple), each
    state's output ``<name>_out``. Raises ParityError if ONNX Runtime and PyTorch disagree, and
    the importer's ImportRefused (naming the check) if the graph does not wrap; nothing is
    written then.
    """
    states = [example_state] if isinstance(example_state, torch.Tensor) else list(example_state)
    names = list(state_names) or (["state"] if len(states) == 1 else [f"state{i}" for i in range(len(states))])
    axes_of = [state_batch_axis] * len(states) if isinstance(state_batch_axis, int) else list(state_batch_axis)
    if len(names) != len(states) or len(axes_of) != len(states):
        raise ValueError(f"{len(states)} state tensor(s): give as many state_names and state_batch_axis")
    step = _FlatStep(module, len(states)).eval()
    per_step = {batch_axis: "batch", **({time_axis: "time"} if time_axis is not None else {})}
    dynamic = {input_name: per_step, output_name: per_step}
    for state, axis in zip(names, axes_of, strict=True):
        dynamic[state] = dynamic[f"{state}_out"] = {axis: "batch"}
    spec = ImportSpec(
        state=tuple(StateRule(state, f"{state}_out", axis) for state, axis in zip(names, axes_of, strict=True)),
        steps=StepLayout(batch_axis, time_axis),
    )
    with tempfile.TemporaryDirectory(prefix="statestream-export-") as folder:
        graph = Path(folder) / "module.onnx"
        example = (example_input, *states)
        export_named(step, example, graph, [input_name, *names], [output_name, *[f"{n}_out" for n in names]], dynamic)
        _check_parity(step, graph, example)
        return import_onnx(graph, spec, Path(out), name=name or Path(out).name, task=task)


def export_rnn(
    rnn: torch.nn.RNNBase, head: torch.nn.Module, out: Path, *, name: str | None = None, task: str = DEFAULT_TASK
) -> ImportReport:
    """Exports an ``nn.GRU`` or ``nn.LSTM`` stack and its ``head`` (applied to every step's output).

    The graph runs a chunk of steps per call (the RNN's own time axis: 1 with ``batch_first``,
    else 0); its state is h (and c for an LSTM), ``[layers, batch, hidden]``, batch on axis 1.
    """
    if not isinstance(rnn, torch.nn.GRU | torch.nn.LSTM):
        raise ValueError(f"export_rnn takes an nn.GRU or nn.LSTM, not {type(rnn).__name__}; use export_module")
    if rnn.bidirectional:
        raise ValueError("a bidirectional RNN needs the whole sequence, so it cannot stream step by step")
    batch_axis, time_axis = (0, 1) if rnn.batch_first else (1, 0)
    x_shape = [0, 0, rnn.input_size]
    x_shape[batch_axis], x_shape[time_axis] = EXAMPLE_BATCH, 3
    h = torch.zeros(rnn.num_layers, EXAMPLE_BATCH, rnn.proj_size or rnn.hidden_size)
    state = (h, torch.zeros(rnn.num_layers, EXAMPLE_BATCH, rnn.hidden_size)) if isinstance(rnn, torch.nn.LSTM) else h
    return export_module(
        _RnnStep(rnn, head),
        out,
        example_input=torch.zeros(x_shape),
        example_state=state,
        state_batch_axis=1,
        state_names=("h", "c") if isinstance(rnn, torch.nn.LSTM) else ("h",),
        batch_axis=batch_axis,
        time_axis=time_axis,
        name=name,
        task=task,
    )


@torch.no_grad()
def _check_parity(step: _FlatStep, graph: Path, example: tuple[torch.Tensor, ...]) -> None:
    """PyTorch against ONNX Runtime on the exported graph, PARITY_STEPS calls with the state carried."""
    session = open_session(graph)
    names = [i.name for i in session.get_inputs()]
    generator = torch.Generator().manual_seed(0)
    torch_state = list(example[1:])
    onnx_state = [s.numpy() for s in torch_state]
    for call in range(PARITY_STEPS):
        x = torch.randn(example[0].shape, generator=generator)
        want = step(x, *torch_state)
        got = session.run(None, dict(zip(names, [x.numpy(), *onnx_state], strict=True)))
        for index, (mine, theirs) in enumerate(zip(got, want, strict=True)):
            diff = float(np.max(np.abs(mine - theirs.numpy()))) if mine.size else 0.0
            if not diff <= PARITY_TOLERANCE:
                raise ParityError(
                    f"parity failed: output {index} differs from PyTorch by {diff:.3g} at call {call} "
                    f"(tolerance {PARITY_TOLERANCE:g}); the export is refused"
                )
        torch_state, onnx_state = list(want[1:]), got[1:]
