"""The language-model driver: text in, the next tokens' probabilities out, sampling on the server.

A Step carries text (one character per time step) or token ids; each step's answer holds the
input character and the top_k most likely next tokens. The ranking of a whole batch is done at
once on the scheduler's worker thread (``ranked_logits``). Generate is this kind's server-side
loop: feed the prompt as one chunk, then sample a token from the last logits, feed it back, and
so on, streaming each token; concurrent generations of many sessions batch together.

This is the only serving code that knows a vocabulary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np

from service.answer_bytes import RankedTokens
from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.loops import Loop, LoopContext, resolve_seed
from service.drivers.sampling import Sampler
from service.drivers.session_view import SessionView
from service.drivers.steps import StepHeader, StepInputs, check_chunk
from service.drivers.vocabulary import Vocabulary
from service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from service.session_options import ResolvedOptions
from service.tasks import register
from service.tensors import add_proto

#: Outputs added by ``ranked_logits`` (the scheduler's postprocess): token ids by falling
#: probability (ties: lower id first) and their softmax probabilities (float32), ``[K, V]`` per step.
RANKED_IDS = "statestream.ranked_ids"
RANKED_PROBS = "statestream.ranked_probs"
#: Where a session keeps its last step's logits, so a Generate without prompt continues from there.
LAST_LOGITS = "last_logits"
DEFAULT_TOP_K = 5


def logits_output(manifest: Manifest) -> str:
    """The output holding a language model's next-token logits (``decoding.logits``, default "logits")."""
    return str(manifest.decoding.get("logits", "logits"))


def ranked_logits(logits_name: str) -> Callable[[Arrays], Arrays]:
    """The next tokens of a whole batch ranked at once (the scheduler runs it on its worker thread).

    One stable argsort and one float64 softmax over ``[B, K, V]`` instead of one per step on the
    event loop; ``build_output`` then only reads the first top_k of each row.
    """

    def rank(outputs: Arrays) -> Arrays:
        logits = outputs[logits_name]
        order = np.argsort(-logits, axis=-1, kind="stable")
        exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
        probs = np.take_along_axis(exp, order, axis=-1) / exp.sum(axis=-1, keepdims=True)
        # float32, as TokenProb.prob holds them: rounded once per batch here, not once per answer.
        return {RANKED_IDS: order, RANKED_PROBS: probs.astype(np.float32)}

    return rank


