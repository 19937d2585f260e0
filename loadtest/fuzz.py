"""Fuzzing a live server: garbage and malformed messages over real gRPC, with a bystander watching.

``python -m loadtest.fuzz --cases 10000 [--models-dir models]`` starts its own server (a child
process on 127.0.0.1, stopped by its PID), throws hypothesis-generated cases at it and prints a
summary; tests/test_fuzz.py runs the same ``Fuzzer`` with a few hundred cases in CI.

A case is one request a client could send, aimed at one RPC (``stream``, ``first``,
``multiplex``, ``create``, ``close``, ``models``), sent as raw bytes so that nothing on the
client side cleans it up. What must hold, case by case: only documented status codes, never a
hang; a refused request changes nothing (an oracle of the answered requests, probed against an
offline ONNX Runtime run); every answer fits its driver's bound; a bystander session gets
exactly its solo outputs; afterwards the server is healthy with no session left open.
docs/security.md lists the cases and the checks in full.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import secrets
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from loadtest.flags import model_folder
from loadtest.servers import ServerProcess, serve_command, stopping_children_on_sigterm
from service import command
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.command import Parser, int_in, nonempty_path, positive_int
from service.contract import Manifest
from service.drivers import bounds
from service.drivers.language import LanguageDriver
from service.settings import INT32_MAX
from service.tasks import driver_class

T = TypeVar("T")

ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "RESOURCE_EXHAUSTED"})
TOLERANCE = 1e-5  # float32 LSTM kernels move results by ~1e-7 with batch composition; 1e-5 is the contract
CASE_TIMEOUT_S = 30.0
BYSTANDER_TEXT = "O Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name;"
SERVICE = "/statestream.v1."
OIP_SERVICE = "/inference.GRPCInferenceService/"
U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# Placeholders in templates, replaced at send time by the fuzzer's live ids and blobs.
MAIN, MUX, FORK, CLOSED, BLOB, BLOB_TAMPERED = "@main", "@mux", "@fork", "@closed", b"@blob", b"@blob~"


# -- the reference ------------------------------------------------------------------------------


class Reference:
    """The model run directly with ONNX Runtime, one token per call, state carried from zeros.

    ``last_logits(text)`` continues from the longest cached prefix, so a growing history costs
    one call per new token.
    """

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.manifest = Manifest.load(folder)
        self.session = ort.InferenceSession(str(folder / self.manifest.step_graph), providers=["CPUExecutionProvider"])
        self.vocabulary = list(self.manifest.vocabulary or [])
        if not self.vocabulary or len(self.manifest.inputs) != 1:
            raise ValueError(f"{folder}: the fuzzer's reference needs a token model (one input and a vocabulary)")
        self.ids = {token: i for i, token in enumerate(self.vocabulary)}
        self.input = self.manifest.inputs[0]
        self.logits_name = str(self.manifest.decoding.get("logits", "logits"))
        self._names = [self.logits_name, *(s.output for s in self.manifest.state)]
        #: The server's own driver for this model: the fuzzer checks answers against its bounds.
        driver = driver_class(self.manifest.task)(self.manifest)
        if not isinstance(driver, LanguageDriver):
            raise ValueError(f"{folder}: the fuzzer's reference needs a language model, not {self.manifest.task!r}")
        self.driver = driver
        self._cache: collections.OrderedDict[tuple[int, ...], tuple[dict[str, np.ndarray], np.ndarray]] = (
            collections.OrderedDict()
        )

    def _initial(self) -> dict[str, np.ndarray]:
        return {s.input: np.zeros((1, *s.shape), s.np_dtype) for s in self.manifest.state}

    def _advance(self, state: dict[str, np.ndarray], token: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        feed = {self.input.name: np.array([[token]], self.input.np_dtype), **state}
        logits, *new_state = self.session.run(self._names, feed)
        return dict(zip((s.input for s in self.manifest.state), new_state, strict=True)), logits[0, -1]

    def last_logits_of_ids(self, ids: Sequence[int]) -> np.ndarray:
        key = tuple(ids)
        start, state, logits = 0, self._initial(), np.zeros(0, np.float32)
        for length in range(len(key), 0, -1):
            hit = self._cache.get(key[:length])
            if hit is not None:
                start, (state, logits) = length, hit
                break
        for token in key[start:]:
            state, logits = self._advance(state, token)
        self._cache[key] = (state, logits)
        while len(self._cache) > 64:
            self._cache.popitem(last=False)
        return logits

    def logits(self, text: str) -> np.ndarray:
        """``[len(text), V]``: the logits after each character (as tests/conftest.OfflineLM)."""
        return np.stack([self.last_logits_of_ids([self.ids[c] for c in text[: i + 1]]) for i in range(len(text))])


# -- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The server's limits, so the strategies aim at both sides of each edge."""

    max_chunk: int = 256
    max_message_bytes: int = 64 * 1024
    max_generate_tokens: int = 64


@dataclass(frozen=True)
class Case:
    """One request: a template (a message with placeholders, or raw bytes) and how to damage it.

    ``seqs`` gives, per step-like part of the template, the seq to put there: ``("rel", k)`` is the
    session's next expected seq + k (0 = the right one), ``("abs", v)`` a literal.
    """

    target: str
    template: Message | bytes
    seqs: tuple[tuple[str, int], ...] = ()
    mutations: tuple[tuple[str, float, bytes], ...] = ()
    bulk: int = 0  # multiplex: repeat the template's first entry this many more times
    method: str = ""  # models: ListModels or GetModel

    def describe(self) -> str:
        body = self.template if isinstance(self.template, bytes) else self.template.SerializeToString()
        shown = body[:96].hex() + ("…" if len(body) > 96 else "")
        return f"{self.target}{'/' + self.method if self.method else ''} {type(self.template).__name__} {shown} seqs={self.seqs} mutations={self.mutations} bulk={self.bulk}"


def _seq() -> st.SearchStrategy[tuple[str, int]]:
    return st.one_of(
        st.tuples(st.just("rel"), st.sampled_from([0, 0, 0, 0, -1, 1, 2, -3])),
        st.tuples(st.just("abs"), st.one_of(st.sampled_from([0, 1, U64, 2**63, 2**32]), st.integers(0, U64))),
    )


