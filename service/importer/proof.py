"""The importer's proofs: the original graph run as it is (the golden trace), and batch invariance.

``OriginalGraph`` runs the foreign graph one session at a time in its own layout (state where its
batch axis is, the carried tail prepended in numpy), so the golden trace does not come from the
wrapper it must check. ``check_batch_invariance`` steps several sessions together through the
wrapper and compares each with the original run alone: a wrong ``batch_axis``, or a graph that
mixes the rows of a batch, fails here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.contract import Arrays, GoldenTrace, Manifest
from service.importer.signature import ImportPlan, Placed
from service.importer.spec import ImportRefused
from service.importer.wrapper import carry_state_names

GOLDEN_STEPS = 8
GOLDEN_TOLERANCE = 1e-4
#: Largest |batched - alone| accepted; batched and batch-1 kernels differ by ~1e-6 in float32.
BATCH_TOLERANCE = 1e-4
BATCH_SESSIONS = 3
BATCH_STEPS = 5


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def open_graph(model_bytes: bytes, what: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refused run is reported in one line of ours, not in ORT's log
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise ImportRefused(f"ONNX Runtime cannot load the {what} ({_one_line(exc)})") from None


def random_steps(placed: Placed, steps: int, rng: np.random.Generator) -> np.ndarray:
    """``steps`` per-step values of an input: normal floats, or 0/1 for integer inputs."""
    if placed.tensor.dtype.kind == "f":
        return rng.standard_normal((steps, *placed.shape)).astype(placed.tensor.dtype)
    return rng.integers(0, 2, (steps, *placed.shape)).astype(placed.tensor.dtype)


@dataclass
class OriginalGraph:
    """The foreign graph, one session, one step per call, in the graph's own layout."""

    session: ort.InferenceSession
    plan: ImportPlan

    def start(self) -> Arrays:
        """A new session's state in the graph's layout (zeros), and its carry (zeros)."""
        state = {
            p.name: np.zeros((1, *p.shape), p.tensor.dtype).transpose(p.to_graph_perm(False))
            for _, p, _ in self.plan.state
        }
        carried = self.plan.carried
        if carried is not None:
            state[carry_state_names(carried.name)[0]] = np.zeros(
                (1, *carried.shape[:-1], self.plan.carry_keep), carried.tensor.dtype
            )
        return state

    def step(self, state: Arrays, inputs: Arrays) -> tuple[Arrays, Arrays]:
        """One step from ``state``: its outputs (``[*shape]`` each, per the contract) and the next state."""
        plan, with_time = self.plan, self.plan.time_axis is not None
        feed: Arrays = dict(plan.constants)
        next_state: Arrays = {}
        for placed in plan.inputs:
            value = inputs[placed.name][np.newaxis, np.newaxis] if with_time else inputs[placed.name][np.newaxis]
            if placed is plan.carried:
                carry_in, _ = carry_state_names(placed.name)
                value = np.concatenate([state[carry_in], value], axis=-1)
                next_state[carry_in] = value[..., -plan.carry_keep :]
            feed[placed.name] = value.transpose(placed.to_graph_perm(with_time))
        for rule, placed, _ in plan.state:
            feed[rule.input] = state[placed.name]
        names = [t.name for t in plan.outputs] + [target.name for _, _, target in plan.state]
        try:
            results = dict(zip(names, self.session.run(names, feed), strict=True))
        except Exception as exc:
            raise ImportRefused(f"the original graph refused one session's step ({_one_line(exc)})") from None
        for rule, _, _ in plan.state:
            if results[rule.output].shape != feed[rule.input].shape:
                raise ImportRefused(
                    f"[[state]] output {rule.output!r} came out {list(results[rule.output].shape)}, "
                    f"its input {rule.input!r} went in {list(feed[rule.input].shape)}: they must match"
                )
            next_state[rule.input] = results[rule.output]
        outputs = {}
        for tensor in plan.outputs:
            moved = results[tensor.name].transpose(plan.place_output(tensor, ()).contract_order(with_time))
            outputs[tensor.name] = moved.reshape(moved.shape[2 if with_time else 1 :])
        return outputs, next_state

    def run(self, inputs: Arrays) -> Arrays:
        """A whole sequence (``[T, *shape]`` per input) of one session: each output ``[T, *shape]``."""
        state = self.start()
        steps: list[Arrays] = []
        for t in range(len(next(iter(inputs.values())))):
            outputs, state = self.step(state, {name: value[t] for name, value in inputs.items()})
            steps.append(outputs)
        return {name: np.stack([s[name] for s in steps]) for name in steps[0]}

    def record_golden(self, seed: int = 0) -> tuple[GoldenTrace, dict[str, tuple[int, ...]]]:
        """The golden trace (GOLDEN_STEPS steps of seeded inputs) and each per-step output's shape."""
        rng = np.random.default_rng(seed)
        inputs = {p.name: random_steps(p, GOLDEN_STEPS, rng) for p in self.plan.inputs}
        outputs = self.run(inputs)
        for tensor in self.plan.outputs:
            if outputs[tensor.name].dtype.name != tensor.dtype.name:
                raise ImportRefused(f"output {tensor.describe()} came out {outputs[tensor.name].dtype.name}")
        trace = GoldenTrace(
            inputs={name: value.tolist() for name, value in inputs.items()},
            outputs={name: value.tolist() for name, value in outputs.items()},
            tolerance=GOLDEN_TOLERANCE,
        )
        return trace, {name: tuple(value.shape[1:]) for name, value in outputs.items()}


