"""generate: the autoregressive loop runs on the server, inside the session.

Feeds the prompt as one chunk, then repeatedly samples a token from the last logits and feeds
it back, streaming each token as it is made. Every step goes through the model's scheduler, so
concurrent generations of many sessions batch together. The session's state advances by the
prompt and every generated token; a generation that does not finish (the stream broke) is
rolled back by the caller, so a Generate is applied entirely or not at all.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from service.api import statestream_pb2 as pb
from service.drivers.predict import StepInputs, run_step
from service.drivers.sampling import Sampler
from service.drivers.vocabulary import Vocabulary, vocabulary_of
from service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from service.sessions import Session


@dataclass(frozen=True)
class GeneratePlan:
    """A validated Generate: how to sample, and the prompt already encoded."""

    sampler: Sampler
    prompt_ids: np.ndarray


def generate_done_bytes_bound(vocab: Vocabulary, tokens: int) -> int:
    """An upper bound of the encoded SessionResponse(generated=GenerateDone) of ``tokens`` tokens.

    Per token: its id (a varint, at most 5 bytes), its probability (4) and its text; then the
    framing, the seq, the seed and the counts.
    """
    return 64 + tokens * (5 + 4 + vocab.longest_token_bytes)


def check_generate(
    session: Session, request: pb.Generate, *, max_tokens: int, max_chunk: int, max_message_bytes: int
) -> GeneratePlan:
    """Validates a Generate before anything runs; raises naming the problem (or the limit)."""
    manifest = session.runtime.model.manifest
    vocab = vocabulary_of(manifest)
    if vocab is None:
        raise InvalidArgument(f"model {manifest.name!r} ({manifest.task}) does not generate tokens")
    if request.max_tokens == 0:
        raise InvalidArgument("max_tokens is required (1 or more)")
    if request.max_tokens > max_tokens:
        raise ResourceExhausted("max_generate_tokens", max_tokens, f"asked for {request.max_tokens}")
    if len(request.prompt) > max_chunk:  # the prompt runs as one chunk
        raise ResourceExhausted("max_chunk", max_chunk, f"the prompt has {len(request.prompt)} characters")
    bound = generate_done_bytes_bound(vocab, request.max_tokens)
    if bound > max_message_bytes:  # its final GenerateDone could not be sent
        raise ResourceExhausted(
            "max_message_bytes",
            max_message_bytes,
            f"the answer to {request.max_tokens} tokens could reach {bound} bytes; ask for fewer tokens",
        )
    if not request.prompt and "last_logits" not in session.scratch:
        raise FailedPrecondition("the session has seen no step yet: give a prompt")
    prompt_ids = vocab.encode(request.prompt)  # refuses an unknown character before any state changes
    return GeneratePlan(Sampler(request.temperature, request.top_k, len(vocab)), prompt_ids)


def resolve_seed(request: pb.Generate) -> int:
    """The request's seed, or a fresh random one (reported back so the run can be repeated)."""
    return request.seed if request.HasField("seed") else secrets.randbits(63)


async def generate(session: Session, request: pb.Generate, plan: GeneratePlan, seed: int) -> AsyncIterator[pb.Token]:
    """Yields each token as it is sampled; the caller holds the session's lock."""
    manifest = session.runtime.model.manifest
    vocab = vocabulary_of(manifest)
    assert vocab is not None
    name = manifest.inputs[0].name
    dtype = manifest.inputs[0].np_dtype
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = plan.prompt_ids
    if len(ids):
        await run_step(session, StepInputs({name: ids.astype(dtype)}, len(ids), ids))
    token_buffer = np.zeros(1, dtype=dtype)
    for index in range(request.max_tokens):
        token, prob = plan.sampler.sample(session.scratch["last_logits"], rng)
        yield pb.Token(seq=request.seq, index=index, id=token, text=vocab.decode(token), prob=prob)
        token_buffer[0] = token
        await run_step(session, StepInputs({name: token_buffer.copy()}, 1, None))