class Strategies:
    """Hypothesis strategies for every case, shaped by the model's vocabulary and the server limits."""

    def __init__(self, vocabulary: Sequence[str], input_name: str, model: str, limits: Limits) -> None:
        self.vocabulary = list(vocabulary)
        self.size = len(self.vocabulary)
        self.input_name = input_name
        self.model = model
        self.limits = limits
        self._cases: dict[str, st.SearchStrategy[Case]] = {}

    # pieces
    def vocab_text(self, max_size: int = 16) -> st.SearchStrategy[str]:
        return st.text(alphabet=st.sampled_from(self.vocabulary), min_size=0, max_size=max_size)

    def any_text(self) -> st.SearchStrategy[str]:
        chunk = self.limits.max_chunk
        return st.one_of(
            self.vocab_text(),
            self.vocab_text(4),
            st.text(max_size=24),
            st.tuples(self.vocab_text(8), st.text(min_size=1, max_size=3), self.vocab_text(8)).map("".join),
            st.sampled_from([chunk, chunk + 1, chunk - 1]).map(lambda n: self.vocabulary[1 % self.size] * n),
            st.integers(1, 40).map(lambda n: "\U0001f600" * n),
        )

    def token_ids(self) -> st.SearchStrategy[list[int]]:
        edge = st.sampled_from([-1, self.size, self.size + 1, 2**31, -(2**31), I64_MAX, I64_MIN])
        return st.one_of(
            st.lists(st.integers(0, self.size - 1), max_size=8),
            st.lists(st.one_of(st.integers(0, self.size - 1), edge, st.integers(I64_MIN, I64_MAX)), max_size=6),
            st.sampled_from([self.limits.max_chunk + 1, self.limits.max_chunk]).map(lambda n: [0] * n),
        )

    @st.composite
    def tensor(draw: Any, self: Strategies) -> pb.Tensor:
        name = draw(st.one_of(st.just(self.input_name), st.just(self.input_name), st.text(max_size=12)))
        dtype = draw(st.one_of(st.sampled_from([0, 1, 2, 2, 2, 3]), st.integers(-(2**31), 2**31 - 1)))
        dim = st.one_of(
            st.integers(0, 6),
            st.sampled_from([-1, 2**31, 2**32, 2**62, I64_MAX, I64_MIN, self.limits.max_chunk + 1]),
            st.integers(I64_MIN, I64_MAX),
        )
        shape = draw(
            st.one_of(
                st.lists(st.integers(1, 6), min_size=1, max_size=1),
                st.lists(dim, max_size=4),
                st.lists(st.integers(1, 2), min_size=30, max_size=80),
            )
        )
        itemsize = {1: 4, 2: 8, 3: 4}.get(dtype, 4)
        count = math.prod(shape) if shape and all(0 <= d <= 64 for d in shape) else -1
        if 0 <= count <= 256 and draw(st.booleans()):
            if dtype == 1:  # float32, with NaN and Inf among the values
                values = draw(st.lists(st.floats(width=32), min_size=count, max_size=count))
                data = np.array(values, "<f4").tobytes()
            else:
                values = draw(
                    st.lists(
                        st.one_of(st.integers(0, self.size - 1), st.integers(-5, 2**31 - 1)),
                        min_size=count,
                        max_size=count,
                    )
                )
                data = np.array(values, "<i8" if dtype == 2 else "<i4").astype("<i8" if dtype == 2 else "<i4").tobytes()
        else:
            data = draw(
                st.one_of(st.binary(max_size=48), st.integers(0, 4).map(lambda n: b"\x00" * (n * itemsize + 1)))
            )
        return pb.Tensor(name=name, dtype=dtype, shape=shape, data=data)

    def step(self) -> st.SearchStrategy[pb.Step]:
        def make(kind: str, value: Any, last_only: bool) -> pb.Step:
            step = pb.Step(last_only=last_only)
            if kind == "text":
                step.text = value
            elif kind == "tokens":
                step.tokens.ids.extend(value)
            elif kind == "tensors":
                step.tensors.tensors.extend(value)
            return step

        return st.one_of(
            st.builds(make, st.just("text"), self.vocab_text(), st.booleans()),
            st.builds(make, st.just("text"), self.any_text(), st.booleans()),
            st.builds(make, st.just("tokens"), self.token_ids(), st.booleans()),
            st.builds(make, st.just("tensors"), st.lists(self.tensor(), max_size=3), st.booleans()),
            st.builds(make, st.just("none"), st.none(), st.booleans()),
        )

    def generate(self) -> st.SearchStrategy[pb.Generate]:
        limit = self.limits.max_generate_tokens

        def make(prompt: str, max_tokens: int, temperature: float, top_k: int, seed_: int | None) -> pb.Generate:
            request = pb.Generate(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k)
            if seed_ is not None:
                request.seed = seed_
            return request

        return st.builds(
            make,
            st.one_of(self.vocab_text(6), self.any_text()),
            st.one_of(st.integers(0, 6), st.sampled_from([limit, limit + 1, 2**32 - 1]), st.integers(0, 2**32 - 1)),
            st.one_of(st.sampled_from([0.0, 0.7, 1.0]), st.floats(width=32)),
            st.one_of(st.integers(0, self.size + 1), st.integers(0, 2**32 - 1)),
            st.one_of(st.none(), st.integers(0, U64)),
        )

    def model_name(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.just(self.model),
            st.just(self.model),
            st.sampled_from(["", "../x", "..", "/etc/passwd", f"{self.model}/../../x", self.model.upper(), "x" * 300]),
            st.text(max_size=12),
        )

    def open_session(self) -> st.SearchStrategy[pb.OpenSession]:
        def make(model: str, version: str, top_k: int, tensors: list[str], restore: bytes) -> pb.OpenSession:
            options = pb.SessionOptions(top_k=top_k, return_tensors=tensors)
            return pb.OpenSession(model=model, version=version, options=options, restore=restore)

        return st.builds(
            make,
            self.model_name(),
            st.one_of(st.just(""), st.just(""), st.just("1"), st.text(max_size=6)),
            st.one_of(st.integers(0, self.size + 1), st.integers(0, 2**32 - 1)),
            st.lists(st.one_of(st.just("logits"), st.text(max_size=8)), max_size=3),
            st.one_of(st.just(b""), st.just(b""), st.just(BLOB), st.just(BLOB_TAMPERED), st.binary(max_size=64)),
        )

    def session_id(self, *, main: bool) -> st.SearchStrategy[str]:
        """A fork's id, a closed one, one never issued, random text; the fuzz session's own when ``main``.

        The multiplex session is named only by Multiplex entries, so no case closes or takes it.
        """
        known = [FORK, CLOSED] + ([MAIN] if main else [])
        return st.one_of(
            st.sampled_from(known),
            st.text(max_size=40),
            st.just(secrets.token_urlsafe(24)),  # a well-formed id that was never issued
        )

    def session_request(self, *, first: bool) -> st.SearchStrategy[tuple[pb.SessionRequest, int]]:
        """(request, how many seqs it takes)."""
        r = pb.SessionRequest
        choices = [
            st.builds(lambda s: (r(step=s), 1), self.step()),
            st.builds(lambda s: (r(step=s), 1), self.step()),
            st.builds(lambda s: (r(step=s), 1), self.step()),
            st.builds(lambda g: (r(generate=g), 1), self.generate()),
            st.builds(lambda o: (r(open=o), 0), self.open_session()),
            st.builds(lambda i: (r(attach=pb.AttachSession(session_id=i)), 0), self.session_id(main=not first)),
            st.just((r(fork=pb.Fork()), 0)),
            st.just((r(reset=pb.Reset()), 1)),
            st.just((r(snapshot=pb.SnapshotRequest()), 0)),
            st.just((r(), 0)),
        ]
        if first:  # a fresh stream opens (often validly) or attaches
            choices += [choices[4], choices[4], choices[5]]
        else:
            choices.append(st.just((r(close=pb.Close()), 0)))
            # Around the message size limit: over it, gRPC itself ends the stream (RESOURCE_EXHAUSTED).
            limit = self.limits.max_message_bytes
            choices.append(st.integers(limit - 16, limit + 64).map(lambda n: (r(step=pb.Step(text="a" * n)), 1)))
        return st.one_of(choices)

    def mutations(self) -> st.SearchStrategy[tuple[tuple[str, float, bytes], ...]]:
        op = st.tuples(
            st.sampled_from(["truncate", "flip", "insert", "delete", "append", "unknown_field", "varint_max"]),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=8),
        )
        return st.lists(op, min_size=1, max_size=3).map(tuple)

    def damaged(
        self, template: st.SearchStrategy[tuple[Message, int]]
    ) -> st.SearchStrategy[tuple[Message | bytes, int, tuple[tuple[str, float, bytes], ...]]]:
        """A template as is (60%), mutated (30%), or replaced by random bytes (10%)."""
        return st.one_of(
            template.map(lambda t: (t[0], t[1], ())),
            template.map(lambda t: (t[0], t[1], ())),
            st.tuples(template, self.mutations()).map(lambda t: (t[0][0], t[0][1], t[1])),
            st.binary(max_size=80).map(lambda b: (b, 0, ())),
        )

    def stream_case(self, target: str) -> st.SearchStrategy[Case]:
        return st.builds(
            lambda d, seqs: Case(target, d[0], tuple(seqs[: d[1]]), d[2]),
            self.damaged(self.session_request(first=target == "first")),
            st.lists(_seq(), min_size=1, max_size=1),
        )

    def multiplex_case(self) -> st.SearchStrategy[Case]:
        entry = st.builds(lambda i, s: pb.SessionStep(session_id=i, step=s), self.session_id(main=False), self.step())
        mux_entry = st.builds(lambda s: pb.SessionStep(session_id=MUX, step=s), self.step())
        entries = st.lists(st.one_of(mux_entry, mux_entry, entry), max_size=5)
        template = entries.map(lambda e: (pb.MultiplexRequest(steps=e), len(e)))
        return st.builds(
            lambda d, seqs, bulk: Case("multiplex", d[0], tuple(seqs[: d[1]]), d[2], bulk if d[1] else 0),
            self.damaged(template),
            st.lists(_seq(), min_size=5, max_size=5),
            st.one_of(
                st.just(0), st.just(0), st.just(0), st.just(0), st.integers(1, 40), st.sampled_from([3000, 20000])
            ),
        )

    def unary_case(self) -> st.SearchStrategy[Case]:
        create = self.damaged(self.open_session().map(lambda o: (o, 0))).map(lambda d: Case("create", d[0], (), d[2]))
        close = self.damaged(
            st.one_of(self.session_id(main=False), st.just(FORK), st.just(FORK)).map(
                lambda i: (pb.CloseSessionRequest(session_id=i), 0)
            )
        ).map(lambda d: Case("close", d[0], (), d[2]))
        listing = st.one_of(st.binary(max_size=24), st.just(b"")).map(lambda b: Case("models", b, method="ListModels"))
        describe = self.damaged(
            st.builds(lambda n, v: (pb.GetModelRequest(name=n, version=v), 0), self.model_name(), st.text(max_size=4))
        ).map(lambda d: Case("models", d[0], (), d[2], method="GetModel"))
        return st.one_of(create, create, close, listing, describe)

    def oip_request(self) -> st.SearchStrategy[oip.ModelInferRequest]:
        """A ModelInferRequest with random fields: names, datatypes, shapes (huge ones too), contents
        raw or typed of any size, sequence parameters of any type; its sequence ids are
        ``OIP_SEQUENCES`` only, so the fuzzer can end every sequence a case started."""
        dims = st.lists(st.sampled_from([1, 1, 1, 0, -1, 2, 65, 2**31, 2**62]), max_size=4)
        datatype = st.sampled_from(["INT64", "INT64", "FP32", "INT32", "BYTES", "FP16", "", "int64"])
        name = st.one_of(st.just(self.input_name), st.just(self.input_name), st.text(max_size=8))
        raw = st.one_of(st.binary(max_size=24), st.integers(0, self.size + 2).map(lambda i: i.to_bytes(8, "little")))
        huge = st.sampled_from([self.limits.max_message_bytes - 64, self.limits.max_message_bytes + 64])
        parameter = st.one_of(
            st.builds(oip.InferParameter, bool_param=st.booleans()),
            st.builds(oip.InferParameter, int64_param=st.sampled_from([*range(1, len(OIP_SEQUENCES)), 0, -1])),
            st.builds(oip.InferParameter, string_param=st.sampled_from(["", "s"])),
            st.builds(oip.InferParameter, double_param=st.floats(allow_nan=True)),
        )
        keys = st.sampled_from(["sequence_id", "sequence_start", "sequence_end", "priority"])

        def make(
            model: str, inputs: list[tuple[str, str, list[int], int]], blobs: list[bytes], big: int | None,
            parameters: dict[str, oip.InferParameter], typed: bool, request_id: str, outputs: list[str],
        ) -> oip.ModelInferRequest:  # fmt: skip
            request = oip.ModelInferRequest(model_name=model, id=request_id)
            for (tensor_name, tensor_type, shape, value), blob in zip(
                inputs, blobs or [b""] * len(inputs), strict=False
            ):
                tensor = request.inputs.add(name=tensor_name, datatype=tensor_type, shape=shape)
                if typed:
                    tensor.contents.int64_contents.append(value)
                else:
                    request.raw_input_contents.append(b"\0" * big if big is not None else blob)
            for key, parameter_value in parameters.items():
                request.parameters[key].CopyFrom(parameter_value)
            for output in outputs:
                request.outputs.add(name=output)
            return request

        return st.builds(
            make,
            self.model_name(),
            st.lists(st.tuples(name, datatype, dims, st.integers(I64_MIN, I64_MAX)), max_size=2),
            st.lists(raw, max_size=3),
            st.one_of(st.none(), st.none(), st.none(), huge),
            st.dictionaries(keys, parameter, max_size=3),
            st.booleans(),
            st.sampled_from(["", "", "r1", "r2"]),
            st.lists(st.sampled_from(["logits", "probabilities", "nope"]), max_size=2),
        )

    def oip_case(self) -> st.SearchStrategy[Case]:
        """A request to ModelInfer or (one message) to ModelStreamInfer: as drawn, or random bytes."""
        template = st.one_of(self.oip_request(), self.oip_request(), self.oip_request(), st.binary(max_size=80))
        method = st.sampled_from(["ModelInfer", "ModelStreamInfer"])
        return st.builds(lambda t, m: Case("oip", t, method=m), template, method)

    def case(self, target: str) -> st.SearchStrategy[Case]:
        """The strategy of one target, built once (building hypothesis strategies is not free)."""
        if target not in self._cases:
            if target == "oip":
                self._cases[target] = self.oip_case()
            elif target == "multiplex":
                self._cases[target] = self.multiplex_case()
            elif target == "unary":
                self._cases[target] = self.unary_case()
            else:
                self._cases[target] = self.stream_case(target)
        return self._cases[target]


