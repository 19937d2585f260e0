"""inference.GRPCInferenceService: the Open Inference Protocol, a second translator over the engine.

Triton's and KServe's clients speak it; here a sequence is a session. The servicer keeps, per
caller, which session each ``sequence_id`` opened, and hands every request to the same
``SessionEngine`` the native protocol uses, so OIP sequences batch with native sessions and
keep the exactly-once rule: the request ``id`` is the step's key (``apply_step(key=...)``), so
a resend is answered from the reply cache. It translates only: tensors per kind are
``oip_tensors``'s, locks, seqs and commits are the engine's, statuses are the errors' own.
ModelStreamInfer's requests arrive as their bytes: the common one (a sequence's step, its input
raw) is read from them directly, any other is parsed and checked as every other call's.
"""

from __future__ import annotations

import collections.abc
import importlib.metadata
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from service.answer_bytes import DUPLICATE as DUPLICATE_MARK
from service.answer_bytes import length_delimited, varint
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.drivers.step_bytes import ReadStep
from service.engine import SessionEngine
from service.errors import FailedPrecondition, InvalidArgument, NotFound, StatestreamError
from service.metrics import Metrics
from service.runtime import ModelRuntime
from service.servicers import oip_tensors
from service.servicers.admission import admit_stream
from service.servicers.oip_tensors import (
    NO_SEQUENCE,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    STREAM_RESULT,
    OipModel,
    OipTensor,
    RawRequest,
    SequenceFlags,
    SequenceId,
    StepCodec,
    sequence_entry,
)
from service.servicers.sessions import checked
from service.servicers.wire import Context, Malformed, request_parser
from service.session_log import events
from service.session_store import Session

#: The protocol's extensions this server implements (ServerMetadata).
EXTENSIONS = ("sequence", "model_configuration", "model_repository")


#: ModelStreamInfer's deserializer for a request not read from its bytes (Malformed never raises).
parse_infer_request = request_parser(oip.ModelInferRequest)


class Served(NamedTuple):
    """A model as a request names it (model_name, no version): its runtime, codec and request counter."""

    name: str
    runtime: ModelRuntime
    codec: StepCodec
    counted: Any  # the requests counter's child for (model, "oip_infer")


class InferStep(NamedTuple):
    """A request read and checked, ready to run (from a message, or the common one from its bytes)."""

    model_name: str  # as the request named it
    request_id: str
    runtime: ModelRuntime
    codec: StepCodec
    flags: SequenceFlags
    step: pb.Step | ReadStep  # read from its bytes where the driver decodes steps the default way
    raw: bool  # its inputs came in raw_input_contents: the answer's outputs go raw too
    outputs: collections.abc.Sequence[OipTensor]


@dataclass
class Sequence:
    """A caller's sequence: its session, and once it ended, the answer of the request that ended it."""

    session: Session
    model: str
    ended: bool = False
    ended_by: str = ""  # the id of the request that ended it
    ended_answer: bytes = b""  # that request's StepResult, for a resend of it

    def steps_on(self, model: str) -> bool:
        """Whether a plain step (no start, no end) of ``model`` goes on to its open session as it is."""
        return not self.ended and not self.session.closed and self.model == model


