"""How each model's steps travel as Open Inference Protocol tensors (docs/api.md's tables).

One request is one step of one sequence, so an input of per-step shape S travels as [1, *S]
and goes to the engine as a chunk of one step. Most kinds map their manifest's inputs and
outputs directly; two differ: a language model answers with its next character's
``probabilities`` (the softmax of its logits) beside the logits, and a sequence classifier
with its ``probabilities`` beside its logits (a whole-sequence one takes ``frames`` [1, T, F]).
A model whose sessions open with an init payload (captioner, translator) is not reachable:
this protocol has no place for the payload, and their decoders are server-side loops that
stream, which the native API serves; nor is the voice-activity detector, whose audio travels
in Runs (a frame buffer and speech events kept by a server-side loop).

``StepCodec`` is the per-step translation, built once per model: a well-formed raw request
(the common stream request: straight from its bytes) becomes a native Step around its own
bytes, and an answer is written as bytes from pieces made once (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from service.answer_bytes import DUPLICATE as DUPLICATE_MARK
from service.answer_bytes import LEN, VARINT, key, length_delimited, packed_varints, tensor_prefix, varint
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.contract import Arrays, Manifest
from service.drivers.step_bytes import ReadStep, read_values
from service.drivers.steps import StepInputs
from service.errors import InvalidArgument
from service.tensors import MAX_DIMS, add_proto, proto_dtype

#: The protocol's datatype of each manifest dtype (every dtype a manifest may name).
DATATYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "int16": "INT16"}
#: Little-endian numpy dtype and the InferTensorContents field of each datatype this server takes.
CONTENTS: dict[str, tuple[np.dtype[Any], str]] = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
}
#: Each datatype's little-endian numpy dtype and the native DataType its tensors carry.
WIRE_TYPES = {datatype: (dtype, proto_dtype(dtype.name)) for datatype, (dtype, _) in CONTENTS.items()}
#: The little-endian numpy dtype of each native DataType.
NATIVE_DTYPES = {int(number): dtype for dtype, number in WIRE_TYPES.values()}
#: ModelConfig's DataType of each datatype.
CONFIG_TYPES = {"FP32": oip.TYPE_FP32, "INT64": oip.TYPE_INT64, "INT32": oip.TYPE_INT32, "INT16": oip.TYPE_INT16}
#: The outputs a kind adds to its manifest's, computed from a native output.
PROBABILITIES = "probabilities"
#: The request parameters read; any other is refused (an option this server does not support).
SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
#: Answer parameters: the step's seq in its session, and whether the answer came from the cache.
SEQ, DUPLICATE = "statestream_seq", "statestream_duplicate"


@dataclass(frozen=True)
class OipTensor:
    """One protocol tensor: its name, datatype and per-step shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> oip.ModelMetadataResponse.TensorMetadata:
        return oip.ModelMetadataResponse.TensorMetadata(name=self.name, datatype=self.datatype, shape=[-1, *self.shape])


@dataclass(frozen=True)
class OipModel:
    """How one model's requests become native Steps, and its answers protocol tensors."""

    name: str
    inputs: tuple[OipTensor, ...]
    outputs: tuple[OipTensor, ...]
    #: Why the protocol cannot run this model ("" when it can).
    unreachable: str = ""
    #: The native outputs every step returns (SessionOptions.return_tensors).
    return_tensors: tuple[str, ...] = ()
    #: The native output whose softmax is the ``probabilities`` output ("" for none).
    softmax_of: str = ""
    #: Whether an input's batch axis is the native chunk's time axis (False: the whole
    #: [T, F] sequence is one native step, as a whole-sequence classifier takes it).
    batch_is_chunk: bool = True

    def options(self) -> pb.SessionOptions:
        return pb.SessionOptions(top_k=1, return_tensors=self.return_tensors)

    def step(self, arrays: dict[str, np.ndarray]) -> pb.Step:
        """A native Step of the checked inputs ([1, *shape] each): one step of one session."""
        step = pb.Step(seq=1)
        tensors = step.tensors.tensors
        for name, array in arrays.items():
            add_proto(tensors, name, array if self.batch_is_chunk else array[0])
        return step


