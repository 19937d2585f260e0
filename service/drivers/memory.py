"""The associative-memory driver: complete a pattern on the server, one update sweep per model step.

The model is a sweep graph (docs/memory.md, "The sweep graph"): its state is the current pattern,
one call is one sweep with the inputs ``clamp_mask``, ``clamp_values``, ``noise`` (nets that draw
something) and ``temperature`` (stochastic nets), and it writes ``energy`` and ``changed``.
**Steps** are those raw tensors: a client drives the sweeps itself (e.g. to complete a pattern as
its pixels arrive), noise and temperature included.

**Run** is the completion loop, and the server draws all its randomness. It sets the session's
pattern to "unset", so the first sweep loads the probe (``Run.tensors``: ``pattern``, ``mask``)
and the answer depends only on the probe, the options and the seed; each sweep goes through the
scheduler, its noise drawn from a numpy Generator seeded by the Run's seed (the graph holds none,
so a run repeats alone or batched); stochastic nets anneal ``T`` from ``t_start`` to ``t_end``.
One ``RunOutput`` per sweep until a fixed point, the schedule's end or ``max_steps``. Everything
is checked before a sweep runs. The Run's protocol, exactly: docs/api.md, "Associative memories".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.loops import Loop, LoopContext, resolve_seed
from service.drivers.session_view import SessionView
from service.drivers.steps import StepInputs, named_tensors
from service.errors import InvalidArgument
from service.tasks import register
from service.tensors import to_proto

TASK = "associative_memory"
PROBE = "pattern"
MASK = "mask"
STATE_IN, STATE_OUT = "pattern_in", "pattern_out"
CLAMP_INPUTS = ("clamp_mask", "clamp_values")
#: The longest stored-pattern name a label may carry (for the answer-size bound).
MAX_LABEL_BYTES = 32


def values_of(manifest: Manifest) -> str:
    """``bipolar`` or ``binary``: what a unit of the model takes (``decoding.values``)."""
    return str(manifest.decoding.get("values", ""))


def geometric_schedule(t_start: float, t_end: float, sweeps: int) -> np.ndarray:
    """``T`` of each of ``sweeps`` sweeps, falling geometrically from ``t_start`` to ``t_end``."""
    return np.geomspace(t_start, t_end, sweeps).astype(np.float32)


def completion_feeds(
    manifest: Manifest, pattern: np.ndarray, mask: np.ndarray, *, seed: int, temperatures: np.ndarray | None
) -> Iterator[Arrays]:
    """The per-sweep inputs of a completion, ``[1, 1, ...]`` each, one dict per sweep, forever.

    This is the whole of a Run's randomness, so an offline reference that feeds these to the
    same graph from a zero state gets the served run exactly. ``temperatures`` (stochastic
    nets): the schedule; the last value is kept if the feed is read past it.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    noise_units = int(manifest.decoding.get("noise_units", 0))
    clamp = {
        "clamp_mask": np.asarray(mask, np.float32).reshape(1, 1, -1),
        "clamp_values": np.asarray(pattern, np.float32).reshape(1, 1, -1),
    }
    sweep = 0
    while True:
        feed = dict(clamp)
        if noise_units:
            feed["noise"] = rng.random((1, 1, noise_units), dtype=np.float32)
        if temperatures is not None:
            t = temperatures[min(sweep, len(temperatures) - 1)]
            feed["temperature"] = np.full((1, 1), t, np.float32)
        yield feed
        sweep += 1


