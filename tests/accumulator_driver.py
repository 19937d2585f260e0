"""A test-only model kind, added by touching only this driver file and the tests.

It proves that a model kind is a plug-in: nothing in ``service/`` names it. The model
(``tests/accumulator_model.py``) keeps a running sum per session::

    acc_t = acc_{t-1} + scale * x_t        y_t = acc_t

with an init graph that makes ``acc_0 = offset`` and the context ``scale = 1 + |offset|`` from
the open's payload; ``scale`` is read at every step and never written. Its server-side Run adds
``increment`` every step until the first unit reaches ``threshold`` (stop reason ``threshold``)
or ``max_steps`` steps have run (``max_steps``); with ``on_copy`` set it runs on a borrowed copy
of the session's row (a what-if rollout, as a forecaster's), and the session does not move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from service.api import statestream_pb2 as pb
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.loops import Loop, LoopContext
from service.drivers.steps import StepInputs
from service.session_store import Session
from service.tasks import register
from service.tensors import to_proto

TASK = "accumulator"


@register(TASK)
class AccumulatorDriver(Driver):
    run = "adds `increment` to every unit each step until unit 0 reaches `threshold`"
    run_options = {  # noqa: RUF012 - a class-level table, never mutated
        "increment": (1.0, "added to every unit at each step"),
        "threshold": (10.0, "the run stops once unit 0 reaches it"),
        "on_copy": (0.0, "1: run on a borrowed copy of the session's row; the session stays where it was"),
    }

    def plan_run(self, session: Session, request: pb.Run, limits: bounds.Limits) -> Loop:
        self.check_run_steps(request, limits)
        options = self.run_options_of(request)
        spec = self.manifest.outputs[0]
        limits.check_fits(
            bounds.run_output(bounds.step_output(self.manifest, [spec.name], label_bytes=8)), "one run step", ""
        )
        loop = AccumulateLoop(request.seq, request.max_steps, options["increment"], options["threshold"], self)
        loop.on_copy = options["on_copy"] == 1.0
        return loop


class AccumulateLoop(Loop):
    def __init__(self, seq: int, max_steps: int, increment: float, threshold: float, driver: AccumulatorDriver) -> None:
        super().__init__(seq)
        self.max_steps = max_steps
        self.increment = increment
        self.threshold = threshold
        self.driver = driver
        self.answer = pb.RunDone(seq=seq)
        self.on_copy = False

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        spec = self.driver.manifest.inputs[0]
        x = np.full((1, *spec.shape), self.increment, dtype=spec.np_dtype)
        row = context.borrow_row() if self.on_copy else None
        for index in range(self.max_steps):
            outputs = await context.step(StepInputs({spec.name: x}, 1), row)
            y = outputs["y"][0]
            self.answer.steps = index + 1
            label = "above" if y[0] >= self.threshold else "below"
            output = pb.StepOutput(tensors=[to_proto("y", y)], label=label)
            yield pb.SessionResponse(run_output=pb.RunOutput(seq=self.seq, index=index, output=output))
            if y[0] >= self.threshold:
                self.answer.stop_reason = "threshold"
                return
        self.answer.stop_reason = "max_steps"

    def done(self) -> pb.SessionResponse:
        return pb.SessionResponse(run_done=self.answer)
