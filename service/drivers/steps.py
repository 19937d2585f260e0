"""One step of a session through the scheduler: the machinery every driver shares.

A driver decodes a request into ``StepInputs`` (the contract's tensors, ``[K, *shape]`` per
input); these functions hand it to the model's scheduler, wait for it exactly once, and map its
failure to the status a client should see. Nothing here knows a model kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.errors import InvalidArgument, ResourceExhausted, as_statestream_error
from service.tensors import from_proto

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.scheduler import Orphan
    from service.sessions import Session

Arrays = dict[str, np.ndarray]


@dataclass
class StepInputs:
    """A decoded, validated step: tensors ``[K, *shape]`` by input name."""

    arrays: Arrays
    steps: int
    token_ids: np.ndarray | None = None  # language models: the K input ids


def check_chunk(steps: int, max_chunk: int) -> None:
    if steps == 0:
        raise InvalidArgument("step is empty: it must carry at least one time step")
    if steps > max_chunk:
        raise ResourceExhausted("max_chunk", max_chunk, f"the step carries {steps} time steps")


def named_tensors(tensors: Iterable[pb.Tensor], expected: Collection[str], what: str) -> Arrays:
    """Decodes a request's named tensors: each of ``expected`` exactly once, no other name.

    ``what`` names them in the errors ("input", "init").
    """
    given: Arrays = {}
    for tensor in tensors:
        if tensor.name in given:
            raise InvalidArgument(f"{'' if what == 'input' else what + ' '}tensor {tensor.name!r} is given twice")
        given[tensor.name] = from_proto(tensor)
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise InvalidArgument(f"unknown {what} tensor(s) {unknown}; the model takes {sorted(expected)}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise InvalidArgument(f"missing {what} tensor(s) {missing}")
    return given


def decode_tensors(manifest: Manifest, tensors: pb.TensorInput, max_chunk: int) -> StepInputs:
    """Raw tensors → step inputs: names, dtypes, shapes ``[K, *shape]``, one K, finite values."""
    expected = {spec.name: spec for spec in manifest.inputs}
    given = named_tensors(tensors.tensors, expected, "input")
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
    check_chunk(steps, max_chunk)
    return StepInputs(given, steps)


def start_step(
    session: Session, decoded: StepInputs, row: int | None = None, *, lane: bool = False, orphan: Orphan | None = None
) -> asyncio.Future[Arrays]:
    """Hands the step to the model's scheduler; the caller holds the session's lock.

    ``row`` is the slab row to step: the session's own by default, or a row a server-side loop
    borrowed (a beam, a rollout). The future completes when the step has run and the row's new
    state is written; read it with ``finish_step``. ``lane``: a lone stream's step may run at
    once; ``orphan``: where its outcome goes if an awaiter cancels the future (both
    ``Scheduler.submit``).
    """
    try:
        return session.runtime.scheduler.submit(
            session.row if row is None else row, decoded.arrays, decoded.steps, lane=lane, orphan=orphan
        )
    except Exception as exc:
        raise as_statestream_error(exc) from exc


def finish_step(session: Session, future: asyncio.Future[Arrays], *, own_row: bool = True) -> Arrays:
    """The outputs of a finished step; its failure as the StatestreamError a client should see.

    A step of the session's own row lets the driver keep what a later request needs.
    """
    if future.cancelled():
        raise as_statestream_error(asyncio.CancelledError())
    exc = future.exception()
    if exc is not None:
        raise as_statestream_error(exc) from exc
    outputs = future.result()
    if own_row:
        session.runtime.driver.after_step(session, outputs)
    return outputs


async def run_step(session: Session, decoded: StepInputs, row: int | None = None) -> Arrays:
    """Runs the step and waits for it; if the caller is cancelled, still waits for it to land.

    A loop that is cut off rolls the session's state back. A step it had submitted runs and
    writes its state whatever happens to the caller; were the rollback to come first, that
    write would land after it and leave the state one step ahead of ``last_applied_seq``. So
    the cancellation is passed on only once the step is done.
    """
    future = start_step(session, decoded, row)
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
    return finish_step(session, future, own_row=row is None)