def sequence_flags(parameters: Mapping[str, oip.InferParameter]) -> SequenceFlags:
    """The sequence parameters, checked: types, a flag without an id, unknown parameters."""
    if not parameters:
        return NO_SEQUENCE
    if len(parameters) == 1 and SEQUENCE_ID in parameters:  # a sequence's usual step: checked at once
        value = parameters[SEQUENCE_ID]
        if value.WhichOneof("parameter_choice") == "int64_param" and value.int64_param > 0:
            return SequenceFlags(value.int64_param, False, False, sequence_entry(value.SerializeToString()))
    sequence_id: SequenceId | None = None
    start = end = False
    parameter = b""
    for name in parameters:  # not items(): a Python view that looks each value up again
        value = parameters[name]
        kind = value.WhichOneof("parameter_choice")
        if name == SEQUENCE_ID:
            if kind == "string_param":
                sequence_id = value.string_param or None
            elif kind in ("int64_param", "uint64_param"):
                number = getattr(value, kind)
                if number < 0:
                    raise InvalidArgument(f"sequence_id {number} is negative; it is a uint64 or a string")
                sequence_id = number or None
            else:
                raise InvalidArgument(f"sequence_id must be an integer or a string, not {kind}")
            parameter = value.SerializeToString()
        elif name in (SEQUENCE_START, SEQUENCE_END):
            if kind != "bool_param":
                raise InvalidArgument(f"{name} must be a bool, not {kind}")
            start, end = (value.bool_param, end) if name == SEQUENCE_START else (start, value.bool_param)
        else:
            raise InvalidArgument(
                f"unknown parameter {name!r}: this server reads only {SEQUENCE_ID}, {SEQUENCE_START}, {SEQUENCE_END}"
            )
    if sequence_id is None and (start or end):
        raise InvalidArgument(f"{SEQUENCE_START if start else SEQUENCE_END} needs a sequence_id (non-zero)")
    return SequenceFlags(sequence_id, start, end, sequence_entry(parameter) if sequence_id is not None else b"")


def raw_step(raw: RawRequest, served: Served) -> InferStep:
    """A request read from its bytes as ``_read`` reads it (every output, raw)."""
    return InferStep(
        served.name, raw.request_id, served.runtime, served.codec, raw.flags, raw.step, True, served.codec.model.outputs
    )


def error_text(exc: StatestreamError) -> str:
    """An in-stream error_message: the status's name, then what was wrong."""
    return f"{exc.code.name}: {exc.message}"