#: The mix of targets: percent of cases each.
TARGET_MIX = (("stream", 45), ("multiplex", 20), ("unary", 20), ("first", 10), ("oip", 5))
#: The sequence ids an ``oip`` case may name (int64 1..3): the fuzzer ends each at the end.
OIP_SEQUENCES = range(1, 4)


def target_strategy(mix: Sequence[tuple[str, int]] = TARGET_MIX) -> st.SearchStrategy[str]:
    """A target drawn by the mix (a percentile, not sampled_from, which leans to its first elements)."""
    bounds, total = [], 0
    for name, percent in mix:
        total += percent
        bounds.append((total, name))
    return st.integers(0, total - 1).map(lambda n: next(name for bound, name in bounds if n < bound))


def mutate(data: bytes, mutations: Sequence[tuple[str, float, bytes]]) -> bytes:
    """Applies byte-level damage: each op at a relative position, with its bytes."""
    out = bytearray(data)
    for op, where, extra in mutations:
        at = min(int(where * len(out)), len(out))
        if op == "truncate":
            del out[at:]
        elif op == "flip" and out:
            out[min(at, len(out) - 1)] ^= 1 << (extra[0] % 8)
        elif op == "insert":
            out[at:at] = extra
        elif op == "delete":
            del out[at : at + 1 + extra[0] % 8]
        elif op == "append":
            out += extra
        elif op == "unknown_field":  # a well-formed field this proto does not define (number 100..2^29)
            number = 100 + int.from_bytes(extra[:3].ljust(3, b"\0"), "little") % (2**29 - 100)
            out += _varint(number << 3) + _varint(int.from_bytes(extra[:2].ljust(2, b"\0"), "little"))
        elif op == "varint_max":
            out[at:at] = b"\xff" * 9 + b"\x01"
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- the fuzzer ---------------------------------------------------------------------------------