def oip_model(manifest: Manifest) -> OipModel:
    """The protocol's view of a model, by its task (the direct mapping unless the kind differs)."""
    inputs = tuple(OipTensor(t.name, DATATYPES[t.dtype], t.shape) for t in manifest.inputs)
    outputs = tuple(OipTensor(t.name, DATATYPES[t.dtype], t.shape) for t in manifest.outputs)
    names = tuple(t.name for t in manifest.outputs)
    if manifest.init is not None:
        return OipModel(
            manifest.name,
            inputs,
            outputs,
            unreachable=f"model {manifest.name!r} ({manifest.task}) opens each session with an init payload and "
            "decodes in a server-side loop; use the statestream.v1 API",
        )
    if manifest.task == "voice_activity":
        return OipModel(
            manifest.name,
            inputs,
            outputs,
            unreachable=f"model {manifest.name!r} (voice_activity) takes audio of any length in Run requests, framed "
            "and turned into speech events in a server-side loop; use the statestream.v1 API",
        )
    if manifest.task == "language_model":
        logits = str(manifest.decoding.get("logits", "logits"))
        vocabulary = (len(manifest.vocabulary),)
        probabilities = OipTensor(PROBABILITIES, "FP32", vocabulary)
        return OipModel(manifest.name, inputs, (probabilities, *outputs), return_tensors=(logits,), softmax_of=logits)
    if manifest.task == "sequence_classifier":
        classes = (len(manifest.decoding.get("classes", ())),)
        probabilities = OipTensor(PROBABILITIES, "FP32", classes)
        if manifest.decoding.get("mode") == "whole":
            frames = next(t for t in inputs if t.name == "frames")
            whole = OipTensor(frames.name, frames.datatype, (-1, frames.shape[-1]))
            return OipModel(
                manifest.name, (whole,), (probabilities, *outputs), return_tensors=names, batch_is_chunk=False
            )
        return OipModel(manifest.name, inputs, (probabilities, *outputs), return_tensors=names)
    return OipModel(manifest.name, inputs, outputs, return_tensors=names)


# -- requests ------------------------------------------------------------------------------


def read_inputs(request: oip.ModelInferRequest, model: OipModel) -> tuple[dict[str, np.ndarray], bool]:
    """The request's inputs as arrays ([1, *shape]) and whether they came raw; every problem is an
    InvalidArgument naming the tensor and what the model takes."""
    expected = {t.name: t for t in model.inputs}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"unknown input {tensor.name!r}: model {model.name!r} takes {sorted(expected)}")
        if tensor.name in arrays:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        shape = checked_shape(tensor, spec)
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input {tensor.name!r} is {tensor.datatype or 'untyped'}; it must be {spec.datatype}"
            )
        dtype, field = CONTENTS[spec.datatype]
        count = math.prod(shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"input {tensor.name!r} sets contents beside raw_input_contents: use one")
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise InvalidArgument(
                    f"input {tensor.name!r}: {len(data)} raw bytes; shape {list(shape)} of {spec.datatype} "
                    f"needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(data, dtype)
        else:
            array = typed_contents(tensor, field, dtype, count)
        arrays[tensor.name] = array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise InvalidArgument(f"missing input(s) {missing}: model {model.name!r} takes {sorted(expected)}")
    return arrays, bool(raw)


def checked_shape(tensor: oip.ModelInferRequest.InferInputTensor, spec: OipTensor) -> tuple[int, ...]:
    """The input's shape if it is [1, *the step's shape] (a -1 of the model matches any size >= 1)."""
    shape = tuple(tensor.shape)
    wanted = [1, *spec.shape]
    fits = (
        len(shape) == len(wanted)
        and len(shape) <= MAX_DIMS
        and all(given == want or (want == -1 and given >= 1) for given, want in zip(shape, wanted, strict=True))
    )
    if not fits:
        raise InvalidArgument(
            f"input {tensor.name!r} has shape {list(shape)}; one request is one step of one sequence: {wanted}"
        )
    return shape


def typed_contents(
    tensor: oip.ModelInferRequest.InferInputTensor, field: str, dtype: np.dtype[Any], count: int
) -> np.ndarray:
    """A typed input's elements: exactly ``count`` in its datatype's field, and no other field set."""
    contents = tensor.contents
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidArgument(f"input {tensor.name!r} is {tensor.datatype}: its elements go in {field}, not {others}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(f"input {tensor.name!r}: {len(values)} elements in {field}; its shape holds {count}")
    try:
        return np.array(values, dtype)
    except OverflowError as exc:
        raise InvalidArgument(f"input {tensor.name!r}: an element does not fit {tensor.datatype}") from exc


def model_config(model: OipModel, max_batch: int, idle_timeout_s: float) -> oip.ModelConfig:
    """Triton's configuration of a model, as far as it describes this server's."""
    return oip.ModelConfig(
        name=model.name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=max_batch,
        input=[
            oip.ModelInput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=t.shape or (1,)) for t in model.inputs
        ],
        output=[
            oip.ModelOutput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=t.shape or (1,))
            for t in model.outputs
        ],
        sequence_batching=oip.ModelSequenceBatching(max_sequence_idle_microseconds=int(idle_timeout_s * 1e6)),
    )


