"""Server-side loops: run the model on the server until a stop condition, one mechanism for all.

A language model's sampling (Generate), a forecaster's rollout, a captioner's decode until
``<END>``, a Hopfield net's sweeps until a fixed point: each is a ``Loop`` that a driver plans
(validating the request before anything runs) and the servicer runs under the session's lock.
The servicer checkpoints the session's row first and, if the loop does not finish (the stream
broke, the server stops), rolls it back through the session store, so a loop is applied entirely
or not at all: one seq, like a step.

A loop steps through ``LoopContext.step``, which goes through the model's scheduler, so loops of
many sessions share batches with each other and with plain steps. A loop that needs rows of its
own (beam search's hypotheses, a rollout that must not move the session) borrows them: fork-like
copies of the session's row, stepped like any row and given back when the loop ends.
"""

from __future__ import annotations

import asyncio
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays
from service.drivers.steps import StepInputs, run_step

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.session_view import SessionView


def resolve_seed(request: pb.Generate | pb.Run) -> int:
    """The request's seed, or a fresh random one (reported back so the run can be repeated)."""
    return request.seed if request.HasField("seed") else secrets.randbits(63)


class LoopContext:
    """What a running loop may do with its session: step rows, borrow and copy rows."""

    def __init__(self, session: SessionView) -> None:
        self.session = session
        self._borrowed: list[int] = []

    async def step(self, decoded: StepInputs, row: int | None = None) -> Arrays:
        """One step of the session's row (default) or of a borrowed row, through the scheduler."""
        return await run_step(self.session, decoded, row)

    async def step_rows(self, steps: Sequence[tuple[int | None, StepInputs]]) -> list[Arrays]:
        """Steps several rows at once (beams): they go to the scheduler together and batch."""
        return list(await asyncio.gather(*(run_step(self.session, decoded, row) for row, decoded in steps)))

    def borrow_row(self, copy_of: int | None = None) -> int:
        """A row of the model's slabs holding a copy of ``copy_of`` (the session's row by default)."""
        slabs = self.session.runtime.slabs
        row = slabs.allocate()
        self._borrowed.append(row)
        slabs.copy_row(self.session.row if copy_of is None else copy_of, row)
        return row

    def copy_row(self, source: int, target: int) -> None:
        """Overwrites ``target`` (a borrowed row, or the session's own) with ``source``."""
        self.session.runtime.slabs.copy_row(source, target)

    def read_row(self, row: int | None = None) -> dict[str, np.ndarray]:
        """A copy of the state of the session's row (or a borrowed one): for a loop that streams the state itself."""
        return self.session.runtime.slabs.read_row(self.session.row if row is None else row)

    def write_row(self, state: Mapping[str, np.ndarray], row: int | None = None) -> None:
        """Overwrites the session's row (or a borrowed one) with ``state``: a loop that starts from a
        given state (a completion's probe). The servicer's checkpoint still restores the row if the
        loop does not finish, so the session is unchanged then."""
        self.session.runtime.slabs.write_row(self.session.row if row is None else row, state)

    def release(self) -> None:
        """Gives the borrowed rows back; the servicer calls it when the loop ends, however it ends."""
        slabs = self.session.runtime.slabs
        while self._borrowed:
            slabs.release(self._borrowed.pop())


class Loop(ABC):
    """A validated server-side run of one session, streaming its answers as it goes."""

    def __init__(self, seq: int) -> None:
        self.seq = seq

    @abstractmethod
    def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        """Yields each step's answer as soon as it is made; returns at the stop condition."""

    @abstractmethod
    def done(self) -> pb.SessionResponse:
        """The final answer (GenerateDone, RunDone), recorded with the seq and re-sent to a duplicate."""