class InferenceServicer:
    """The Open Inference Protocol over the session engine."""

    #: Methods whose requests the server hands over as their bytes (``wire.add_servicer``).
    raw_requests: ClassVar[frozenset[str]] = frozenset({"ModelStreamInfer"})

    def __init__(self, engine: SessionEngine, metrics: Metrics, auth: Authenticator) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.runtimes = engine.store.runtimes
        self.metrics = metrics
        self.auth = auth
        #: Each model's protocol view, built once.
        self.models = {runtime.name: oip_tensors.oip_model(runtime.model.manifest) for runtime in self.runtimes}
        #: Each model's per-step translation, built once.
        self.codecs = {
            runtime.name: StepCodec(
                self.models[runtime.name], runtime.model.manifest.version, runtime.driver.step_bytes is not None
            )
            for runtime in self.runtimes
        }
        #: (model_name, model_version) as requests name them → the runtime and codec they reach
        #: (models are loaded once, so an answer found once holds; refusals are not kept).
        self._served: dict[tuple[str, str], tuple[ModelRuntime, StepCodec]] = {}
        #: The same for a request naming no version, by its model_name field's bytes.
        self._served_by_field: dict[bytes, Served] = {}
        #: (caller, sequence_id) → its sequence.
        self.sequences: dict[tuple[str, SequenceId], Sequence] = {}
        try:
            self.version = importlib.metadata.version("statestream")
        except importlib.metadata.PackageNotFoundError:
            self.version = "unknown"

    # -- health and metadata -------------------------------------------------------------

    async def ServerLive(self, request: oip.ServerLiveRequest | Malformed, context: Context) -> oip.ServerLiveResponse:
        await self._caller(context)
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest | Malformed, context: Context
    ) -> oip.ServerReadyResponse:
        await self._caller(context)
        return oip.ServerReadyResponse(ready=self.engine.store.accepting)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest | Malformed, context: Context
    ) -> oip.ServerMetadataResponse:
        await self._caller(context)
        return oip.ServerMetadataResponse(name="statestream", version=self.version, extensions=EXTENSIONS)

    async def ModelReady(self, request: oip.ModelReadyRequest | Malformed, context: Context) -> oip.ModelReadyResponse:
        await self._caller(context)
        try:
            asked = checked(request)
            _, model = self._model(asked.name, asked.version)
        except StatestreamError:
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=not model.unreachable and self.engine.store.accepting)

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest | Malformed, context: Context
    ) -> oip.ModelMetadataResponse:
        try:
            await self._caller(context)
            asked = checked(request)
            runtime, model = self._reachable(asked.name, asked.version)
            return oip.ModelMetadataResponse(
                name=model.name,
                versions=[runtime.model.manifest.version],
                platform="onnxruntime_onnx",
                inputs=[t.metadata() for t in model.inputs],
                outputs=[t.metadata() for t in model.outputs],
            )
        except StatestreamError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def ModelConfig(
        self, request: oip.ModelConfigRequest | Malformed, context: Context
    ) -> oip.ModelConfigResponse:
        try:
            await self._caller(context)
            asked = checked(request)
            _, model = self._reachable(asked.name, asked.version)
            config = oip_tensors.model_config(model, self.settings.max_batch, self.settings.idle_timeout_s)
            return oip.ModelConfigResponse(config=config)
        except StatestreamError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest | Malformed, context: Context
    ) -> oip.RepositoryIndexResponse:
        await self._caller(context)
        ready_only = not isinstance(request, Malformed) and request.ready
        index = oip.RepositoryIndexResponse()
        for runtime in sorted(self.runtimes, key=lambda r: r.name):
            model = self.models[runtime.name]
            if model.unreachable and ready_only:
                continue
            index.models.add(
                name=runtime.name,
                version=runtime.model.manifest.version,
                state="UNAVAILABLE" if model.unreachable else "READY",
                reason=model.unreachable,
            )
        return index

    # -- inference -----------------------------------------------------------------------

    async def ModelInfer(
        self, request: oip.ModelInferRequest | Malformed, context: Context
    ) -> oip.ModelInferResponse | bytes:
        try:
            caller = self.auth.caller(context)
            return await self._answer(self._read(checked(request)), caller)
        except StatestreamError as exc:
            events.refused(exc)
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[oip.ModelStreamInferResponse | bytes]:
        """Answers each request in order before reading the next; a failed one is an error_message.

        An open sequence's plain step, read from its bytes, goes straight to the engine (the hot
        path: what ``_answer`` would do, with nothing built but the Step); any other request is
        read whole (``_read``) and answered by ``_answer``.
        """
        caller: str | None = None
        try:
            async for data in requests:
                if caller is None:  # refusals only after the first message is read, as in Session
                    caller = await admit_stream(self.engine, self.auth, context)
                found = self._read_raw(data)
                read: InferStep | None = None
                request: oip.ModelInferRequest | Malformed | None = None
                try:
                    if found is not None:
                        raw, served = found
                        known = self._stepping(caller, raw.flags, served.runtime.name)
                        if known is not None:
                            # A stream's step may take the scheduler's fast lane: the next request
                            # is read only once this one is answered, as on a Session stream.
                            answer = await self.engine.apply_step(
                                known.session, raw.step, lane=True, key=raw.request_id
                            )
                            written = served.codec.raw_response(
                                raw.request_id, raw.flags.entry, answer, raw.step.seq, True
                            )
                            yield written if written is not None else self._written(raw_step(raw, served), answer, True)
                            continue
                        read = raw_step(raw, served)
                    else:
                        request = parse_infer_request(data)
                        read = self._read(checked(request))
                    answer_bytes = await self._answer(read, caller, lane=True, framed=True)
                except StatestreamError as exc:
                    events.refused(exc)
                    if read is None and found is not None:  # refused on the hot path: named as _read names it
                        read = raw_step(*found)
                    yield self._failed(exc, read, request)
                    continue
                yield answer_bytes
        finally:
            if caller is not None:
                self.engine.leave_stream()

    @staticmethod
    def _failed(
        exc: StatestreamError, read: InferStep | None, request: oip.ModelInferRequest | Malformed | None
    ) -> oip.ModelStreamInferResponse:
        """A stream's answer to a failed request: its error_message, with the request's model and id."""
        failed = oip.ModelInferResponse()
        if read is not None:
            failed.model_name, failed.id = read.model_name, read.request_id
        elif isinstance(request, oip.ModelInferRequest):
            failed.model_name, failed.id = request.model_name, request.id
        return oip.ModelStreamInferResponse(error_message=error_text(exc), infer_response=failed)

    def _read(self, request: oip.ModelInferRequest) -> InferStep:
        """A request checked whole before anything runs: its model, sequence flags, inputs, outputs."""
        runtime, codec = self._served_model(request.model_name, request.model_version)
        self.metrics.requests.labels(runtime.name, "oip_infer").inc()
        flags = sequence_flags(request.parameters)
        step, raw = codec.step(request)
        outputs = codec.requested_outputs(request)
        return InferStep(request.model_name, request.id, runtime, codec, flags, step, raw, outputs)

    def _read_raw(self, data: bytes) -> tuple[RawRequest, Served] | None:
        """The common request read from its bytes: a served model named without a version, then what
        ``StepCodec.read_request`` takes; None for any other (``_read`` then parses and checks it).
        What it reads is what ``_read`` would make of the same request (``raw_step``)."""
        served = self._served_by_field.get(data[: 2 + data[1]]) if len(data) > 1 and data[0] == 0x0A else None
        if served is None:
            return None
        raw = served.codec.read_request(data, 2 + data[1])
        if raw is None:
            return None
        served.counted.inc()
        return raw, served

    async def _answer(self, read: InferStep, caller: str, *, lane: bool = False, framed: bool = False) -> bytes:
        """One read request's step through the engine, answered by its ModelInferResponse's bytes
        (``framed``: as a stream's ModelStreamInferResponse)."""
        runtime, codec, flags, step = read.runtime, read.codec, read.flags, read.step
        if flags.id is None:
            answer = await self._one_shot(runtime, codec.model, step, caller)
        elif (known := self._stepping(caller, flags, runtime.name)) is not None:
            # an open sequence's next step (what _sequence_step would do, one coroutine less)
            answer = await self.engine.apply_step(known.session, step, lane=lane, key=read.request_id)
        else:
            answer = await self._sequence_step(runtime, codec.model, flags, step, read.request_id, caller, lane)
        if read.raw and read.outputs is codec.model.outputs:
            written = codec.raw_response(read.request_id, flags.entry, answer, step.seq, framed)
            if written is not None:
                return written
        return self._written(read, answer, framed)

    def _stepping(self, caller: str, flags: SequenceFlags, model: str) -> Sequence | None:
        """The open sequence of ``model`` a plain step (no start, no end) of ``flags.id`` goes on to as
        it is, or None (then ``_sequence_step`` finds, opens or refuses it)."""
        if flags.id is None or flags.start or flags.end:
            return None
        known = self.sequences.get((caller, flags.id))
        return known if known is not None and known.steps_on(model) else None

    @staticmethod
    def _written(read: InferStep, answer: bytes, framed: bool) -> bytes:
        """The response to ``read`` holding the engine's ``answer``, written the general way."""
        result = read.codec.read_answer(answer, read.step.seq)  # the engine set a sequence step's seq
        if result.tensors is None:  # a resend whose answer has left the reply cache
            raise FailedPrecondition(
                f"request {read.request_id!r} was applied already (step {result.seq} of sequence "
                f"{read.flags.id!r}); its answer is no longer cached (the server keeps the last --reply-cache answers)"
            )
        response = read.codec.response(read.request_id, read.flags.entry, result, read.outputs, read.raw)
        return STREAM_RESULT + varint(len(response)) + response if framed else response

    async def _one_shot(self, runtime: ModelRuntime, model: OipModel, step: pb.Step | ReadStep, caller: str) -> bytes:
        """A request without a sequence: one step of a fresh session, closed at once."""
        session = await self.engine.open(self._open_request(runtime, model), caller)
        try:
            return await self.engine.apply_step(session, step)
        finally:
            await self.engine.close(session)

    async def _sequence_step(
        self,
        runtime: ModelRuntime,
        model: OipModel,
        flags: SequenceFlags,
        step: pb.Step | ReadStep,
        request_id: str,
        caller: str,
        lane: bool,
    ) -> bytes:
        """A step of a sequence, exactly once by request id; sequence_end closes it after the step."""
        assert flags.id is not None
        key = (caller, flags.id)
        known = self.sequences.get(key)
        if known is not None and known.ended and request_id and request_id == known.ended_by:
            return known.ended_answer + DUPLICATE_MARK  # the ending request, resent
        if known is None or flags.start or not known.steps_on(runtime.name):
            session = await self._session_of(runtime, model, flags, request_id, caller, known)
        else:
            session = known.session  # an open sequence's next step (what _session_of would find)
        answer = await self.engine.apply_step(session, step, lane=lane, key=request_id)
        if flags.end:
            await self.engine.close(session)
            self.sequences[key] = Sequence(session, runtime.name, True, request_id, answer)
        return answer

    async def _session_of(
        self,
        runtime: ModelRuntime,
        model: OipModel,
        flags: SequenceFlags,
        request_id: str,
        caller: str,
        known: Sequence | None,
    ) -> Session:
        """The sequence's session (``known``: what this servicer holds of it): opened by
        sequence_start, found (and alive) otherwise."""
        assert flags.id is not None
        key = (caller, flags.id)
        live = self._live(known, caller)
        if flags.start:
            if live is not None and request_id and request_id in live.keys:
                return live  # the starting request, resent: the engine answers it from the cache
            if live is not None:  # a new start of an open id ends the old sequence (as in Triton)
                await self.engine.close(live)
            self._forget_dead()
            session = await self.engine.open(self._open_request(runtime, model), caller)
            self.sequences[key] = Sequence(session, runtime.name)
            return session
        if known is None:
            raise FailedPrecondition(f"sequence {flags.id!r} is not open: its first request must set sequence_start")
        if known.ended:
            raise FailedPrecondition(
                f"sequence {flags.id!r} has ended (sequence_end); start it again with sequence_start"
            )
        if live is None:
            raise FailedPrecondition(
                f"sequence {flags.id!r} has expired: its session idled past --idle-timeout-s "
                f"({self.settings.idle_timeout_s:g}s) or was evicted; start it again with sequence_start"
            )
        if known.model != runtime.name:
            raise InvalidArgument(f"sequence {flags.id!r} belongs to model {known.model!r}, not {runtime.name!r}")
        return live

    def _live(self, known: Sequence | None, caller: str) -> Session | None:
        """The sequence's session if it is open: the one it holds while that is (the store closes
        every session it lets go of), else whatever the store holds under its id."""
        if known is None or known.ended:
            return None
        if not known.session.closed:
            return known.session
        try:
            return self.engine.get(known.session.id, caller)
        except NotFound:
            return None

    def _forget_dead(self) -> None:
        """Bounds the map: past twice --max-sessions entries, forgets those whose session is gone."""
        if len(self.sequences) <= 2 * self.settings.max_sessions:
            return
        for key, known in list(self.sequences.items()):
            if self._live(known, key[0]) is None:
                del self.sequences[key]

    def _open_request(self, runtime: ModelRuntime, model: OipModel) -> pb.OpenSession:
        return pb.OpenSession(model=runtime.name, version=runtime.model.manifest.version, options=model.options())

    # -- models --------------------------------------------------------------------------

    def _model(self, name: str, version: str) -> tuple[ModelRuntime, OipModel]:
        if not name:
            raise InvalidArgument("model name is required")
        runtime = self.runtimes.get(name, version)
        return runtime, self.models[runtime.name]

    def _served_model(self, name: str, version: str) -> tuple[ModelRuntime, StepCodec]:
        """``_reachable``'s model with its codec, kept once found (the per-step lookup)."""
        served = self._served.get((name, version))
        if served is None:
            runtime, _ = self._reachable(name, version)
            served = self._served[(name, version)] = (runtime, self.codecs[runtime.name])
            if not version and len(name.encode()) < 0x80:  # a one-byte length: what _read_raw reads
                counted = self.metrics.requests.labels(runtime.name, "oip_infer")
                self._served_by_field[length_delimited(1, name.encode())] = Served(name, *served, counted)
        return served

    def _reachable(self, name: str, version: str) -> tuple[ModelRuntime, OipModel]:
        """The model, if this protocol can run it (FAILED_PRECONDITION saying why not, otherwise)."""
        runtime, model = self._model(name, version)
        if model.unreachable:
            raise FailedPrecondition(model.unreachable)
        return runtime, model

    async def _caller(self, context: Context) -> str:
        try:
            return self.auth.caller(context)
        except StatestreamError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
