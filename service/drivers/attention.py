"""The attention decoder driver: decode tokens with attention over a per-session context.

Shared by every kind that is "an encoder run once, then a decoder that attends over what it
made": the captioner (image → words) and the translator (text → characters). A kind subclasses
``AttentionDecoderDriver``, registers its task, and differs only in how the open's init payload
is decoded (``decode_init_bytes``: an image, a string) and how a token renders (``render``).

``check_manifest`` holds the model to the contract when it loads: the init graph makes the
context (``annotations [L, D]``, ``mask [L]``, kept in the session's slab rows) and every state
tensor; the step graph maps ``(previous token id, state..., context...) -> (logits [V], attention
[L], state'...)``, one token per call. A Run decodes (greedy, sampled, or by beam) on borrowed
rows, so the session never moves, and streams each token as soon as it is final
(``service.drivers.beams`` for a beam); a beam's hypotheses step together through the scheduler,
so concurrent decodes share batches. The contract, the options and the answers in full:
docs/architecture.md, "Attention decoders", and docs/api.md.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import ContractError, Manifest
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.beams import BeamSearch, Hypothesis, log_softmax
from service.drivers.loops import Loop, LoopContext, resolve_seed
from service.drivers.sampling import Sampler
from service.drivers.session_view import SessionView
from service.drivers.steps import StepInputs
from service.drivers.vocabulary import Vocabulary
from service.errors import InvalidArgument
from service.tensors import to_proto

#: The widest beam a Run may ask for: each hypothesis holds two slab rows while it runs.
MAX_BEAM = 16


def output_name(manifest: Manifest, key: str) -> str:
    """The step output that ``decoding[key]`` names (default: the key itself)."""
    return str(manifest.decoding.get(key, key))


class AttentionDecoderDriver(Driver):
    """Serves a decoder step graph over an init graph's context; subclasses register a task."""

    sends = "tensors: the previous token id, [1] (one token per step); or a Run, which decodes on the server"
    returns = "per step, the outputs named in SessionOptions.return_tensors (logits, attention)"
    run = (
        "decodes from the session's encoded input until the end token or max_steps, on borrowed rows (the "
        "session does not move); each RunOutput: label = the token, top[0] = its id and probability, tensor "
        "attention [L] = the weights used to choose it"
    )
    run_options = {  # noqa: RUF012 - a class-level table, never mutated
        "beam": (1.0, f"beam width, 1..{MAX_BEAM} (1: greedy or sampled)"),
        "temperature": (0.0, "0: greedy; > 0: sample from softmax(logits / T) with the Run's seed (beam 1 only)"),
    }
    run_moves_state = False

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.vocabulary = Vocabulary(list(manifest.vocabulary))
        self.token_input = manifest.inputs[0]
        self.logits = output_name(manifest, "logits")
        self.attention = output_name(manifest, "attention")
        self.start_id = self.vocabulary.tokens.index(str(manifest.decoding["start_token"]))
        self.end_id = self.vocabulary.tokens.index(str(manifest.decoding["end_token"]))

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        inputs = manifest.inputs
        if len(inputs) != 1 or inputs[0].shape != () or not inputs[0].dtype.startswith("int"):
            raise ContractError("an attention decoder takes exactly one input: the previous token id (integer scalar)")
        vocabulary = manifest.vocabulary
        if not vocabulary:
            raise ContractError("an attention decoder's manifest needs decoding.vocabulary")
        for key in ("start_token", "end_token"):
            if manifest.decoding.get(key) not in vocabulary:
                raise ContractError(f"decoding.{key} must name a token of decoding.vocabulary")
        outputs = {t.name: t for t in manifest.outputs}
        logits, attention = output_name(manifest, "logits"), output_name(manifest, "attention")
        if logits not in outputs or outputs[logits].shape != (len(vocabulary),):
            raise ContractError(f"an attention decoder needs a {logits!r} output of shape [{len(vocabulary)}]")
        if attention not in outputs or len(outputs[attention].shape) != 1:
            raise ContractError(f"an attention decoder needs a {attention!r} output of shape [L]")
        if manifest.init is None or not manifest.context:
            raise ContractError("an attention decoder needs an init graph that makes its context")
        if any(s.init != "init" for s in manifest.state):
            raise ContractError("an attention decoder's state starts from the init graph (init = 'init')")
        length = outputs[attention].shape[0]
        if any(c.shape[0] != length for c in manifest.context):
            raise ContractError(f"every context tensor has the attention's {length} locations first")

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def render(self, token_id: int) -> str:
        """A token as the client sees it (its label); a kind may render differently."""
        return self.vocabulary.decode(token_id)

    # -- steps ---------------------------------------------------------------------------

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        decoded = super().decode_step(step, max_chunk)
        if decoded.steps != 1:
            raise InvalidArgument(f"an attention decoder takes one token per step, the step carries {decoded.steps}")
        self.vocabulary.check_ids(decoded.arrays[self.token_input.name].reshape(-1).astype(np.int64))
        return decoded

    def feed(self, token: int) -> StepInputs:
        """One decoder step's input: the previous token."""
        return StepInputs({self.token_input.name: np.full(1, token, dtype=self.token_input.np_dtype)}, 1)

    # -- Run -----------------------------------------------------------------------------

    def token_bytes_bound(self) -> int:
        """One streamed token: its label, its TokenProb and its attention map."""
        longest = max(len(self.render(i).encode()) for i in range(len(self.vocabulary)))
        return bounds.step_output(self.manifest, [self.attention], label_bytes=longest) + bounds.ranked_tokens(
            longest, 1
        )

    def plan_run(self, session: SessionView, request: pb.Run, limits: bounds.Limits) -> Loop:
        """Checks the options and limits; nothing has run when this raises."""
        self.check_run_steps(request, limits)
        if request.tensors.tensors:
            raise InvalidArgument("a decode takes no Run.tensors: it starts from the session's encoded input")
        options = self.run_options_of(request)
        beam, temperature = options["beam"], options["temperature"]
        widest = min(MAX_BEAM, len(self.vocabulary))
        if beam != int(beam) or not 1 <= beam <= widest:
            raise InvalidArgument(f"beam must be a whole number in 1..{widest}, got {beam:g}")
        sampler = Sampler(temperature, 0, len(self.vocabulary))  # refuses a bad temperature
        if beam > 1 and temperature != 0:
            raise InvalidArgument("beam search is deterministic: give beam > 1 or temperature > 0, not both")
        limits.check_fits(bounds.run_output(self.token_bytes_bound()), "one decoded token", "")
        if beam > 1:
            return BeamDecode(self, request, int(beam))
        return SampleDecode(self, request, sampler)

    def token_output(self, token: int, logprob: float, attention: np.ndarray) -> pb.StepOutput:
        return pb.StepOutput(
            label=self.render(token),
            top=[pb.TokenProb(id=token, token=self.render(token), prob=math.exp(logprob))],
            tensors=[to_proto(self.attention, attention)],
        )