# -- the per-step translation ---------------------------------------------------------------

#: ModelStreamInferResponse.infer_response: a stream's answer is this, its length, the ModelInferResponse.
STREAM_RESULT = key(2, LEN)
#: Cached output headers per codec before the cache is emptied (shapes come from the model's
#: outputs, so a few; the bound only keeps a surprise from growing it).
MAX_CACHED_HEADERS = 64


#: Keys of the ModelInferResponse fields written per step: id, a parameters entry, an output
#: tensor, a raw output's contents; and InferParameter's int64_param.
_ID, _PARAMETER, _OUTPUT, _RAW_OUTPUT = key(3, LEN), key(4, LEN), key(5, LEN), key(6, LEN)
_INT64_PARAM = key(2, VARINT)


def entry_name(name: str) -> bytes:
    """A parameters map entry's key (field 1, ``name``) and the key of its value (field 2)."""
    return length_delimited(1, name.encode()) + key(2, LEN)


_SEQUENCE_ID_NAME, _SEQ_NAME = entry_name(SEQUENCE_ID), entry_name(SEQ)


def parameter_entry(name: bytes, parameter: bytes) -> bytes:
    """A ``parameters`` map entry: ``name`` (an ``entry_name``) → an encoded InferParameter."""
    size = varint(len(parameter))
    return _PARAMETER + varint(len(name) + len(size) + len(parameter)) + name + size + parameter


#: statestream_duplicate = true (InferParameter.bool_param, field 1).
DUPLICATE_ENTRY = parameter_entry(entry_name(DUPLICATE), key(1, VARINT) + varint(1))
#: The statestream_seq entry up to its value, by the value's length as a varint (1 to 10 bytes).
_SEQ_ENTRIES = [b""] + [parameter_entry(_SEQ_NAME, _INT64_PARAM + bytes(n))[:-n] for n in range(1, 11)]
#: StepResult.seq's key.
_RESULT_SEQ = key(1, VARINT)
#: Distinct sequence_id entries a codec keeps made (clients choose the ids: emptied past this).
MAX_CACHED_SEQUENCE_IDS = 1024
#: ModelInferRequest's id and raw_input_contents keys (its model_name's is ``length_delimited(1, ...)``).
_REQUEST_ID, _RAW_INPUT = key(3, LEN), key(7, LEN)
#: A request's ``sequence_id`` parameters entry up to its int64_param's value, by the value's
#: varint length (1 to 9 bytes: a positive int64): the bytes protobuf writes for it.
_SEQUENCE_ID_ENTRIES = [b""] + [parameter_entry(_SEQUENCE_ID_NAME, _INT64_PARAM + bytes(n))[:-n] for n in range(1, 10)]

#: A native output as the answer needs it: its little-endian bytes, its per-step shape, its DataType.
NativeTensor = tuple[bytes, tuple[int, ...], int]
#: Per output of the engine's fixed answer layout: name, its bytes before its data, per-step
#: shape, DataType, data size (``_answer_layout``).
_AnswerTensors = tuple[tuple[str, bytes, tuple[int, ...], int, int], ...]


