"""Upper bounds of every answer's encoded size, and the limits a request is checked against.

An answer that could exceed ``--max-message-bytes`` is refused before anything runs: applied
and then lost with the stream, it would break exactly-once. Every driver bounds its answers
with these functions, and only these, so the fuzzer (``loadtest/fuzz.py``) checks one module
against what the server really sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message

from service.contract import Manifest
from service.errors import MAX_MESSAGE_CHARS, ResourceExhausted
from service.settings import Settings

#: Framing of one StepOutput inside its StepResult (tag, length, the label's field).
STEP_OUTPUT_FRAMING = 12
#: A StepResult's own fields (seq, duplicate) and its SessionResponse framing.
STEP_RESULT_FRAMING = 32


@dataclass(frozen=True)
class Limits:
    """The server's limits that a request is checked against before anything runs."""

    max_chunk: int
    max_generate_tokens: int
    max_run_steps: int
    max_message_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_chunk, settings.max_generate_tokens, settings.max_run_steps, settings.max_message_bytes)

    def check_fits(self, bound: int, what: str, advice: str) -> None:
        """Refuses an answer whose bound exceeds max_message_bytes, saying what to send instead."""
        if bound > self.max_message_bytes:
            raise ResourceExhausted(
                "max_message_bytes", self.max_message_bytes, f"the answer to {what} could reach {bound} bytes; {advice}"
            )


def error_response(request: Message | None) -> int:
    """An Error answering ``request``: at most MAX_MESSAGE_CHARS characters of fixed text plus what
    it quotes of the request (a name, a character: repr() at most quadruples a byte); 4 UTF-8 bytes a
    character. ``None`` (bytes that did not decode) gets the cap."""
    quoted = 4 * 256 + 4 * request.ByteSize() if request is not None else 4 * MAX_MESSAGE_CHARS
    return 64 + min(4 * MAX_MESSAGE_CHARS, quoted)


def tensor(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> int:
    """A Tensor message of one step's output: name, dtype, shape varints, data."""
    return 24 + 2 * len(name) + 11 * len(shape) + math.prod(shape) * np.dtype(dtype).itemsize


def step_output(manifest: Manifest, return_tensors: Iterable[str], label_bytes: int = 0) -> int:
    """One StepOutput carrying the named raw outputs and a label of up to ``label_bytes``."""
    specs = {t.name: t for t in manifest.outputs}
    size = STEP_OUTPUT_FRAMING + (label_bytes + 6 if label_bytes else 0)
    for name in return_tensors:
        spec = specs[name]
        size += tensor(name, spec.shape, spec.np_dtype)
    return size


def ranked_tokens(longest_token_bytes: int, top_k: int) -> int:
    """A language model's per-step extras: the input token's text and top_k TokenProbs (id, token, prob)."""
    return longest_token_bytes + 6 + top_k * (longest_token_bytes + 24)


def step_result(per_step: int, steps: int) -> int:
    """A StepResult of ``steps`` StepOutputs of at most ``per_step`` bytes each."""
    return STEP_RESULT_FRAMING + steps * per_step


def generate_done(longest_token_bytes: int, tokens: int) -> int:
    """A SessionResponse(generated=GenerateDone) of ``tokens`` tokens: per token its id (a varint,
    at most 5 bytes), its probability (4) and its text; then the framing, seq, seed and counts."""
    return 64 + tokens * (5 + 4 + longest_token_bytes)


def run_output(per_step: int) -> int:
    """A SessionResponse(run_output=RunOutput) holding one StepOutput of at most ``per_step`` bytes."""
    return 32 + per_step