@register(TASK)
class MemoryDriver(Driver):
    sends = (
        "tensors clamp_mask, clamp_values [K, N] (and noise, temperature where the model takes them): "
        "K sweeps from where the session is (completion as pixels arrive)"
    )
    returns = "per sweep, the outputs named in SessionOptions.return_tensors (energy, changed)"
    run = (
        "completes a probe: Run.tensors pattern [1, N] (bipolar nets: -1/0/+1, 0 unknown; binary: 0/1) and "
        "mask [1, N] (1 = known, held; default none, required for binary nets); the session's pattern is "
        "replaced by the probe and swept until no unit changes (fixed_point), the annealing schedule ends "
        "(schedule_end, stochastic nets) or max_steps; each RunOutput holds pattern, energy and changed, "
        "labelled with the nearest stored pattern where the model names them; noise is drawn from the seed"
    )
    run_options = {  # noqa: RUF012 - a class-level table, never mutated
        "t_start": (1.0, "stochastic nets: temperature of the first sweep (> 0)"),
        "t_end": (1.0, "stochastic nets: temperature of the last sweep of the schedule (> 0)"),
        "sweeps": (0.0, "stochastic nets: length of the schedule in sweeps; 0 = max_steps"),
    }

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.units = int(manifest.state[0].shape[0])
        self.bipolar = values_of(manifest) == "bipolar"
        self.stochastic = any(t.name == "temperature" for t in manifest.inputs)
        names = manifest.decoding.get("pattern_names")
        stored = manifest.decoding.get("patterns")
        self.names: list[str] = [str(n) for n in names] if isinstance(names, list) else []
        self.stored = np.sign(np.asarray(stored, np.float32)) if self.names else np.zeros((0, self.units), np.float32)

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        state = manifest.state
        if len(state) != 1 or (state[0].input, state[0].output) != (STATE_IN, STATE_OUT) or len(state[0].shape) != 1:
            raise ContractError(f"an associative memory has one state, {STATE_IN} -> {STATE_OUT} of shape [N]")
        units = state[0].shape
        inputs = {t.name: t for t in manifest.inputs}
        for name in CLAMP_INPUTS:
            if name not in inputs or inputs[name].shape != units or inputs[name].dtype != "float32":
                raise ContractError(f"an associative memory takes {name} float32 of shape {list(units)}")
        extra = sorted(set(inputs) - {*CLAMP_INPUTS, "noise", "temperature"})
        if extra:
            raise ContractError(f"an associative memory takes no input(s) {extra}")
        noise_units = manifest.decoding.get("noise_units", 0)
        has_noise = "noise" in inputs
        if has_noise != (noise_units > 0) or (has_noise and inputs["noise"].shape != (noise_units,)):
            raise ContractError(f"decoding.noise_units is {noise_units}, the graph's noise input does not match")
        if "temperature" in inputs and inputs["temperature"].shape != ():
            raise ContractError("an associative memory's temperature is a scalar per sweep")
        if values_of(manifest) not in ("bipolar", "binary"):
            raise ContractError("an associative memory's manifest needs decoding.values: 'bipolar' or 'binary'")
        if {t.name for t in manifest.outputs} != {"energy", "changed"}:
            raise ContractError("an associative memory's outputs are energy and changed")
        names, patterns = manifest.decoding.get("pattern_names"), manifest.decoding.get("patterns")
        if names is not None:
            shape = np.shape(patterns) if patterns is not None else ()
            if not isinstance(names, list) or shape != (len(names), units[0]):
                raise ContractError(f"decoding.patterns must be [len(pattern_names), {units[0]}]")
            if max((len(str(n).encode()) for n in names), default=0) > MAX_LABEL_BYTES:
                raise ContractError(f"a stored pattern's name is longer than {MAX_LABEL_BYTES} bytes")

    # -- Run -----------------------------------------------------------------------------

    def plan_run(self, session: SessionView, request: pb.Run, limits: bounds.Limits) -> Loop:
        """Checks the probe, the options and the limits; nothing has run when this raises."""
        self.check_run_steps(request, limits)
        options = self.run_options_of(request)
        temperatures = self._schedule(request, options)
        pattern, mask = self._probe(request)
        limits.check_fits(bounds.run_output(self.sweep_bytes_bound()), "one sweep's answer", "")
        return CompletionLoop(self, request, pattern, mask, temperatures)

    def sweep_bytes_bound(self) -> int:
        """One RunOutput's StepOutput: pattern, energy, changed and a label."""
        step = bounds.step_output(self.manifest, ["energy", "changed"], label_bytes=MAX_LABEL_BYTES)
        return step + bounds.tensor(PROBE, (self.units,), np.float32)

    def _schedule(self, request: pb.Run, options: Mapping[str, float]) -> np.ndarray | None:
        given = sorted(set(request.options))
        if not self.stochastic:
            if given:
                raise InvalidArgument(f"model {self.manifest.name!r} is deterministic: it takes no option {given}")
            return None
        t_start, t_end, sweeps = options["t_start"], options["t_end"], options["sweeps"]
        if not (t_start > 0 and t_end > 0 and np.isfinite(t_start) and np.isfinite(t_end)):
            raise InvalidArgument(f"t_start and t_end must be finite and > 0, got {t_start}, {t_end}")
        if sweeps < 0 or sweeps != int(sweeps):
            raise InvalidArgument(f"sweeps must be a whole number >= 0, got {sweeps}")
        return geometric_schedule(t_start, t_end, int(sweeps) or request.max_steps)

    def _probe(self, request: pb.Run) -> tuple[np.ndarray, np.ndarray]:
        given = {t.name for t in request.tensors.tensors}
        expected = {PROBE, MASK} if (MASK in given or not self.bipolar) else {PROBE}
        if not given:
            raise InvalidArgument(
                f"a completion needs Run.tensors: {PROBE} [1, {self.units}] and {MASK} [1, {self.units}]"
            )
        arrays = named_tensors(request.tensors.tensors, expected, "probe")
        for name, array in arrays.items():
            if array.dtype != np.float32 or array.shape != (1, self.units):
                raise InvalidArgument(
                    f"probe tensor {name!r} is {array.dtype.name} {list(array.shape)}; "
                    f"the model takes float32 [1, {self.units}]"
                )
            if not np.isfinite(array).all():
                raise InvalidArgument(f"probe tensor {name!r} holds NaN or Inf")
        pattern = arrays[PROBE][0]
        mask = arrays[MASK][0] if MASK in arrays else np.zeros(self.units, np.float32)
        if not np.isin(mask, (0.0, 1.0)).all():
            raise InvalidArgument(f"{MASK} takes 0 (free) or 1 (known) only")
        held = mask == 1.0
        if self.bipolar:
            if not np.isin(pattern, (-1.0, 0.0, 1.0)).all():
                raise InvalidArgument(f"model {self.manifest.name!r} is bipolar: {PROBE} takes -1, +1 or 0 (unknown)")
            if (pattern[held] == 0).any():
                raise InvalidArgument(f"a known unit ({MASK} 1) must be -1 or +1 in {PROBE}")
        elif not np.isin(pattern, (0.0, 1.0)).all():
            raise InvalidArgument(f"model {self.manifest.name!r} is binary: {PROBE} takes 0 or 1")
        return pattern, mask

    def label(self, pattern: np.ndarray) -> str:
        """The stored pattern whose signs agree with ``pattern``'s on most units ("" if none are named)."""
        if not self.names:
            return ""
        agreement = (self.stored == np.sign(pattern)[None]).sum(axis=1)
        return self.names[int(np.argmax(agreement))]