#: A sequence's id as a client names it: a uint64, or a string.
SequenceId = int | str


class SequenceFlags(NamedTuple):
    """What a request's parameters say about its sequence (``id`` None: no sequence)."""

    id: SequenceId | None
    start: bool
    end: bool
    #: The answer's ``sequence_id`` parameters entry (the request's, echoed), encoded; b"" for none.
    entry: bytes = b""


NO_SEQUENCE = SequenceFlags(None, False, False)


def sequence_entry(parameter: bytes) -> bytes:
    """The ``sequence_id`` parameters entry of an answer, holding ``parameter`` (an encoded InferParameter)."""
    return parameter_entry(_SEQUENCE_ID_NAME, parameter)


class RawRequest(NamedTuple):
    """A request of the common shape, read from its bytes (``StepCodec.read_request``)."""

    request_id: str
    #: Its sequence: an int64 ``sequence_id`` > 0, no start, no end (made once per id and kept).
    flags: SequenceFlags
    #: Its inputs: read (where the model's driver decodes steps the default way), else as the
    #: native Step the checked path builds of them; seq 1 either way (the engine sets a sequence's).
    step: pb.Step | ReadStep


class NativeAnswer(NamedTuple):
    """What a step's StepResult says: its seq, whether it came from the reply cache, and its first
    StepOutput's tensors by name (None: no output, the answer of a resend no longer cached)."""

    seq: int
    duplicate: bool
    tensors: dict[str, NativeTensor] | None
    #: Whether every tensor is of the model's own shape and DataType (read by the layout).
    fixed: bool = False


def typed_contents_field(datatype: str, data: bytes) -> bytes:
    """An output's ``contents`` (InferOutputTensor field 5) holding ``data``'s elements typed.

    FP32's packed floats are the raw little-endian bytes themselves; the integer types are varints,
    encoded by protobuf (no shipped model answers integers over this protocol).
    """
    if not data:
        return b""
    dtype, field = CONTENTS[datatype]
    if datatype == "FP32":
        body = key(6, LEN) + varint(len(data)) + data  # fp32_contents, packed
    else:
        body = oip.InferTensorContents(**{field: np.frombuffer(data, dtype).tolist()}).SerializeToString()
    return length_delimited(5, body)