@dataclass
class Tracked:
    """A fuzz session as the oracle sees it: what was applied, per the server's answers."""

    id: str
    ids: list[int] = field(default_factory=list)  # every token applied since the state was zeros
    last_seq: int = 0
    broken: bool = False  # the oracle lost track (after a violation): stop probing, start over

    def next_seq(self) -> int:
        return self.last_seq + 1


@dataclass
class Summary:
    cases: int = 0
    by_target: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    probes: int = 0
    probe_max_diff: float = 0.0
    bystander_steps: int = 0
    bystander_max_diff: float = 0.0
    bystander_errors: int = 0
    resumes: int = 0
    healthy_after: bool = False
    sessions_left: int = -1
    crashes: int = 0
    seconds: float = 0.0

    def violate(self, message: str) -> None:
        self.violation_count += 1
        if len(self.violations) < 25:
            self.violations.append(message)

    @property
    def ok(self) -> bool:
        return (
            self.violation_count == 0
            and self.crashes == 0
            and self.healthy_after
            and self.sessions_left == 0
            and self.bystander_errors == 0
            and self.bystander_max_diff <= TOLERANCE
            and self.probe_max_diff <= TOLERANCE
        )

    def report(self) -> str:
        width = max((len(c) for c in self.codes), default=4)
        lines = [
            f"cases                 {self.cases}  ({', '.join(f'{t} {n}' for t, n in sorted(self.by_target.items()))})",
            f"crashes               {self.crashes}",
            f"violations            {self.violation_count}",
            f"server healthy after  {'yes' if self.healthy_after else 'NO'} (health SERVING and ListModels answer)",
            f"sessions left open    {self.sessions_left}",
            f"bystander             {self.bystander_steps} steps, max |diff| vs solo {self.bystander_max_diff:.2e}, errors {self.bystander_errors}",
            f"state probes          {self.probes}, max |diff| vs offline ONNX Runtime {self.probe_max_diff:.2e}",
            f"resumed streams       {self.resumes} (a stream ended by status; last applied seq checked on attach)",
            f"time                  {self.seconds:.1f} s ({self.cases / max(self.seconds, 1e-9):.0f} cases/s)",
            "status codes (every answer: in-stream errors, call statuses, multiplex entries; OK = served):",
        ]
        total = sum(self.codes.values())
        for code, count in self.codes.most_common():
            lines.append(f"  {code:<{width}}  {count:>8}  {100 * count / max(total, 1):5.1f}%")
        for violation in self.violations:
            lines.append(f"VIOLATION {violation}")
        lines.append("RESULT " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Ended:
    """A stream that is over, with its status."""

    code: grpc.StatusCode
    details: str


async def next_response(call: Any) -> Any:
    """The stream's next response, or ``Ended`` with its status; TimeoutError if none comes in time."""
    try:
        response = await asyncio.wait_for(call.read(), CASE_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return Ended(exc.code(), exc.details() or "")
    if response is grpc.aio.EOF:
        return Ended(await call.code(), await call.details() or "")
    return response


def _status_text(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "NONE"


class Fuzzer:
    """Runs cases against one server from a private event-loop thread (so hypothesis can drive it)."""

    def __init__(
        self,
        target: str,
        reference: Reference,
        *,
        model: str,
        bystander_solo: np.ndarray,
        bystander_text: str = BYSTANDER_TEXT,
        probe_every: int = 20,
        rotate_every: int = 80,
    ) -> None:
        self.target = target
        self.reference = reference
        self.model = model
        self.bystander_text = bystander_text
        self.bystander_solo = bystander_solo
        self.probe_every = probe_every
        self.rotate_every = rotate_every
        self.summary = Summary()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzer", daemon=True)
        self.thread.start()
        self._call(self._setup())

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    # set-up and tear-down

    async def _setup(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.bystander_channel = grpc.aio.insecure_channel(self.target)
        self.session_raw = self.channel.stream_stream(
            SERVICE + "SessionService/Session", _identity, pb.SessionResponse.FromString
        )
        self.multiplex_raw = self.channel.stream_stream(
            SERVICE + "SessionService/Multiplex", _identity, pb.MultiplexResponse.FromString
        )
        self.unary_raw = {
            "create": self.channel.unary_unary(
                SERVICE + "SessionService/CreateSession", _identity, pb.SessionOpened.FromString
            ),
            "close": self.channel.unary_unary(
                SERVICE + "SessionService/CloseSession", _identity, pb.CloseSessionResponse.FromString
            ),
            "ListModels": self.channel.unary_unary(
                SERVICE + "ModelService/ListModels", _identity, pb.ListModelsResponse.FromString
            ),
            "GetModel": self.channel.unary_unary(SERVICE + "ModelService/GetModel", _identity, pb.ModelInfo.FromString),
        }
        self.oip_infer = self.channel.unary_unary(OIP_SERVICE + "ModelInfer", _identity, _identity)
        self.oip_stream = self.channel.stream_stream(OIP_SERVICE + "ModelStreamInfer", _identity, _identity)
        self.main: Tracked | None = None
        self.main_call: Any = None
        self.main_cases = 0
        self.mux: Tracked | None = None
        self.mux_call: Any = None
        self.forks: collections.deque[str] = collections.deque()
        self.closed_ids: collections.deque[str] = collections.deque(maxlen=16)
        self.blobs: collections.deque[bytes] = collections.deque(maxlen=8)
        self.stop_bystander = asyncio.Event()
        self.bystander_task = asyncio.get_running_loop().create_task(self._bystander())

    def close(self) -> Summary:
        """Stops the bystander, checks the server and the fuzz sessions one last time, closes all."""
        self._call(self._finish(), timeout=300)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        return self.summary

    async def _finish(self) -> None:
        self.stop_bystander.set()
        await self.bystander_task
        if self.main is not None:
            await self._probe_main()
            await self._close_main()
        if self.mux is not None:
            await self._probe_mux()
            await self._unary("close", pb.CloseSessionRequest(session_id=self.mux.id).SerializeToString())
        if self.mux_call is not None:
            await self.mux_call.done_writing()
        while self.forks:
            await self._unary("close", pb.CloseSessionRequest(session_id=self.forks.popleft()).SerializeToString())
        await self._end_oip_sequences()
        self.summary.healthy_after = await self._healthy()
        self.summary.sessions_left = await self._sessions_open()
        await self.channel.close()
        await self.bystander_channel.close()

    async def _healthy(self) -> bool:
        try:
            health = health_pb2_grpc.HealthStub(self.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            models = await self.unary_raw["ListModels"](b"", timeout=10)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING and models.models)

    async def _sessions_open(self) -> int:
        models = await self.unary_raw["ListModels"](b"", timeout=10)
        return int(sum(m.active_sessions for m in models.models))

    # the bystander

    async def _bystander(self) -> None:
        """Steps a fixed text one character per message, over and over, comparing with its solo run."""
        call = self.bystander_channel.stream_stream(
            SERVICE + "SessionService/Session", _identity, pb.SessionResponse.FromString
        )
        options = pb.SessionOptions(return_tensors=[self.reference.logits_name])
        while not self.stop_bystander.is_set():
            stream = call()
            await stream.write(
                pb.SessionRequest(open=pb.OpenSession(model=self.model, options=options)).SerializeToString()
            )
            opened = await next_response(stream)
            if isinstance(opened, Ended) or not opened.HasField("opened"):
                self.summary.bystander_errors += 1
                self.summary.violate(f"bystander could not open a session: {opened}")
                return
            for index, char in enumerate(self.bystander_text):
                await stream.write(pb.SessionRequest(step=pb.Step(seq=index + 1, text=char)).SerializeToString())
                response = await next_response(stream)
                if isinstance(response, Ended) or not response.HasField("result"):
                    self.summary.bystander_errors += 1
                    self.summary.violate(f"bystander step {index + 1} got {response}")
                    return
                got = np.frombuffer(response.result.outputs[0].tensors[0].data, "<f4")
                diff = float(np.max(np.abs(got - self.bystander_solo[index])))
                self.summary.bystander_max_diff = max(self.summary.bystander_max_diff, diff)
                self.summary.bystander_steps += 1
                if self.stop_bystander.is_set():
                    break
            await stream.write(pb.SessionRequest(close=pb.Close()).SerializeToString())
            await stream.read()
            await stream.done_writing()

    # running one case

    def run(self, case: Case) -> None:
        self._call(self._run(case), timeout=CASE_TIMEOUT_S * 4)

    async def _run(self, case: Case) -> None:
        self.summary.cases += 1
        self.summary.by_target[case.target] += 1
        try:
            if case.target == "stream":
                await self._stream_case(case)
            elif case.target == "first":
                await self._first_case(case)
            elif case.target == "multiplex":
                await self._multiplex_case(case)
            elif case.target == "oip":
                await self._oip_case(case)
            else:
                await self._unary_case(case)
        except TimeoutError:
            self.summary.violate(f"no answer within {CASE_TIMEOUT_S}s: {case.describe()}")
            self.main, self.main_call = None, None  # start over with fresh streams
            self.mux_call = None

    def _render(self, case: Case, session: Tracked | None) -> bytes:
        """The case's bytes: placeholders filled in, seqs resolved, then the damage applied."""
        if isinstance(case.template, bytes):
            return mutate(case.template, case.mutations)
        message = type(case.template)()
        message.CopyFrom(case.template)
        ids = {MAIN: self.main.id if self.main else "", MUX: self.mux.id if self.mux else ""}
        ids[FORK] = self.forks[0] if self.forks else secrets.token_urlsafe(24)
        ids[CLOSED] = self.closed_ids[-1] if self.closed_ids else secrets.token_urlsafe(24)

        def seq_value(index: int, base: Tracked | None) -> int | None:
            if index >= len(case.seqs):
                return None
            kind, value = case.seqs[index]
            if kind == "abs":
                return value
            return min(max((base.next_seq() if base else 1) + value, 0), U64)

        if isinstance(message, pb.SessionRequest):
            kind = message.WhichOneof("request")
            if kind in ("step", "generate", "reset"):
                part = getattr(message, kind)
                value = seq_value(0, session)
                if value is not None:
                    part.seq = value
            elif kind == "attach":
                message.attach.session_id = ids.get(message.attach.session_id, message.attach.session_id)
            elif kind == "open":
                self._fill_blob(message.open)
        elif isinstance(message, pb.MultiplexRequest):
            if case.bulk and message.steps:
                message.steps.extend([message.steps[0]] * case.bulk)
            for index, entry in enumerate(message.steps):
                entry.session_id = ids.get(entry.session_id, entry.session_id)
                value = seq_value(index if index < len(case.seqs) else 0, self.mux)
                if value is not None:
                    entry.step.seq = value
        elif isinstance(message, pb.OpenSession):
            self._fill_blob(message)
        elif isinstance(message, pb.CloseSessionRequest):
            message.session_id = ids.get(message.session_id, message.session_id)
        return mutate(message.SerializeToString(), case.mutations)

    def _fill_blob(self, message: pb.OpenSession) -> None:
        if message.restore in (BLOB, BLOB_TAMPERED):
            blob = self.blobs[-1] if self.blobs else b""
            if message.restore == BLOB_TAMPERED and blob:
                blob = blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]
            message.restore = blob

    def _count(self, code: str, case: Case, detail: str = "") -> None:
        self.summary.codes[code] += 1
        if code not in ALLOWED:
            self.summary.violate(f"{code} {detail[:200]!r} for {case.describe()}")

    async def _read(self, call: Any) -> tuple[list[Any], grpc.StatusCode | None, str]:
        """Responses up to the first that is not a Token; the status too if the stream ended."""
        responses: list[Any] = []
        while True:
            response = await next_response(call)
            if isinstance(response, Ended):
                return responses, response.code, response.details
            responses.append(response)
            if not (isinstance(response, pb.SessionResponse) and response.HasField("token")):
                return responses, None, ""

    # Session streams

    async def _open_main(self) -> None:
        self.main_call = self.session_raw()
        options = pb.SessionOptions(return_tensors=[self.reference.logits_name])
        self.main_options = self.reference.driver.resolve_options(options)
        await self.main_call.write(
            pb.SessionRequest(open=pb.OpenSession(model=self.model, options=options)).SerializeToString()
        )
        opened = await next_response(self.main_call)
        if isinstance(opened, Ended) or not opened.HasField("opened"):
            raise RuntimeError(f"the fuzz session could not open: {opened}")
        self.main = Tracked(opened.opened.session_id)
        self.main_cases = 0

    async def _close_main(self) -> None:
        assert self.main is not None and self.main_call is not None
        await self.main_call.write(pb.SessionRequest(close=pb.Close()).SerializeToString())
        responses, status, details = await self._read(self.main_call)
        if not responses or not responses[-1].HasField("closed"):
            self.summary.violate(f"close of the fuzz session answered {responses} {status} {details}")
        self.closed_ids.append(self.main.id)
        self.main, self.main_call = None, None

    async def _resume_main(self, why: str) -> None:
        """The stream ended by status: attach a new one and check nothing was applied unanswered."""
        assert self.main is not None
        self.summary.resumes += 1
        self.main_call = self.session_raw()
        await self.main_call.write(
            pb.SessionRequest(attach=pb.AttachSession(session_id=self.main.id)).SerializeToString()
        )
        opened = await next_response(self.main_call)
        if isinstance(opened, Ended) or not opened.HasField("opened"):
            self.summary.violate(f"cannot resume the fuzz session after {why}: {opened}")
            self.main, self.main_call = None, None
            return
        if opened.opened.last_applied_seq != self.main.last_seq:
            self.summary.violate(
                f"after {why}, the server had applied seq {opened.opened.last_applied_seq} but answered only up to "
                f"{self.main.last_seq}: a step was applied without an answer"
            )
            self.main.last_seq = opened.opened.last_applied_seq
            self.main.ids = []  # unknown now; the next probe would fail, so start over
            await self._close_main()
            return
        await self._probe_main()

    async def _stream_case(self, case: Case) -> None:
        if self.main is None or self.main_call is None:
            await self._open_main()
        elif self.main_cases >= self.rotate_every or len(self.main.ids) > 2000:
            await self._close_main()
            await self._open_main()
        assert self.main is not None
        self.main_cases += 1
        payload = self._render(case, self.main)
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            await self.main_call.write(payload)  # if the stream already ended, reading gives its status
        responses, status, details = await self._read(self.main_call)
        request = _parse(pb.SessionRequest, payload)
        for response in responses:
            self._check_session_response(case, request, response, self.main)
        if status is not None:
            self._count(_status_text(status), case, details)
            if self.main is not None:
                if status == grpc.StatusCode.OK and responses and responses[-1].HasField("closed"):
                    self.closed_ids.append(self.main.id)
                    self.main, self.main_call = None, None
                elif status == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger" in details:
                    self.summary.violate(f"the server's answer was over its own message limit: {case.describe()}")
                    await self._resume_main(f"status {status.name}")
                else:
                    await self._resume_main(f"status {status.name}")
        elif self.main_cases % self.probe_every == 0:
            await self._probe_main()

    def _check_session_response(
        self, case: Case, request: pb.SessionRequest | None, response: pb.SessionResponse, session: Tracked
    ) -> None:
        """Counts the answer and moves the oracle exactly as far as the server says it applied."""
        kind = response.WhichOneof("response")
        self._check_bound(case, request, response)
        if kind == "error":
            self._count(response.error.code_name, case, response.error.message)
            return
        if kind == "token":
            return
        self._count("OK", case)
        if request is None:
            self.summary.violate(f"undecodable bytes were answered with {kind}: {case.describe()}")
            return
        if kind == "result":
            self._applied(case, session, request.step.seq, response.result.duplicate, self._step_ids(request.step))
            expected = (
                (1 if request.step.last_only else len(self._step_ids(request.step) or []))
                if not response.result.duplicate
                else None
            )
            if expected is not None and len(response.result.outputs) != expected:
                self.summary.violate(f"{len(response.result.outputs)} outputs for {expected} steps: {case.describe()}")
        elif kind == "generated":
            done = response.generated
            ids = self._text_ids(request.generate.prompt) + list(done.ids)
            self._applied(case, session, request.generate.seq, done.duplicate, ids)
        elif kind == "reset":
            if self._applied(case, session, request.reset.seq, response.reset.duplicate, []):
                session.ids = []
        elif kind == "forked":
            self.forks.append(response.forked.session_id)
        elif kind == "snapshot":
            self.blobs.append(response.snapshot.blob)
            if response.snapshot.last_applied_seq != session.last_seq:
                self.summary.violate(
                    f"snapshot says seq {response.snapshot.last_applied_seq}, oracle {session.last_seq}"
                )
        elif kind == "closed":
            if session is self.main:
                self.closed_ids.append(session.id)
                self.main, self.main_call = None, None
        else:
            self.summary.violate(f"unexpected {kind} answer mid-stream: {case.describe()}")

    def _check_bound(self, case: Case, request: pb.SessionRequest | None, response: pb.SessionResponse) -> None:
        """An answer larger than the bound its driver computed would let a request through the
        --max-message-bytes check whose answer cannot be sent."""
        kind = response.WhichOneof("response")
        size = response.ByteSize()
        driver = self.reference.driver
        if kind == "result" and request is not None and not response.result.duplicate:
            bound = driver.answer_bytes_bound(self.main_options, len(response.result.outputs))
        elif kind == "generated" and not response.generated.duplicate:
            bound = bounds.generate_done(driver.vocabulary.longest_token_bytes, response.generated.tokens)
        elif kind == "error":
            bound = bounds.error_response(request)
        else:
            return
        if size > bound:
            self.summary.violate(f"a {kind} answer of {size} bytes is over its bound {bound}: {case.describe()}")

    def _applied(self, case: Case, session: Tracked, seq: int, duplicate: bool, ids: list[int] | None) -> bool:
        """Checks the exactly-once rule for an answer that says applied (or duplicate); True if applied now."""
        if duplicate:
            if not 1 <= seq <= session.last_seq:
                self.summary.violate(
                    f"seq {seq} called a duplicate, last applied {session.last_seq}: {case.describe()}"
                )
            return False
        if seq != session.last_seq + 1:
            self.summary.violate(f"seq {seq} applied after {session.last_seq}: {case.describe()}")
        if ids is None or any(not 0 <= i < len(self.reference.vocabulary) for i in ids):
            self.summary.violate(f"an input outside the vocabulary was applied: {case.describe()}")
            session.broken = True
            ids = []
        session.last_seq = seq
        session.ids.extend(ids)
        return True

    def _text_ids(self, text: str) -> list[int]:
        return [self.reference.ids[c] for c in text if c in self.reference.ids]

    def _step_ids(self, step: pb.Step) -> list[int] | None:
        kind = step.WhichOneof("input")
        if kind == "text":
            return self._text_ids(step.text)
        if kind == "tokens":
            return list(step.tokens.ids)
        if kind == "tensors" and len(step.tensors.tensors) == 1:
            tensor = step.tensors.tensors[0]
            dtype = {pb.DATA_TYPE_INT64: "<i8", pb.DATA_TYPE_INT32: "<i4"}.get(tensor.dtype)
            if dtype is not None and len(tensor.data) % np.dtype(dtype).itemsize == 0:
                return [int(v) for v in np.frombuffer(tensor.data, dtype)]
        return None

    async def _probe_main(self) -> None:
        """Steps one known character and compares the outputs with the offline run of the history."""
        if self.main is None or self.main_call is None:
            return
        if self.main.broken:
            await self._close_main()
            return
        token = len(self.main.ids) % len(self.reference.vocabulary)
        seq = self.main.next_seq()
        await self.main_call.write(
            pb.SessionRequest(step=pb.Step(seq=seq, tokens=pb.TokenIds(ids=[token]))).SerializeToString()
        )
        responses, status, details = await self._read(self.main_call)
        if status is not None or not responses or not responses[-1].HasField("result"):
            self.summary.violate(f"probe of the fuzz session got {responses} {status} {details}")
            self.main, self.main_call = None, None
            return
        self.main.last_seq = seq
        self.main.ids.append(token)
        self._compare(responses[-1].result, self.main.ids, "stream")

    def _compare(self, result: pb.StepResult, ids: list[int], where: str) -> None:
        got = np.frombuffer(result.outputs[-1].tensors[0].data, "<f4")
        want = self.reference.last_logits_of_ids(ids)
        diff = float(np.max(np.abs(got - want)))
        self.summary.probes += 1
        self.summary.probe_max_diff = max(self.summary.probe_max_diff, diff)
        if diff > TOLERANCE:
            self.summary.violate(f"{where} fuzz session drifted from its applied history by {diff:.2e}")

    async def _first_case(self, case: Case) -> None:
        call = self.session_raw()
        payload = self._render(case, None)
        await call.write(payload)
        responses, status, details = await self._read(call)
        if status is not None:
            self._count(_status_text(status), case, details)
            return
        response = responses[-1]
        if not response.HasField("opened"):
            self._count("UNEXPECTED", case, f"first answer {response}")
            call.cancel()
            return
        self._count("OK", case)
        opened = response.opened.session_id
        if opened in self.forks:
            self.forks.remove(opened)
        await call.write(pb.SessionRequest(close=pb.Close()).SerializeToString())
        responses, status, details = await self._read(call)
        if not responses or not responses[-1].HasField("closed"):
            self.summary.violate(f"a session opened by a first message did not close: {responses} {status} {details}")
        self.closed_ids.append(opened)

    # Multiplex

    async def _multiplex_case(self, case: Case) -> None:
        if self.mux is None:
            options = pb.SessionOptions(return_tensors=[self.reference.logits_name])
            opened = await self.unary_raw["create"](
                pb.OpenSession(model=self.model, options=options).SerializeToString(), timeout=CASE_TIMEOUT_S
            )
            self.mux = Tracked(opened.session_id)
        if self.mux_call is None:
            self.mux_call = self.multiplex_raw()
        payload = self._render(case, self.mux)
        await self.mux_call.write(payload)
        response = await next_response(self.mux_call)
        if isinstance(response, Ended):
            status, details = response.code, response.details
            self._count(_status_text(status), case, details)
            self.mux_call = None
            if status == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger" in details:
                self.summary.violate(f"the server's Multiplex answer was over its own message limit: {case.describe()}")
            await self._probe_mux()  # the state must be what the answered entries say
            return
        request = _parse(pb.MultiplexRequest, payload)
        entries = list(request.steps) if request is not None else []
        if request is None or len(response.results) != len(entries):
            if not (len(response.results) == 1 and response.results[0].HasField("error")):
                self.summary.violate(f"{len(response.results)} results for {len(entries)} entries: {case.describe()}")
            for result in response.results:
                self._count(result.error.code_name if result.HasField("error") else "OK", case, result.error.message)
            return
        for entry, result in zip(entries, response.results, strict=True):
            if result.HasField("error"):
                self._count(result.error.code_name, case, result.error.message)
                continue
            self._count("OK", case)
            if entry.session_id in self.forks:
                continue  # a live fork: served, not tracked
            if entry.session_id != self.mux.id:
                self.summary.violate(f"a step on {entry.session_id[:12]!r} (not a live session) was served")
                continue
            self._applied(case, self.mux, entry.step.seq, result.result.duplicate, self._step_ids(entry.step))
        if self.summary.by_target["multiplex"] % self.probe_every == 0:
            await self._probe_mux()

    async def _probe_mux(self) -> None:
        if self.mux is None:
            return
        if self.mux.broken:
            await self._unary("close", pb.CloseSessionRequest(session_id=self.mux.id).SerializeToString())
            self.mux = None
            return
        call = self.multiplex_raw()
        token = len(self.mux.ids) % len(self.reference.vocabulary)
        seq = self.mux.next_seq()
        step = pb.SessionStep(session_id=self.mux.id, step=pb.Step(seq=seq, tokens=pb.TokenIds(ids=[token])))
        await call.write(pb.MultiplexRequest(steps=[step]).SerializeToString())
        response = await next_response(call)
        await call.done_writing()
        if isinstance(response, Ended) or not response.results[0].HasField("result"):
            self.summary.violate(f"probe of the multiplex session got {response}")
            self.mux = None
            return
        result = response.results[0].result
        if result.duplicate:
            self.summary.violate(f"multiplex probe seq {seq} was a duplicate: a step was applied without an answer")
            self.mux = None
            return
        self.mux.last_seq = seq
        self.mux.ids.append(token)
        self._compare(result, self.mux.ids, "multiplex")

    # unary calls

    async def _unary(self, name: str, payload: bytes) -> tuple[Any, grpc.StatusCode, str]:
        try:
            reply = await self.unary_raw[name](payload, timeout=CASE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return None, exc.code(), exc.details() or ""
        return reply, grpc.StatusCode.OK, ""

    async def _unary_case(self, case: Case) -> None:
        name = case.method or case.target
        payload = self._render(case, None)
        reply, status, details = await self._unary(name, payload)
        self._count(status.name, case, details)
        if status != grpc.StatusCode.OK:
            return
        if name == "create":
            _, code, text = await self._unary(
                "close", pb.CloseSessionRequest(session_id=reply.session_id).SerializeToString()
            )
            if code != grpc.StatusCode.OK:
                self.summary.violate(f"a created session could not be closed: {code} {text}")
            self.closed_ids.append(reply.session_id)
        elif name == "close":
            request = _parse(pb.CloseSessionRequest, payload)
            closed = request.session_id if request is not None else ""
            if closed in self.forks:
                self.forks.remove(closed)
            elif closed in (self.main.id if self.main else None, self.mux.id if self.mux else None):
                self.summary.violate("a fuzz case closed a session it never named")
            self.closed_ids.append(closed)

    # the Open Inference Protocol

    async def _oip_case(self, case: Case) -> None:
        """One request to inference.GRPCInferenceService: a documented status or error_message, never a hang."""
        payload = case.template if isinstance(case.template, bytes) else case.template.SerializeToString()
        if case.method == "ModelInfer":
            try:
                await self.oip_infer(payload, timeout=CASE_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                self._count(exc.code().name, case, exc.details() or "")
            else:
                self._count("OK", case)
            return
        call = self.oip_stream()
        try:
            await call.write(payload)
            response = await asyncio.wait_for(call.read(), CASE_TIMEOUT_S)
            await call.done_writing()
            await asyncio.wait_for(call.code(), CASE_TIMEOUT_S)  # the stream ends cleanly after it
        except grpc.aio.AioRpcError as exc:
            self._count(exc.code().name, case, exc.details() or "")
            return
        if response is grpc.aio.EOF:
            self.summary.violate(f"ModelStreamInfer ended without answering: {case.describe()}")
            return
        answer = oip.ModelStreamInferResponse.FromString(response)
        self._count(answer.error_message.split(":", 1)[0] if answer.error_message else "OK", case, answer.error_message)

    async def _end_oip_sequences(self) -> None:
        """Ends every sequence an oip case may have started (those not open just refuse)."""
        for sequence_id in OIP_SEQUENCES:
            request = oip.ModelInferRequest(model_name=self.model, raw_input_contents=[bytes(8)])
            request.inputs.add(name=self.reference.input.name, datatype="INT64", shape=[1])
            request.parameters["sequence_id"].int64_param = sequence_id
            request.parameters["sequence_end"].bool_param = True
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.oip_infer(request.SerializeToString(), timeout=CASE_TIMEOUT_S)


def _parse(message_type: type[Message], payload: bytes) -> Any:
    try:
        return message_type.FromString(payload)
    except (DecodeError, ValueError, RecursionError):
        return None


# -- driving it ---------------------------------------------------------------------------------


def run_cases(
    fuzzer: Fuzzer,
    strategies: Strategies,
    cases: int,
    *,
    seed_value: int | None = None,
    mix: Sequence[tuple[str, int]] = TARGET_MIX,
) -> None:
    """Draws ``cases`` cases with hypothesis and runs each; findings are recorded, never raised."""
    targets = target_strategy(mix)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=seed_value is None,
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        target = data.draw(targets, label="target")
        fuzzer.run(data.draw(strategies.case(target), label=target))

    if seed_value is not None:
        one = seed(seed_value)(one)
    one()


def fuzz_target(models_dir: Path, limits: Limits) -> ServerProcess:
    """``statestream serve`` with the fuzz limits, as a child process stopped by its PID."""
    extra = (
        "--log-level", "ERROR",
        "--max-chunk", str(limits.max_chunk),
        "--max-message-bytes", str(limits.max_message_bytes),
        "--max-generate-tokens", str(limits.max_generate_tokens),
    )  # fmt: skip
    return ServerProcess("fuzz-target", serve_command(models_dir, "batched", extra))


def solo_outputs(target: str, model: str, text: str, logits_name: str) -> np.ndarray:
    """The bystander's outputs with nothing else running (the baseline it is held to)."""

    async def run() -> np.ndarray:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.stream_stream(SERVICE + "SessionService/Session", _identity, pb.SessionResponse.FromString)()
            options = pb.SessionOptions(return_tensors=[logits_name])
            await call.write(pb.SessionRequest(open=pb.OpenSession(model=model, options=options)).SerializeToString())
            await call.read()
            rows = []
            for index, char in enumerate(text):
                await call.write(pb.SessionRequest(step=pb.Step(seq=index + 1, text=char)).SerializeToString())
                response = await call.read()
                rows.append(np.frombuffer(response.result.outputs[0].tensors[0].data, "<f4"))
            await call.write(pb.SessionRequest(close=pb.Close()).SerializeToString())
            await call.read()
            await call.done_writing()
            return np.stack(rows)

    return asyncio.run(run())


def parser() -> Parser:
    parser = Parser(prog="python -m loadtest.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int_in(1, 10_000_000), default=10_000, help="cases to run (default 10000)")
    parser.add_argument("--models-dir", type=nonempty_path, default=Path("models"), help="models folder to serve")
    parser.add_argument("--model", default="char_lm", help="the token model the fuzz sessions run (default char_lm)")
    parser.add_argument(
        "--seed", type=command.seed, default=None, help="hypothesis seed (default: derandomized, repeatable)"
    )
    parser.add_argument("--max-chunk", type=positive_int, default=Limits.max_chunk, help="server --max-chunk")
    parser.add_argument(
        "--max-message-bytes", type=int_in(1024, INT32_MAX), default=Limits.max_message_bytes, help="server limit"
    )
    parser.add_argument(
        "--max-generate-tokens", type=positive_int, default=Limits.max_generate_tokens, help="server limit"
    )
    return parser


@stopping_children_on_sigterm
def main(argv: Sequence[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(list(sys.argv[1:] if argv is None else argv))

    limits = Limits(args.max_chunk, args.max_message_bytes, args.max_generate_tokens)
    folder = model_folder(made, args.models_dir, args.model, tasks=(LanguageDriver.task,))
    reference = Reference(folder)
    server = fuzz_target(args.models_dir, limits)
    server.start()
    print(f"fuzzing {args.model} on {server.target} (pid {server.pid}): {args.cases} cases, {limits}", flush=True)
    started = time.monotonic()
    try:
        solo = solo_outputs(server.target, args.model, BYSTANDER_TEXT, reference.logits_name)
        offline = reference.logits(BYSTANDER_TEXT)
        print(f"bystander solo run vs offline ONNX Runtime: max |diff| {np.max(np.abs(solo - offline)):.2e}")
        fuzzer = Fuzzer(server.target, reference, model=args.model, bystander_solo=solo)
        strategies = Strategies(reference.vocabulary, reference.input.name, args.model, limits)
        try:
            run_cases(fuzzer, strategies, args.cases, seed_value=args.seed)
        finally:
            summary = fuzzer.close()
        summary.crashes = 0 if server.alive else 1
    finally:
        code = server.stop()
    summary.seconds = time.monotonic() - started
    print(summary.report())
    print(f"server exit code after SIGTERM: {code}")
    if not summary.ok:
        print(server.recent_output(), file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