class CompletionLoop(Loop):
    """Sweeps the probe until a fixed point, the end of the schedule, or max_steps."""

    def __init__(
        self,
        driver: MemoryDriver,
        request: pb.Run,
        pattern: np.ndarray,
        mask: np.ndarray,
        temperatures: np.ndarray | None,
    ) -> None:
        super().__init__(request.seq)
        self.driver = driver
        self.max_steps = request.max_steps
        self.temperatures = temperatures
        self.seed = resolve_seed(request)
        self.feeds = completion_feeds(driver.manifest, pattern, mask, seed=self.seed, temperatures=temperatures)
        self.answer = pb.RunDone(seq=request.seq, seed=self.seed)

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        driver = self.driver
        # The probe replaces the session's pattern: "unset" (zeros) is what the first sweep loads it into.
        context.write_row({STATE_IN: np.zeros(driver.units, np.float32)})
        schedule = len(self.temperatures) if self.temperatures is not None else None
        for index in range(self.max_steps):
            feed = {name: array[0] for name, array in next(self.feeds).items()}  # [K=1, ...] per input
            outputs = await context.step(StepInputs(feed, 1))
            pattern = context.read_row()[STATE_IN]
            energy, changed = outputs["energy"][0], outputs["changed"][0]
            self.answer.steps = index + 1
            output = pb.StepOutput(
                tensors=[to_proto(PROBE, pattern), to_proto("energy", energy), to_proto("changed", changed)],
                label=driver.label(pattern),
            )
            yield pb.SessionResponse(run_output=pb.RunOutput(seq=self.seq, index=index, output=output))
            if schedule is None and float(changed) == 0.0:
                self.answer.stop_reason = "fixed_point"
                return
            if schedule is not None and index + 1 == schedule:
                self.answer.stop_reason = "schedule_end"
                return
        self.answer.stop_reason = "max_steps"

    def done(self) -> pb.SessionResponse:
        return pb.SessionResponse(run_done=self.answer)