class StepCodec:
    """One model's requests as native Steps and its answers as ModelInferResponse bytes, with no
    message built per step but the Step itself.

    A raw request whose inputs are exactly what the model takes (in its order, with its datatype,
    shape [1, *shape] and byte count, no typed contents) becomes a Step parsed from pieces made
    once around the request's own bytes, which the driver's StepDecoder then decodes with one
    ``frombuffer``; anything else goes through ``read_inputs``, which accepts and refuses as
    before and names what is wrong. An answer is written from pieces made once (model name and
    version, each output's name, datatype and shape): the native tensors' bytes are already the
    protocol's little-endian raw contents (and FP32's typed ones), so no array is built but the
    softmax of a ``probabilities`` output.
    """

    def __init__(self, model: OipModel, version: str, reads_inputs: bool = False) -> None:
        self.model = model
        #: Whether a raw request's inputs go to the engine read (a ``ReadStep``, no Step parsed and
        #: decoded): where the model's driver decodes steps the default way (its ``step_bytes``).
        self._reads_inputs = reads_inputs
        self._header = length_delimited(1, model.name.encode()) + length_delimited(2, version.encode())
        self._outputs_by_name = {t.name: t for t in model.outputs}
        #: Per input: name, datatype, [1, *shape], byte count, its Step bytes before its data
        #: (the first also with the Step's own fields); None when a shape is open (-1) or the
        #: request's batch axis is not the chunk's (those take the checked path).
        self._raw_inputs = _raw_step_layout(model)
        #: A common request's bytes after its parameters (every input's InferInputTensor), then per
        #: input its raw_input_contents key and length, its byte count, its Step piece, its name,
        #: dtype and shape [1, *shape].
        self._request_inputs = _request_layout(model, self._raw_inputs)
        self._output_headers: dict[tuple[str, tuple[int, ...]], tuple[bytes, bytes]] = {}
        #: A request's sequence_id entry (as ``_SEQUENCE_ID_ENTRIES`` + value) → its flags.
        self._sequence_ids: dict[bytes, SequenceFlags] = {}
        #: The engine's answer to a fresh step of this model, byte for byte around its outputs'
        #: data (see ``read_answer``); None where the outputs are not its tensors alone.
        self._answer_layout = _answer_layout(model)
        #: Every output's InferOutputTensor of a raw answer, in order, when their shapes are fixed.
        self._raw_outputs = (
            b"".join(self._output_header(t, (1, *t.shape))[1] for t in model.outputs)
            if self._answer_layout is not None
            else b""
        )
        #: Per output, where the outputs are the engine's answer's tensors in its order
        #: (``raw_response``): its bytes before its data in the answer, its data size, and its
        #: raw_output_contents key and length; None otherwise.
        self._raw_pieces = (
            tuple((prefix, size, _RAW_OUTPUT + varint(size)) for _, prefix, _, _, size in self._answer_layout[2])
            if self._answer_layout is not None and [t.name for t in model.outputs] == list(model.return_tensors)
            else None
        )

    # -- requests ----------------------------------------------------------------------------

    def step(self, request: oip.ModelInferRequest) -> tuple[pb.Step, bool]:
        """The request's inputs as a native Step of one time step, and whether they came raw."""
        raw = request.raw_input_contents
        layout = self._raw_inputs
        if raw and layout is not None and len(raw) == len(layout) == len(request.inputs):
            parts: list[bytes] = []
            for tensor, data, (name, datatype, shape, size, piece) in zip(request.inputs, raw, layout, strict=True):
                if (
                    tensor.name != name
                    or tensor.datatype != datatype
                    or tensor.shape != shape
                    or len(data) != size
                    or tensor.HasField("contents")
                ):
                    break
                parts += (piece, data)
            else:
                return pb.Step.FromString(b"".join(parts)), True
        arrays, was_raw = read_inputs(request, self.model)
        return self.model.step(arrays), was_raw

    def read_request(self, data: bytes, at: int) -> RawRequest | None:
        """A ModelInferRequest's bytes from ``at`` (just past its model_name), read where they are the
        common shape, exactly as protobuf writes it: an optional ``id``, the one parameter
        ``sequence_id`` (an int64 > 0), the model's inputs as the raw path takes them (its order,
        datatype, shape [1, *shape]), their raw_input_contents, nothing else. None for anything
        else (the checked path's to read): so a field this server does not know never passes here.
        """
        layout = self._request_inputs
        if layout is None:
            return None
        inputs, contents = layout
        request_id = ""
        try:
            if data.startswith(_REQUEST_ID, at):
                size = data[at + 1]
                if size >= 0x80:
                    return None
                request_id = data[at + 2 : at + 2 + size].decode()
                at += 2 + size
            end = at + 2 + data[at + 1]
        except (IndexError, UnicodeDecodeError):  # cut short, or an id that is not UTF-8
            return None
        entry = data[at:end]
        flags = self._sequence_ids.get(entry)
        if flags is None:
            sequence_id = _sequence_id(entry)
            if sequence_id is None:
                return None
            if len(self._sequence_ids) >= MAX_CACHED_SEQUENCE_IDS:
                self._sequence_ids.clear()
            # The answer's parameters are field 4 as the request's are: its entry is these bytes.
            flags = self._sequence_ids[entry] = SequenceFlags(sequence_id, False, False, entry)
        if not data.startswith(inputs, end):
            return None
        at = end + len(inputs)
        parts: list[bytes] = []
        arrays: Arrays = {}
        for prefix, size, piece, name, dtype, shape in contents:
            if not data.startswith(prefix, at):
                return None
            at += len(prefix) + size
            if not self._reads_inputs:
                parts += (piece, data[at - size : at])
                continue
            values = read_values(data, at - size, dtype, size, shape)
            if values is None:  # not finite by the fast test: the checked path reads or refuses it
                return None
            arrays[name] = values
        if at != len(data):
            return None
        if self._reads_inputs:
            return RawRequest(request_id, flags, ReadStep(1, False, StepInputs(arrays, 1)))
        return RawRequest(request_id, flags, pb.Step.FromString(b"".join(parts)))

    def requested_outputs(self, request: oip.ModelInferRequest) -> Sequence[OipTensor]:
        """The outputs to answer with, in the request's order (every output when it names none)."""
        if not request.outputs:
            return self.model.outputs
        known = self._outputs_by_name
        chosen = []
        for wanted in request.outputs:
            spec = known.get(wanted.name)
            if spec is None:
                raise InvalidArgument(
                    f"unknown output {wanted.name!r}: model {self.model.name!r} returns {sorted(known)}"
                )
            chosen.append(spec)
        return chosen

    # -- answers -----------------------------------------------------------------------------

    def read_answer(self, answer: bytes, seq: int) -> NativeAnswer:
        """The engine's answer (StepResult bytes) to a step applied as ``seq``, read.

        The answer to a fresh step of a model whose outputs are its tensors is always the same
        bytes around the outputs' data (``service.answer_bytes``: seq, one StepOutput, each tensor's
        name, DataType and shape, then its data), and a duplicate's is that, marked: where the
        bytes are exactly that, the data is sliced out; anything else is parsed by protobuf.
        """
        fixed = self._fixed_answer(answer, varint(seq))
        if fixed is not None and self._answer_layout is not None:
            at, duplicate = fixed
            tensors = self._answer_layout[2]
            found: dict[str, NativeTensor] = {}
            for name, prefix, shape, number, data_size in tensors:
                if not answer.startswith(prefix, at):
                    break
                at += len(prefix)
                found[name] = (answer[at : at + data_size], shape, number)
                at += data_size
            else:
                return NativeAnswer(seq, duplicate, found, True)
        result = pb.StepResult.FromString(answer)
        if not result.outputs:
            return NativeAnswer(result.seq, result.duplicate, None)
        native = {t.name: (t.data, tuple(t.shape), int(t.dtype)) for t in result.outputs[0].tensors}
        return NativeAnswer(result.seq, result.duplicate, native)

    def _fixed_answer(self, answer: bytes, encoded_seq: bytes) -> tuple[int, bool] | None:
        """Where the engine's answer to the seq ``encoded_seq`` (a varint) starts and ends as the
        fixed layout's: where its first tensor starts and whether it is a duplicate (the layout's
        tensors are still to be compared)."""
        layout = self._answer_layout
        if layout is None:
            return None
        head, size, _ = layout
        at = len(_RESULT_SEQ) + len(encoded_seq) + len(head)
        duplicate = len(answer) == at + size + len(DUPLICATE_MARK) and answer.endswith(DUPLICATE_MARK)
        if (duplicate or len(answer) == at + size) and answer.startswith(_RESULT_SEQ + encoded_seq + head):
            return at, duplicate
        return None

    def raw_response(self, request_id: str, entry: bytes, answer: bytes, seq: int, framed: bool) -> bytes | None:
        """``response`` to a raw request for every output, written from the engine's answer (to
        ``seq``) where that has the fixed layout and the outputs are its tensors in its order, as a
        stream's ModelStreamInferResponse if ``framed``; None otherwise (``read_answer`` and
        ``response`` then do it). ``entry``: the answer's sequence_id entry (``SequenceFlags.entry``)."""
        pieces = self._raw_pieces
        encoded_seq = varint(seq)
        fixed = self._fixed_answer(answer, encoded_seq) if pieces is not None else None
        if fixed is None or pieces is None:
            return None
        at, duplicate = fixed
        parts = [b"", self._header]
        if request_id:
            encoded = request_id.encode()
            parts.append(_ID + varint(len(encoded)) + encoded)
        parts += (entry, _SEQ_ENTRIES[len(encoded_seq)], encoded_seq)
        if duplicate:
            parts.append(DUPLICATE_ENTRY)
        parts.append(self._raw_outputs)
        for prefix, data_size, content in pieces:
            if not answer.startswith(prefix, at):
                return None
            at += len(prefix)
            parts += (content, answer[at : at + data_size])
            at += data_size
        if framed:
            parts[0] = STREAM_RESULT + varint(sum(map(len, parts)))
        return b"".join(parts)

    def response(
        self,
        request_id: str,
        entry: bytes,
        answer: NativeAnswer,
        outputs: Sequence[OipTensor],
        raw: bool,
    ) -> bytes:
        """The ModelInferResponse of a step's answer (with its tensors): its id, the echoed
        ``sequence_id`` (``entry``: ``SequenceFlags.entry``, b"" for none), the seq and duplicate
        parameters, and ``outputs`` raw (``raw``) or typed."""
        assert answer.tensors is not None
        parts = [self._header]
        if request_id:
            encoded = request_id.encode()
            parts.append(_ID + varint(len(encoded)) + encoded)
        parts.append(entry)
        seq = varint(answer.seq)
        parts.append(_SEQ_ENTRIES[len(seq)] + seq)
        if answer.duplicate:
            parts.append(DUPLICATE_ENTRY)
        if raw and outputs is self.model.outputs and self._raw_outputs and answer.fixed:
            parts.append(self._raw_outputs)  # every output, each of the model's shape
            for spec in outputs:
                data = answer.tensors[spec.name][0]
                parts.append(_RAW_OUTPUT + varint(len(data)) + data)
            return b"".join(parts)
        raw_contents = []
        for spec in outputs:
            data, shape = self._output(spec, answer.tensors)
            header, raw_output = self._output_header(spec, shape)
            if raw:
                parts.append(raw_output)
                raw_contents.append(_RAW_OUTPUT + varint(len(data)) + data)
            else:
                parts.append(length_delimited(5, header + typed_contents_field(spec.datatype, data)))
        parts += raw_contents
        return b"".join(parts)

    def _output(self, spec: OipTensor, native: Mapping[str, NativeTensor]) -> tuple[bytes, tuple[int, ...]]:
        """An output's little-endian bytes and its shape [1, *shape]."""
        dtype, number = WIRE_TYPES[spec.datatype]
        if spec.name == PROBABILITIES and self.model.softmax_of:
            logits = native_array(native[self.model.softmax_of]).astype(np.float64)
            exp = np.exp(logits - logits.max())
            probabilities = (exp / exp.sum()).astype(dtype)
            return probabilities.tobytes(), (1, *probabilities.shape)
        data, shape, native_number = native[spec.name]
        if native_number == number:
            return data, (1, *shape)
        array = native_array(native[spec.name]).astype(dtype)  # not the manifest's dtype: as a client expects
        return array.tobytes(), (1, *array.shape)

    def _output_header(self, spec: OipTensor, shape: tuple[int, ...]) -> tuple[bytes, bytes]:
        """An InferOutputTensor's name, datatype and shape, and the whole tensor of a raw answer
        (no contents): made once per output and shape."""
        cache_key = (spec.name, shape)
        found = self._output_headers.get(cache_key)
        if found is None:
            if len(self._output_headers) >= MAX_CACHED_HEADERS:
                self._output_headers.clear()
            header = (
                length_delimited(1, spec.name.encode())
                + length_delimited(2, spec.datatype.encode())
                + (length_delimited(3, packed_varints(shape)) if shape else b"")
            )
            found = self._output_headers[cache_key] = (header, length_delimited(5, header))
        return found


