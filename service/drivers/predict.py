"""predict / listen: feed what the client sends, return that step's outputs.

Turns a Step message into the step tensors of the model contract (text or token ids for a
language model, raw tensors for anything else), runs it through the scheduler, and turns the
outputs into a StepResult: for language models, the top-k next tokens with their probabilities.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.drivers.vocabulary import vocabulary_of
from service.errors import InvalidArgument, ModelFailed, ResourceExhausted, StatestreamError, Unavailable
from service.scheduler import SchedulerStopped
from service.sessions import Session
from service.tensors import from_proto, to_proto

Arrays = dict[str, np.ndarray]


@dataclass
class StepInputs:
    """A decoded, validated step: tensors ``[K, *shape]`` by input name."""

    arrays: Arrays
    steps: int
    token_ids: np.ndarray | None = None  # language models: the K input ids


def logits_output(manifest: Manifest) -> str:
    """The output holding a language model's next-token logits (``decoding.logits``, default "logits")."""
    return str(manifest.decoding.get("logits", "logits"))


def _token_input(manifest: Manifest) -> str:
    inputs = manifest.inputs
    if (
        len(inputs) != 1
        or inputs[0].shape != ()
        or not inputs[0].dtype.startswith("int")
        or vocabulary_of(manifest) is None
    ):
        raise InvalidArgument(f"model {manifest.name!r} does not take text or token ids; send tensors")
    return inputs[0].name


def decode_step(manifest: Manifest, step: pb.Step, max_chunk: int) -> StepInputs:
    """Validates a Step against the model; every problem is an InvalidArgument naming it."""
    kind = step.WhichOneof("input")
    if kind is None:
        raise InvalidArgument("step has no input: set one of text, tokens or tensors")
    claimed = len(step.text) if kind == "text" else len(step.tokens.ids) if kind == "tokens" else 0
    if claimed > max_chunk:  # refuse before decoding anything of an oversized chunk
        raise ResourceExhausted("max_chunk", max_chunk, f"the step carries {claimed} time steps")
    if kind == "tensors":
        inputs = _decode_tensors(manifest, step.tensors)
        vocab = vocabulary_of(manifest)
        if vocab is not None and len(manifest.inputs) == 1 and manifest.inputs[0].dtype.startswith("int"):
            # Token ids sent as a tensor obey the vocabulary too: ONNX Runtime would fail the whole
            # batch on an id past the embedding, and silently read a negative id from the end.
            vocab.check_ids(inputs.arrays[manifest.inputs[0].name].reshape(-1).astype(np.int64))
    else:
        name = _token_input(manifest)
        vocab = vocabulary_of(manifest)
        assert vocab is not None
        if kind == "text":
            ids = vocab.encode(step.text)
        else:
            ids = vocab.check_ids(np.asarray(step.tokens.ids, dtype=np.int64))
        inputs = StepInputs({name: ids.astype(manifest.inputs[0].np_dtype, copy=False)}, len(ids), ids)
    if inputs.steps == 0:
        raise InvalidArgument("step is empty: it must carry at least one time step")
    if inputs.steps > max_chunk:
        raise ResourceExhausted("max_chunk", max_chunk, f"the step carries {inputs.steps} time steps")
    return inputs