@register("language_model")
class LanguageDriver(Driver):
    sends = "text (one character per time step) or token ids"
    returns = "per step: the input character and the top_k most likely next tokens with probabilities"

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.vocabulary = Vocabulary(list(manifest.vocabulary))
        self.logits = logits_output(manifest)
        self.token_input = manifest.inputs[0]
        self.postprocess = ranked_logits(self.logits)
        self._ranked = RankedTokens(self.vocabulary.tokens)

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        inputs = manifest.inputs
        if len(inputs) != 1 or inputs[0].shape != () or not inputs[0].dtype.startswith("int"):
            raise ContractError("a language model takes exactly one input: a scalar integer token id per step")
        if not manifest.vocabulary:
            raise ContractError("a language model's manifest needs decoding.vocabulary")
        if logits_output(manifest) not in {t.name for t in manifest.outputs}:
            raise ContractError(f"a language model needs a {logits_output(manifest)!r} output (decoding.logits)")

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def task_info(self) -> pb.TaskInfo:
        info = super().task_info()
        info.generates = True
        return info

    def resolve_options(self, options: pb.SessionOptions) -> ResolvedOptions:
        resolved = super().resolve_options(options)
        top_k = options.top_k or DEFAULT_TOP_K
        if top_k > len(self.vocabulary):
            raise InvalidArgument(f"top_k {top_k} exceeds the vocabulary size {len(self.vocabulary)}")
        resolved.top_k = top_k
        return resolved

    # -- steps ---------------------------------------------------------------------------

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        kind = step.WhichOneof("input")
        if kind is None:
            raise InvalidArgument("step has no input: set one of text, tokens or tensors")
        vocab = self.vocabulary
        if kind == "tensors":
            inputs = self.step_decoder.decode(step.tensors, max_chunk)
            # Token ids sent as a tensor obey the vocabulary too: ONNX Runtime would fail the whole
            # batch on an id past the embedding, and silently read a negative id from the end.
            vocab.check_ids(inputs.arrays[self.token_input.name].reshape(-1).astype(np.int64))
            return inputs
        claimed = len(step.text) if kind == "text" else len(step.tokens.ids)
        check_chunk(claimed, max_chunk)  # refuse before decoding anything of an oversized chunk
        ids = vocab.encode(step.text) if kind == "text" else vocab.check_ids(np.asarray(step.tokens.ids, np.int64))
        return StepInputs({self.token_input.name: ids.astype(self.token_input.np_dtype, copy=False)}, len(ids), ids)

    def output_bytes_bound(self, options: ResolvedOptions) -> int:
        return super().output_bytes_bound(options) + bounds.ranked_tokens(
            self.vocabulary.longest_token_bytes, options.top_k
        )

    def build_result(
        self, options: ResolvedOptions, step: StepHeader, decoded: StepInputs, outputs: Arrays
    ) -> pb.StepResult:
        """The top-k comes from the batch's ranking (``ranked_logits``), so here it is only read."""
        tokens = self.vocabulary.tokens
        first = decoded.steps - 1 if step.last_only else 0
        top_k = options.top_k
        ids = outputs[RANKED_IDS][first:, :top_k].tolist()
        probs = outputs[RANKED_PROBS][first:, :top_k].tolist()
        result = pb.StepResult(seq=step.seq)
        for t in range(first, decoded.steps):
            out = result.outputs.add()
            if decoded.token_ids is not None:
                out.input = tokens[int(decoded.token_ids[t])]
            row = t - first
            add = out.top.add  # in place: no TokenProb built and then copied in (docs/benchmarks.md)
            for i, p in zip(ids[row], probs[row], strict=True):
                add(id=i, token=tokens[i], prob=p)
            for name in options.return_tensors:
                add_proto(out.tensors, name, outputs[name][t])
        return result

    def encode_output(self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int) -> bytes | None:
        """``build_result``'s StepOutput of time step ``t`` as bytes: the input, the top-k, the tensors."""
        tensors = self.output_tensors.encode(options.return_tensors, outputs, t) if options.return_tensors else b""
        if tensors is None:  # not what the manifest says: the message encodes whatever it is
            return None
        top_k, ranked, token_ids = options.top_k, self._ranked, decoded.token_ids
        given = ranked.input(int(token_ids[t])) if token_ids is not None else b""
        return (
            given
            + ranked.top(outputs[RANKED_IDS][t][:top_k].tolist(), outputs[RANKED_PROBS][t][:top_k].tolist())
            + tensors
        )

    def after_step(self, session: SessionView, outputs: Arrays) -> None:
        # Kept so a later Generate with no prompt can continue from where the stream is.
        session.scratch[LAST_LOGITS] = outputs[self.logits][-1].copy()

    # -- Generate ------------------------------------------------------------------------

    def plan_generate(self, session: SessionView, request: pb.Generate, limits: bounds.Limits) -> Loop:
        """Validates a Generate before anything runs; raises naming the problem (or the limit)."""
        if request.max_tokens == 0:
            raise InvalidArgument("max_tokens is required (1 or more)")
        if request.max_tokens > limits.max_generate_tokens:
            raise ResourceExhausted(
                "max_generate_tokens", limits.max_generate_tokens, f"asked for {request.max_tokens}"
            )
        if len(request.prompt) > limits.max_chunk:  # the prompt runs as one chunk
            raise ResourceExhausted("max_chunk", limits.max_chunk, f"the prompt has {len(request.prompt)} characters")
        limits.check_fits(  # its final GenerateDone could not be sent
            bounds.generate_done(self.vocabulary.longest_token_bytes, request.max_tokens),
            f"{request.max_tokens} tokens",
            "ask for fewer tokens",
        )
        if not request.prompt and LAST_LOGITS not in session.scratch:
            raise FailedPrecondition("the session has seen no step yet: give a prompt")
        prompt_ids = self.vocabulary.encode(request.prompt)  # refuses an unknown character before any state changes
        sampler = Sampler(request.temperature, request.top_k, len(self.vocabulary))
        return GenerateLoop(self, request, sampler, prompt_ids)


class GenerateLoop(Loop):
    """Feeds the prompt, then samples and feeds back one token at a time."""

    def __init__(self, driver: LanguageDriver, request: pb.Generate, sampler: Sampler, prompt_ids: np.ndarray) -> None:
        super().__init__(request.seq)
        self.driver = driver
        self.max_tokens = request.max_tokens
        self.sampler = sampler
        self.prompt_ids = prompt_ids
        self.seed = resolve_seed(request)
        self.answer = pb.GenerateDone(seq=request.seq, seed=self.seed)

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        session, vocab, spec = context.session, self.driver.vocabulary, self.driver.token_input
        rng = np.random.Generator(np.random.PCG64(self.seed))
        ids = self.prompt_ids
        if len(ids):
            await context.step(StepInputs({spec.name: ids.astype(spec.np_dtype)}, len(ids), ids))
        token_buffer = np.zeros(1, dtype=spec.np_dtype)
        for index in range(self.max_tokens):
            token, prob = self.sampler.sample(session.scratch[LAST_LOGITS], rng)
            self.answer.ids.append(token)
            self.answer.probs.append(prob)
            text = vocab.decode(token)
            self.answer.text += text
            yield pb.SessionResponse(token=pb.Token(seq=self.seq, index=index, id=token, text=text, prob=prob))
            token_buffer[0] = token
            await context.step(StepInputs({spec.name: token_buffer.copy()}, 1, None))

    def done(self) -> pb.SessionResponse:
        self.answer.tokens = len(self.answer.ids)
        return pb.SessionResponse(generated=self.answer)


__all__ = ["RANKED_IDS", "RANKED_PROBS", "LanguageDriver", "Vocabulary", "ranked_logits"]
