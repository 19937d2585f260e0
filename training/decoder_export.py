"""Export an attention decoder (captioner, translator): the init graph, the step graph, parity for both.

The serving contract is ``service/drivers/attention.py``'s: the init graph maps the encoded
input to the context (``annotations``, ``mask``) and the decoder's initial state; the step graph
maps ``(previous token, state..., context...)`` to ``(logits, attention, state'...)``, one
token per call. What differs between tasks (the payload, the vocabulary, the manifest's words)
stays with the task; this module only needs the two PyTorch modules and a manifest naming them.

Nothing is installed unless ONNX Runtime agrees with PyTorch (:func:`check_parity`):

* init: every init output, for a batch of real payloads;
* step: teacher-forced decoding of real token sequences, one token per call with the state
  carried and the context fed every call, for a batch of sessions at once; every output and
  the state of every step.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import Arrays, GoldenTrace, Manifest
from training.onnx_export import OPSET, PARITY_TOLERANCE, ParityError, require_dynamic_axes
from training.onnx_replay import open_session

INIT_FILE = "init.onnx"
STEP_FILE = "step.onnx"


@dataclass(frozen=True)
class DecoderParity:
    """Largest |ONNX - PyTorch| of the init graph's outputs and of the step graph's, over ``steps`` tokens."""

    init_max_diff: float
    step_max_diff: float
    sessions: int
    steps: int

    @property
    def max_diff(self) -> float:
        return max(self.init_max_diff, self.step_max_diff)


def _export(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str]
) -> None:
    """TorchScript export with every graph input and output's leading (batch) axis dynamic."""
    axes = {name: {0: "batch"} for name in (*inputs, *outputs)}
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    require_dynamic_axes(path, axes)


def step_input_names(manifest: Manifest) -> list[str]:
    return [t.name for t in manifest.inputs] + [s.input for s in manifest.state] + [c.name for c in manifest.context]


def step_output_names(manifest: Manifest) -> list[str]:
    return [t.name for t in manifest.outputs] + [s.output for s in manifest.state]


def export_graphs(
    init: torch.nn.Module, step: torch.nn.Module, manifest: Manifest, folder: Path, payload: Arrays
) -> None:
    """Writes ``init.onnx`` and ``step.onnx`` into ``folder``; ``payload`` is a batch (>= 2) of init inputs."""
    assert manifest.init is not None
    init_inputs = [t.name for t in manifest.init.inputs]
    example = tuple(torch.from_numpy(payload[name][:2]) for name in init_inputs)
    _export(init, example, folder / manifest.init.graph, init_inputs, manifest.init_outputs)
    with torch.no_grad():
        made = dict(zip(manifest.init_outputs, init(*example), strict=True))
    token = manifest.inputs[0]
    step_example = (
        torch.zeros((2, 1), dtype=getattr(torch, token.dtype)),
        *(made[s.input] for s in manifest.state),
        *(made[c.name] for c in manifest.context),
    )
    _export(step, step_example, folder / manifest.step_graph, step_input_names(manifest), step_output_names(manifest))


def torch_decode(
    init: torch.nn.Module, step: torch.nn.Module, manifest: Manifest, payload: Arrays, tokens: np.ndarray
) -> tuple[Arrays, Arrays]:
    """PyTorch: the init outputs, then every step's outputs (``[B, T, ...]``) for ``tokens [B, T]``."""
    assert manifest.init is not None
    with torch.no_grad():
        made = init(*(torch.from_numpy(payload[t.name]) for t in manifest.init.inputs))
        made_arrays = {name: value.numpy() for name, value in zip(manifest.init_outputs, made, strict=True)}
        return made_arrays, _teacher_forced(
            lambda feed: {
                name: value.numpy()
                for name, value in zip(
                    step_output_names(manifest),
                    step(*(torch.from_numpy(feed[name]) for name in step_input_names(manifest))),
                    strict=True,
                )
            },
            manifest,
            made_arrays,
            tokens,
        )