def _decode_tensors(manifest: Manifest, tensors: pb.TensorInput) -> StepInputs:
    given: Arrays = {}
    for tensor in tensors.tensors:
        if tensor.name in given:
            raise InvalidArgument(f"tensor {tensor.name!r} is given twice")
        given[tensor.name] = from_proto(tensor)
    expected = {spec.name: spec for spec in manifest.inputs}
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise InvalidArgument(f"unknown input tensor(s) {unknown}; the model takes {sorted(expected)}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise InvalidArgument(f"missing input tensor(s) {missing}")
    steps: int | None = None
    for name, array in given.items():
        spec = expected[name]
        if array.dtype != np.dtype(spec.np_dtype):
            raise InvalidArgument(f"tensor {name!r} has dtype {array.dtype.name}, the model takes {spec.dtype}")
        if array.ndim != 1 + len(spec.shape) or tuple(array.shape[1:]) != spec.shape:
            raise InvalidArgument(
                f"tensor {name!r} has shape {list(array.shape)}, the model takes [K, {', '.join(map(str, spec.shape))}]"
            )
        if steps is not None and array.shape[0] != steps:
            raise InvalidArgument(f"tensor {name!r} has {array.shape[0]} time steps, another input has {steps}")
        steps = array.shape[0]
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidArgument(f"tensor {name!r} holds NaN or Inf")
    assert steps is not None
    return StepInputs(given, steps)


def answer_bytes_bound(session: Session, steps: int) -> int:
    """An upper bound of the encoded answer (SessionResponse of build_result) returning ``steps`` steps.

    Checked before a step runs, so a step whose answer could not be sent (over max_message_bytes)
    is refused instead of applied and then lost with the stream.
    """
    manifest = session.runtime.model.manifest
    vocab = vocabulary_of(manifest)
    per_step = 12  # StepOutput framing
    if vocab is not None:
        token = vocab.longest_token_bytes
        per_step += token + 6 + session.options.top_k * (token + 24)  # input text; TokenProb id, token, prob
    specs = {t.name: t for t in manifest.outputs}
    for name in session.options.return_tensors:
        spec = specs[name]
        per_step += 24 + 2 * len(name) + 11 * len(spec.shape) + math.prod(spec.shape) * np.dtype(spec.np_dtype).itemsize
    return 32 + steps * per_step


#: Outputs added by ``ranked_logits`` (the scheduler's postprocess): token ids by falling
#: probability (ties: lower id first) and their softmax probabilities, ``[K, V]`` per step.
RANKED_IDS = "statestream.ranked_ids"
RANKED_PROBS = "statestream.ranked_probs"


def ranked_logits(logits_name: str) -> Callable[[Arrays], Arrays]:
    """The next tokens of a whole batch ranked at once (the scheduler runs it on its worker thread).

    One stable argsort and one float64 softmax over ``[B, K, V]`` instead of one per step on the
    event loop; ``build_result`` then only reads the first top_k of each row.
    """

    def rank(outputs: Arrays) -> Arrays:
        logits = outputs[logits_name]
        order = np.argsort(-logits, axis=-1, kind="stable")
        exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
        probs = np.take_along_axis(exp, order, axis=-1) / exp.sum(axis=-1, keepdims=True)
        return {RANKED_IDS: order, RANKED_PROBS: probs}

    return rank


def build_result(session: Session, step: pb.Step, decoded: StepInputs, outputs: Arrays) -> pb.StepResult:
    """One StepOutput per time step (or only the last), as the session's options ask.

    A language model's top-k comes from the batch's ranking (``ranked_logits``, which every
    scheduler path runs once the driver has set it), so here it is only read.
    """
    vocab = vocabulary_of(session.runtime.model.manifest)
    tokens = vocab.tokens if vocab is not None else []
    first = decoded.steps - 1 if step.last_only else 0
    top_k = session.options.top_k if vocab is not None else 0
    ids = outputs[RANKED_IDS][first:, :top_k].tolist() if top_k else []
    probs = outputs[RANKED_PROBS][first:, :top_k].tolist() if top_k else []
    result = pb.StepResult(seq=step.seq)
    for t in range(first, decoded.steps):
        out = result.outputs.add()
        if vocab is not None and decoded.token_ids is not None:
            out.input = tokens[int(decoded.token_ids[t])]
        if top_k:
            row = t - first
            out.top.extend(
                [pb.TokenProb(id=i, token=tokens[i], prob=p) for i, p in zip(ids[row], probs[row], strict=True)]
            )
        for name in session.options.return_tensors:
            out.tensors.append(to_proto(name, outputs[name][t]))
    return result


def start_step(session: Session, decoded: StepInputs) -> asyncio.Future[Arrays]:
    """Hands the step to the model's scheduler; the caller holds the session's lock.

    The future completes when the step has run and the session's new state is written; read it
    with ``finish_step``.
    """
    runtime = session.runtime
    scheduler = runtime.scheduler
    if scheduler.postprocess is None and vocabulary_of(runtime.model.manifest) is not None:
        scheduler.postprocess = ranked_logits(logits_output(runtime.model.manifest))
    try:
        return scheduler.submit(session.row, decoded.arrays, decoded.steps)
    except SchedulerStopped as exc:
        raise Unavailable(f"the server is stopping: {exc}") from exc


def finish_step(session: Session, future: asyncio.Future[Arrays]) -> Arrays:
    """The outputs of a finished step; its failure as the StatestreamError a client should see."""
    if future.cancelled():
        raise Unavailable("the step was cancelled before it ran; the session is unchanged")
    exc = future.exception()
    if isinstance(exc, SchedulerStopped):
        raise Unavailable(f"the server is stopping: {exc}") from exc
    if isinstance(exc, StatestreamError):
        raise exc
    if exc is not None:  # the model itself failed on this step: the session's state is unchanged
        raise ModelFailed(
            f"the model failed on this step ({type(exc).__name__}: {exc}); the session is unchanged"
        ) from exc
    outputs = future.result()
    logits = outputs.get(logits_output(session.runtime.model.manifest))
    if logits is not None:
        # Kept so a later Generate with no prompt can continue from where the stream is.
        session.scratch["last_logits"] = logits[-1].copy()
    return outputs


async def run_step(session: Session, decoded: StepInputs) -> Arrays:
    """Runs the step and waits for it; if the caller is cancelled, still waits for it to land.

    A generation that is cut off rolls the session's state back. A step it had submitted runs
    and writes its state whatever happens to the caller; were the rollback to come first, that
    write would land after it and leave the state one token ahead of ``last_applied_seq``. So the
    cancellation is passed on only once the step is done.
    """
    future = start_step(session, decoded)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        if not future.done():
            await asyncio.wait((future,))
        if not future.cancelled():
            future.exception()  # retrieved: its outcome no longer matters to anyone
        raise
    except Exception:
        pass  # finish_step reports it
    return finish_step(session, future)
