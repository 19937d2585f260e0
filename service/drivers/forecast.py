"""The forecaster driver: the next value as each observation arrives, and H-step rollouts that leave the session be.

The model is a one-step graph (``training/tasks/forecaster/export.py``): ``observation [F]`` in,
``prediction [F]`` (its estimate of the next observation) out, and whatever state the net keeps
(an echo state network's reservoir; an adaptive one's readout and inverse correlation matrix
too). Everything is in the series' own units: the graph normalises.

**Steps** carry one observation (``observation [1, F]``; one step per call, so a chunk of K > 1 is
refused, saying so); the answer holds ``prediction`` (the default ``return_tensors``).

**Run** is the rollout, ``max_steps`` its horizon H: the first answer is the last step's
prediction, each later one feeds the previous prediction back as if observed. It runs on a
borrowed row (``LoopContext.borrow_row``), so the session's own state does not move. A horizon
over ``decoding.max_horizon`` (or ``--max-run-steps``), or a rollout before any observation, is
refused before anything runs (docs/zoo.md, "Served: task: forecaster").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.loops import Loop, LoopContext
from service.drivers.session_view import SessionView
from service.drivers.steps import StepInputs
from service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from service.session_options import ResolvedOptions
from service.tasks import register
from service.tensors import to_proto

TASK = "forecaster"
OBSERVATION, PREDICTION = "observation", "prediction"
#: Where a session keeps its last prediction: the rollout's first value and its first input.
LAST_PREDICTION = "last_prediction"


@register(TASK)
class ForecastDriver(Driver):
    sends = "tensor observation [1, F]: one observation per Step, in the series' own units"
    returns = "per step, prediction [F]: the model's estimate of the next observation"
    run = (
        "rollout: max_steps is the horizon H; RunOutput i holds prediction [F] for the observation i + 1 steps "
        "ahead, each fed back as the next input; it runs on a copy of the session's row, so the session's state "
        "does not move; H is bounded by decoding.max_horizon"
    )
    run_moves_state = False

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.max_horizon = int(manifest.decoding["max_horizon"])
        self.features = manifest.inputs[0].shape

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        names_in = [t.name for t in manifest.inputs]
        names_out = [t.name for t in manifest.outputs]
        if names_in != [OBSERVATION] or PREDICTION not in names_out:
            raise ContractError(f"a forecaster takes {OBSERVATION!r} and returns {PREDICTION!r}")
        spec_in = manifest.inputs[0]
        spec_out = next(t for t in manifest.outputs if t.name == PREDICTION)
        if (spec_in.dtype, spec_in.shape) != (spec_out.dtype, spec_out.shape) or spec_in.dtype != "float32":
            raise ContractError("a forecaster's prediction is float32 and shaped like its observation (it is fed back)")
        horizon = manifest.decoding.get("max_horizon")
        if not isinstance(horizon, int) or horizon < 1:
            raise ContractError("a forecaster's manifest needs decoding.max_horizon, a whole number >= 1")
        if manifest.decoding.get("steps_per_call") != 1:
            raise ContractError("a forecaster's graph runs one step per call: decoding.steps_per_call must be 1")

    @property
    def run_steps_bound(self) -> int:
        return self.max_horizon

    def resolve_options(self, options: pb.SessionOptions) -> ResolvedOptions:
        resolved = super().resolve_options(options)
        if not resolved.return_tensors:
            resolved.return_tensors = (PREDICTION,)
        return resolved

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        decoded = super().decode_step(step, max_chunk)
        if decoded.steps != 1:
            raise InvalidArgument(
                f"model {self.manifest.name!r} takes one observation per Step, this one carries {decoded.steps}"
            )
        return decoded

    def after_step(self, session: SessionView, outputs: Arrays) -> None:
        session.scratch[LAST_PREDICTION] = outputs[PREDICTION][-1].copy()

    def plan_run(self, session: SessionView, request: pb.Run, limits: bounds.Limits) -> Loop:
        """Checks the horizon and that there is something to roll out from; nothing has run when this raises."""
        self.check_run_steps(request, limits)
        if request.max_steps > self.max_horizon:
            raise ResourceExhausted(
                "max_horizon", self.max_horizon, f"model {self.manifest.name!r} rolls out at most that many steps"
            )
        self.run_options_of(request)  # the rollout takes no option: any is refused by name
        if request.tensors.tensors:
            raise InvalidArgument("a rollout takes no tensors: it starts from the session's last prediction")
        if LAST_PREDICTION not in session.scratch:
            raise FailedPrecondition("the session has seen no observation yet: send one before a rollout")
        per_step = bounds.step_output(self.manifest, [PREDICTION])
        limits.check_fits(bounds.run_output(per_step), "one rollout step", "")
        return RolloutLoop(request.seq, request.max_steps, session.scratch[LAST_PREDICTION].copy())


class RolloutLoop(Loop):
    """Feeds each prediction back as the next observation, on a borrowed copy of the session's row."""

    def __init__(self, seq: int, horizon: int, first: np.ndarray) -> None:
        super().__init__(seq)
        self.horizon = horizon
        self.first = first
        self.answer = pb.RunDone(seq=seq, stop_reason="horizon")

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        row = context.borrow_row()
        prediction = self.first
        for index in range(self.horizon):
            if index > 0:
                outputs = await context.step(StepInputs({OBSERVATION: prediction[None]}, 1), row)
                prediction = outputs[PREDICTION][0]
            self.answer.steps = index + 1
            output = pb.StepOutput(tensors=[to_proto(PREDICTION, prediction)])
            yield pb.SessionResponse(run_output=pb.RunOutput(seq=self.seq, index=index, output=output))

    def done(self) -> pb.SessionResponse:
        return pb.SessionResponse(run_done=self.answer)