def _raw_step_layout(model: OipModel) -> tuple[tuple[str, str, list[int], int, bytes], ...] | None:
    """What ``StepCodec.step`` compares a raw request with, and the Step bytes around its data.

    A Step of seq 1 (the engine sets a sequence step's) holding one Tensor per input: name,
    DataType, shape [1, *shape], data; every length in it is fixed by the model, so only the
    inputs' bytes go between the pieces.
    """
    if not model.batch_is_chunk or any(-1 in t.shape for t in model.inputs):
        return None
    checks = []
    tensors = []
    for spec in model.inputs:
        dtype, number = WIRE_TYPES[spec.datatype]
        shape = [1, *spec.shape]
        size = math.prod(shape) * dtype.itemsize
        tensor = tensor_prefix(spec.name, int(number), shape, size)
        checks.append((spec.name, spec.datatype, shape, size))
        tensors.append(key(1, LEN) + varint(len(tensor) + size) + tensor)  # TensorInput.tensors entry
    inputs_size = sum(len(piece) + size for piece, (*_, size) in zip(tensors, checks, strict=True))
    tensors[0] = key(1, VARINT) + varint(1) + key(4, LEN) + varint(inputs_size) + tensors[0]  # seq, tensors
    return tuple((*check, piece) for check, piece in zip(checks, tensors, strict=True))