class DecodeLoop(Loop):
    """What both decodes share: the driver, the step limit, and the RunDone being filled in."""

    def __init__(self, driver: AttentionDecoderDriver, request: pb.Run, seed: int = 0) -> None:
        super().__init__(request.seq)
        self.driver = driver
        self.max_steps = request.max_steps
        self.answer = pb.RunDone(seq=request.seq, seed=seed, stop_reason="max_steps")

    def emit(self, index: int, token: int, logprob: float, attention: np.ndarray) -> pb.SessionResponse:
        output = self.driver.token_output(token, logprob, attention)
        return pb.SessionResponse(run_output=pb.RunOutput(seq=self.seq, index=index, output=output))

    def emit_span(self, hypothesis: Hypothesis, span: Iterable[int]) -> list[pb.SessionResponse]:
        return [self.emit(i, hypothesis.tokens[i], hypothesis.logprobs[i], hypothesis.extras[i]) for i in span]

    def done(self) -> pb.SessionResponse:
        return pb.SessionResponse(run_done=self.answer)


class SampleDecode(DecodeLoop):
    """Greedy (temperature 0) or sampled decoding on one borrowed row."""

    def __init__(self, driver: AttentionDecoderDriver, request: pb.Run, sampler: Sampler) -> None:
        seed = resolve_seed(request) if sampler.temperature > 0 else 0
        super().__init__(driver, request, seed)
        self.sampler = sampler

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        driver = self.driver
        rng = np.random.Generator(np.random.PCG64(self.answer.seed))
        row = context.borrow_row()
        token = driver.start_id
        for index in range(self.max_steps):
            outputs = await context.step(driver.feed(token), row)
            self.answer.steps = index + 1
            logits = outputs[driver.logits][0]
            token, _ = self.sampler.sample(logits, rng)
            if token == driver.end_id:
                self.answer.stop_reason = "end"
                return
            yield self.emit(index, token, float(log_softmax(logits)[token]), outputs[driver.attention][0])


class BeamDecode(DecodeLoop):
    """Beam search with one borrowed row per live hypothesis, stepped together."""

    def __init__(self, driver: AttentionDecoderDriver, request: pb.Run, width: int) -> None:
        super().__init__(driver, request)
        self.width = width

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        driver = self.driver
        search = BeamSearch(self.width, driver.end_id)
        rows: list[int] = [context.borrow_row()]
        spare: list[int] = []
        tokens = [driver.start_id]
        for index in range(self.max_steps):
            outputs = await context.step_rows(
                [(row, driver.feed(token)) for row, token in zip(rows, tokens, strict=True)]
            )
            self.answer.steps = index + 1
            logprobs = log_softmax(np.stack([o[driver.logits][0] for o in outputs]))
            parents = search.advance(logprobs, [o[driver.attention][0] for o in outputs])
            for response in self.emit_span(*search.newly_final()):
                yield response
            if search.done:
                break
            # Each surviving hypothesis continues its parent's row: copy into spare rows, then swap.
            while len(spare) < len(parents):
                spare.append(context.borrow_row())
            targets = spare[: len(parents)]
            for target, parent in zip(targets, parents, strict=True):
                context.copy_row(rows[parent], target)
            rows, spare = targets, rows + spare[len(parents) :]
            tokens = [h.tokens[-1] for h in search.live]
        for response in self.emit_span(*search.rest_of_answer()):
            yield response
        if search.finished:
            self.answer.stop_reason = "end"