def ort_decode(folder: Path, manifest: Manifest, payload: Arrays, tokens: np.ndarray) -> tuple[Arrays, Arrays]:
    """ONNX Runtime, the same way as :func:`torch_decode`."""
    assert manifest.init is not None
    init = open_session(folder / manifest.init.graph)
    step = open_session(folder / manifest.step_graph)
    feed = {t.name: payload[t.name] for t in manifest.init.inputs}
    made = dict(zip(manifest.init_outputs, init.run(manifest.init_outputs, feed), strict=True))
    names = step_output_names(manifest)
    return made, _teacher_forced(lambda f: dict(zip(names, step.run(names, f), strict=True)), manifest, made, tokens)


def _teacher_forced(call: Any, manifest: Manifest, made: Arrays, tokens: np.ndarray) -> Arrays:
    """Feeds ``tokens[:, t]`` one per call, state carried, context constant; stacks outputs over t."""
    state = {s.input: made[s.input] for s in manifest.state}
    context = {c.name: made[c.name] for c in manifest.context}
    token = manifest.inputs[0]
    steps: dict[str, list[np.ndarray]] = {name: [] for name in step_output_names(manifest)}
    for t in range(tokens.shape[1]):
        results = call({token.name: tokens[:, t : t + 1].astype(token.np_dtype)} | state | context)
        for name in steps:
            steps[name].append(results[name])
        state = {s.input: results[s.output] for s in manifest.state}
    stacked = {t.name: np.concatenate(steps[t.name], axis=1) for t in manifest.outputs}
    stacked |= {s.output: np.stack(steps[s.output], axis=1) for s in manifest.state}
    return stacked


def _worst(what: str, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tolerance: float) -> float:
    worst = 0.0
    for name, expected in want.items():
        diff = float(np.max(np.abs(got[name].astype(np.float64) - expected.astype(np.float64))))
        if not diff <= tolerance:  # NaN too
            raise ParityError(
                f"parity failed ({what}): {name!r} differs from PyTorch by {diff:.3g} (tolerance {tolerance:g}); "
                "the export is refused"
            )
        worst = max(worst, diff)
    return worst


def check_parity(
    init: torch.nn.Module,
    step: torch.nn.Module,
    manifest: Manifest,
    folder: Path,
    payload: Arrays,
    tokens: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> DecoderParity:
    """ONNX Runtime against PyTorch for ``payload`` (a batch of sessions) decoding ``tokens [B, T]``."""
    init.eval()
    step.eval()
    torch_made, torch_steps = torch_decode(init, step, manifest, payload, tokens)
    ort_made, ort_steps = ort_decode(folder, manifest, payload, tokens)
    init_diff = _worst("init graph", ort_made, torch_made, tolerance)
    step_diff = _worst(
        f"{tokens.shape[1]} decoder steps of {tokens.shape[0]} sessions", ort_steps, torch_steps, tolerance
    )
    return DecoderParity(init_diff, step_diff, tokens.shape[0], tokens.shape[1])


def record_golden(
    init: torch.nn.Module,
    step: torch.nn.Module,
    manifest: Manifest,
    payload: Arrays,
    tokens: list[int],
    tolerance: float,
) -> tuple[GoldenTrace, GoldenTrace]:
    """The init graph's golden trace for one payload (``[1, ...]`` each) and the step graph's for ``tokens`` after it."""
    assert manifest.init is not None
    made, steps = torch_decode(init, step, manifest, payload, np.asarray([tokens], np.int64))
    init_trace = GoldenTrace(
        {t.name: payload[t.name][0].tolist() for t in manifest.init.inputs},
        {name: made[name][0].tolist() for name in manifest.init_outputs},
        tolerance,
    )
    step_trace = GoldenTrace(
        {manifest.inputs[0].name: list(tokens)},
        {t.name: steps[t.name][0].tolist() for t in manifest.outputs},
        tolerance,
    )
    return init_trace, step_trace