#: A raw input as ``StepCodec.read_request`` reads it: its raw_input_contents key and length, its
#: byte count, its Step piece, its name, dtype and shape [1, *shape].
_RawInput = tuple[bytes, int, bytes, str, np.dtype[Any], tuple[int, ...]]


def _request_layout(
    model: OipModel, step_pieces: tuple[tuple[str, str, list[int], int, bytes], ...] | None
) -> tuple[bytes, tuple[_RawInput, ...]] | None:
    """What ``StepCodec.read_request`` compares a request's bytes with after its parameters: every
    input's InferInputTensor (written by protobuf, so what a client's protobuf writes), then per
    input its raw_input_contents key and length, byte count, and Step piece (``_raw_step_layout``).
    None where the model's raw requests take the checked path."""
    if step_pieces is None:
        return None
    inputs = oip.ModelInferRequest(
        inputs=[oip.ModelInferRequest.InferInputTensor(name=n, datatype=d, shape=s) for n, d, s, *_ in step_pieces]
    ).SerializeToString()
    contents = tuple(
        (_RAW_INPUT + varint(size), size, piece, name, WIRE_TYPES[datatype][0], tuple(shape))
        for name, datatype, shape, size, piece in step_pieces
    )
    return inputs, contents


def _sequence_id(entry: bytes) -> int | None:
    """The id of a ``sequence_id`` parameters entry holding an int64 > 0 exactly as protobuf writes
    it (``_SEQUENCE_ID_ENTRIES``); None for any other bytes."""
    width = len(entry) - len(_SEQUENCE_ID_ENTRIES[1])  # every prefix is as long: the value's length differs
    if not 1 <= width < len(_SEQUENCE_ID_ENTRIES) or not entry.startswith(_SEQUENCE_ID_ENTRIES[width]):
        return None
    value = 0
    for shift, byte in enumerate(entry[-width:]):
        value |= (byte & 0x7F) << (7 * shift)
    if value == 0 or varint(value) != entry[-width:]:  # no id, or a varint protobuf would not write
        return None
    return value


