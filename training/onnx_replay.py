"""Scores computed from the exported ONNX graph, the artefact that is served.

A score in a manifest must describe the graph the server runs, not the PyTorch module it came
from, so the language-model loss here runs the model folder's ``step.onnx`` in ONNX Runtime.
It cuts the held-out text exactly as the training loop's validation does
(``service.datasets.streams``) and carries the state across chunks, so the two agree to float
precision; the tests check that they do.

The helpers :func:`iter_chunks` / :func:`run_sequence` drive any step function (ONNX Runtime
or PyTorch, see ``training.export``) over a batch of sequences with the contract's state
threading, and are shared with the exporter's parity check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from service.contract import ContractError, Manifest, zero_state
from service.datasets.shakespeare import Vocabulary, load_shakespeare
from service.datasets.streams import EVAL_CHUNK, EVAL_STREAMS, as_streams

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

Arrays = dict[str, np.ndarray]
#: One call of a step model: graph-input name -> array, to graph-output name -> array.
StepFn = Callable[[Arrays], Arrays]


def open_session(graph: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for a graph file."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def ort_step_fn(session: onnxruntime.InferenceSession) -> StepFn:
    """Wrap an ONNX Runtime session as a :data:`StepFn`."""
    names = [o.name for o in session.get_outputs()]

    def step(feed: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, feed), strict=True))

    return step


def iter_chunks(
    step_fn: StepFn, manifest: Manifest, inputs: Mapping[str, np.ndarray], chunk: int
) -> Iterator[tuple[int, Arrays]]:
    """Run ``inputs`` (each ``[batch, time, *shape]``) through a step model ``chunk`` steps per call.

    Starts from the manifest's initial state and feeds each call's state outputs to the next
    call. Yields ``(start, outputs)`` per call, ``outputs`` holding the manifest's per-step
    outputs for steps ``start .. start + chunk``.
    """
    first = next(iter(inputs.values()))
    batch, steps = first.shape[:2]
    state = zero_state(manifest, batch)
    for start in range(0, steps, chunk):
        feed = {name: np.ascontiguousarray(arr[:, start : start + chunk]) for name, arr in inputs.items()}
        results = step_fn(feed | state)
        state = {s.input: results[s.output] for s in manifest.state}
        yield start, {t.name: results[t.name] for t in manifest.outputs}


def run_sequence(step_fn: StepFn, manifest: Manifest, inputs: Mapping[str, np.ndarray], chunk: int) -> Arrays:
    """All per-step outputs of :func:`iter_chunks`, concatenated along time."""
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in manifest.outputs}
    for _, outputs in iter_chunks(step_fn, manifest, inputs, chunk):
        for name, value in outputs.items():
            parts[name].append(value)
    return {name: np.concatenate(values, axis=1) for name, values in parts.items()}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    z: np.ndarray = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    result: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return result


def streamed_loss(
    step_fn: StepFn,
    manifest: Manifest,
    ids: np.ndarray,
    *,
    streams: int = EVAL_STREAMS,
    chunk: int = EVAL_CHUNK,
    progress: bool = False,
) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats per token) of a language model over ``ids``.

    ``ids`` is cut into ``streams`` contiguous rows; each row is read from the initial state
    with the state carried to its end. Returns ``(loss, predicted_tokens)``. ``progress`` draws a
    bar on stderr (characters scored, their rate, and the time left): a full pass takes a while.
    """
    grid = as_streams(np.asarray(ids, dtype=np.int64), streams)
    inputs, targets = grid[:, :-1], grid[:, 1:]
    token_input, logits_output = manifest.inputs[0].name, manifest.outputs[0].name
    total = 0.0
    with tqdm(
        total=int(targets.size), disable=not progress, unit="char", unit_scale=True, desc="eval", dynamic_ncols=True
    ) as bar:
        for start, outputs in iter_chunks(step_fn, manifest, {token_input: inputs}, chunk):
            logp = log_softmax(outputs[logits_output])
            y = targets[:, start : start + logp.shape[1]]
            total -= float(np.take_along_axis(logp, y[..., None], axis=-1).sum())
            bar.update(int(y.size))
    return total / targets.size, int(targets.size)


@dataclass(frozen=True)
class LanguageModelScore:
    """The ``statestream eval`` report of a language model."""

    model: str
    val_loss_nats_per_char: float
    chars: int


def evaluate_language_model(
    model_folder: Path, *, streams: int = EVAL_STREAMS, chunk: int = EVAL_CHUNK, progress: bool = False
) -> LanguageModelScore:
    """Validation loss of a character language model folder, from its ONNX graph.

    The held-out text is the last 10% of Tiny Shakespeare, encoded with the manifest's own
    vocabulary (which must be the corpus's: a model trained on another alphabet cannot be
    scored on this text).
    """
    manifest = Manifest.load(model_folder)
    if manifest.task != "language_model":
        raise ContractError(f"{manifest.name}: task {manifest.task!r} has no language-model loss")
    corpus = load_shakespeare()
    if Vocabulary(manifest.vocabulary) != corpus.vocab:
        raise ContractError(f"{manifest.name}: its vocabulary differs from the Tiny Shakespeare vocabulary")
    session = open_session(Path(model_folder) / manifest.step_graph)
    loss, chars = streamed_loss(
        ort_step_fn(session), manifest, corpus.val_ids, streams=streams, chunk=chunk, progress=progress
    )
    return LanguageModelScore(model=manifest.name, val_loss_nats_per_char=loss, chars=chars)


def val_loss_from_onnx(model_folder: Path) -> float:
    """Validation loss (nats per character) over the held-out 10%, computed by ONNX Runtime."""
    return evaluate_language_model(model_folder).val_loss_nats_per_char
