"""A language model's score from its ONNX graph: validation loss on the held-out text.

The loss runs the model folder's ``step.onnx`` in ONNX Runtime. It cuts the held-out text exactly
as the training loop's validation does (``service.datasets.streams``) and carries the state across
chunks, so the two agree to float precision; the tests check that they do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.contract import ContractError, Manifest
from service.datasets.shakespeare import Vocabulary, load_shakespeare
from service.datasets.streams import EVAL_CHUNK, EVAL_STREAMS, as_streams
from training.onnx_replay import StepFn, iter_chunks, open_session, ort_step_fn


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


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    return asdict(evaluate_language_model(folder, progress=progress))