def native_array(tensor: NativeTensor) -> np.ndarray:
    """A native output as an array."""
    data, shape, number = tensor
    return np.frombuffer(data, NATIVE_DTYPES[number]).reshape(shape)


def _answer_layout(model: OipModel) -> tuple[bytes, int, _AnswerTensors] | None:
    """What ``StepCodec.read_answer`` compares an answer with: the StepResult's bytes between its
    seq and the first tensor, the size of all that follows, and per output (the session's
    return_tensors, in order): name, its bytes before its data, per-step shape, DataType, data size.

    Made by protobuf from a Tensor of each output's shape, so it is what a StepResult of these
    tensors serializes to. None where the protocol's outputs are not the native ones as they are
    (a softmax is added) or a shape is open.
    """
    by_name = {t.name: t for t in model.outputs}
    if model.softmax_of or set(by_name) != set(model.return_tensors) or any(-1 in t.shape for t in model.outputs):
        return None
    tensors = []
    body = b""
    for name in model.return_tensors:
        spec = by_name[name]
        dtype, number = WIRE_TYPES[spec.datatype]
        data_size = math.prod(spec.shape) * dtype.itemsize
        tensor = pb.Tensor(name=name, dtype=number, shape=spec.shape, data=bytes(data_size))
        entry = pb.StepOutput(tensors=[tensor]).SerializeToString()
        tensors.append((name, entry[: len(entry) - data_size], spec.shape, int(number), data_size))
        body += entry
    head = key(2, LEN) + varint(len(body))  # StepResult.outputs: one StepOutput
    return head, len(body), tuple(tensors)
