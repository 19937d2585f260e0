"""One step of a session through the scheduler: the machinery every driver shares.

A driver decodes a request into ``StepInputs`` (the contract's tensors, ``[K, *shape]`` per
input); these functions hand it to the model's scheduler, wait for it exactly once, and map its
failure to the status a client should see. Nothing here knows a model kind.
"""

from __future__ import annotations

import asyncio
import math
import sys
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, Manifest
from service.errors import InvalidArgument, ResourceExhausted, as_statestream_error
from service.tensors import from_proto, proto_dtype

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.session_view import SessionView
    from service.scheduler import Orphan

# The fast finiteness test (``all_finite``) squares a step's values; for values past ~1.8e19 the sum
# overflows, which numpy reports as a RuntimeWarning each time. That step is then checked the
# long way and accepted, so the overflow is expected and says nothing: keep it out of the log.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)

#: The wire is little-endian: where this machine is too, a step's bytes are its values as they
#: are, and the fast readers (``StepDecoder``'s first pass, ``step_bytes``) may take them.
WIRE_IS_NATIVE = sys.byteorder == "little"


@dataclass
class StepInputs:
    """A decoded, validated step: tensors ``[K, *shape]`` by input name."""

    arrays: Arrays
    steps: int
    token_ids: np.ndarray | None = None  # language models: the K input ids


class StepHeader(Protocol):
    """What an applied step's answer needs of the step: its seq, and whether only its last time
    step is answered. A parsed ``pb.Step`` is one; so is a step read from its bytes
    (``service.drivers.step_bytes.ReadStep``), which builds no message."""

    @property
    def seq(self) -> int: ...
    @property
    def last_only(self) -> bool: ...


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


class StepDecoder:
    """A model's step tensors, decoded by one pass of equality tests when they are well formed.

    ``decode_tensors`` checks a step field by field so that it can name what is wrong. On the
    hot path that was a large share of a step (docs/benchmarks.md, "The hot path, fourth
    session"), most of it sets, dicts and message reads for checks a well-formed step always
    passes. This decoder first compares each tensor with what the model's input looks like on
    the wire (its name and DataType, in the manifest's order; the trailing shape; the byte
    count; finite values) and decodes it with one ``frombuffer``. Anything else (another order,
    a missing or extra tensor, a wrong shape, NaN, a big-endian host) goes to ``decode_tensors``,
    which accepts or refuses it exactly as before: the fast pass only ever says "well formed" or
    "look closer".
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        #: Per input: name, DataType number, dtype, trailing shape (a list, as protobuf returns
        #: it), bytes per time step, and whether its values must be finite.
        self._wire = tuple(
            (
                spec.name,
                proto_dtype(spec.dtype),
                np.dtype(spec.np_dtype).newbyteorder("<"),
                list(spec.shape),
                math.prod(spec.shape) * np.dtype(spec.np_dtype).itemsize,
                np.dtype(spec.np_dtype).kind == "f",
            )
            for spec in manifest.inputs
        )

    def decode(self, tensors: pb.TensorInput, max_chunk: int) -> StepInputs:
        """Raw tensors → step inputs, as ``decode_tensors`` decodes them (and refuses the same)."""
        decoded = self._well_formed(tensors.tensors, max_chunk) if WIRE_IS_NATIVE else None
        return decoded if decoded is not None else decode_tensors(self.manifest, tensors, max_chunk)

    def _well_formed(self, tensors: Collection[pb.Tensor], max_chunk: int) -> StepInputs | None:
        """The decoded step if every tensor is exactly what the model takes, else None."""
        wire = self._wire
        if len(tensors) != len(wire):
            return None
        arrays: Arrays = {}
        steps = 0
        for tensor, (name, number, dtype, shape, step_bytes, finite) in zip(tensors, wire, strict=True):
            if tensor.name != name or tensor.dtype != number:
                return None
            dims = tensor.shape
            if len(dims) != len(shape) + 1 or dims[1:] != shape:
                return None
            count = dims[0]
            if not 0 < count <= max_chunk or (steps and count != steps):
                return None
            data = tensor.data  # each read of a bytes field copies it: read it once
            if len(data) != count * step_bytes:
                return None
            flat = np.frombuffer(data, dtype)
            if finite and not all_finite(flat):
                return None
            arrays[name] = flat.reshape(count, *shape)
            steps = count
        return StepInputs(arrays, steps)


def all_finite(values: np.ndarray) -> bool:
    """Whether every value of a flat float array is finite, by the fast test: a finite sum of
    squares (NaN and Inf propagate), one BLAS call, several times cheaper than
    ``isfinite().all()``. A sum that overflows says False for a finite array, so a caller only
    uses it to pick the fast way, and checks a False the long way; it never lets a NaN through."""
    return math.isfinite(values.dot(values))


def start_step(
    session: SessionView,
    decoded: StepInputs,
    row: int | None = None,
    *,
    lane: bool = False,
    orphan: Orphan | None = None,
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


def finish_step(session: SessionView, future: asyncio.Future[Arrays], *, own_row: bool = True) -> Arrays:
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


async def run_step(session: SessionView, decoded: StepInputs, row: int | None = None) -> Arrays:
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