def check_batch_invariance(wrapper: ort.InferenceSession, manifest: Manifest, reference: OriginalGraph) -> float:
    """Steps BATCH_SESSIONS sessions together through the wrapper, one step per call (and, where the
    graph takes a time axis, all steps in one call); each must equal the original run alone.

    Returns the largest difference; ImportRefused names the session, step and output that differ.
    """
    rng = np.random.default_rng(1)
    per_session = [
        {p.name: random_steps(p, BATCH_STEPS, rng) for p in reference.plan.inputs} for _ in range(BATCH_SESSIONS)
    ]
    alone = [reference.run(inputs) for inputs in per_session]
    stacked = {name: np.stack([s[name] for s in per_session]) for name in per_session[0]}
    chunks = [1, BATCH_STEPS] if reference.plan.time_axis is not None else [1]
    worst = 0.0
    for chunk in chunks:
        together = _run_wrapper(wrapper, manifest, stacked, chunk)
        for name, batched in together.items():
            for session, expected in enumerate(alone):
                diff = np.abs(batched[session].astype(np.float64) - expected[name].astype(np.float64))
                per_step = diff.reshape(BATCH_STEPS, -1).max(axis=1) if diff.size else np.zeros(BATCH_STEPS)
                bad = np.flatnonzero(~(per_step <= BATCH_TOLERANCE))
                if bad.size:
                    raise ImportRefused(
                        f"batch invariance check failed: session {session} of {BATCH_SESSIONS} stepped together "
                        f"(chunks of {chunk}) differs from it stepped alone by {per_step[bad[0]]:.3g} at step "
                        f"{bad[0]} in output {name!r}: a batch_axis in the spec is wrong, or the graph mixes sessions"
                    )
                worst = max(worst, float(per_step.max()) if per_step.size else 0.0)
    return worst


def _run_wrapper(wrapper: ort.InferenceSession, manifest: Manifest, inputs: Arrays, chunk: int) -> Arrays:
    """The sessions of ``inputs`` (``[B, T, *shape]``) together through the wrapper, ``chunk`` steps a call."""
    batch, steps = next(iter(inputs.values())).shape[:2]
    state = {s.input: np.zeros((batch, *s.shape), s.np_dtype) for s in manifest.state}
    names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    collected: dict[str, list[np.ndarray]] = {t.name: [] for t in manifest.outputs}
    for start in range(0, steps, chunk):
        feed = {name: value[:, start : start + chunk] for name, value in inputs.items()}
        try:
            results = dict(zip(names, wrapper.run(names, {**feed, **state}), strict=True))
        except Exception as exc:
            raise ImportRefused(
                f"batch invariance check failed: the wrapped graph cannot step {batch} sessions in one call "
                f"({_one_line(exc)}); is every batch_axis in the spec right?"
            ) from None
        for name in collected:
            collected[name].append(results[name])
        state = {s.input: results[s.output] for s in manifest.state}
    return {name: np.concatenate(parts, axis=1) for name, parts in collected.items()}
