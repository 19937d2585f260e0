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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.errors import InvalidArgument
from service.tensors import MAX_DIMS, add_proto, from_proto

#: The protocol's datatype of each manifest dtype (every dtype a manifest may name).
DATATYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "int16": "INT16"}
#: Little-endian numpy dtype and the InferTensorContents field of each datatype this server takes.
CONTENTS: dict[str, tuple[np.dtype[Any], str]] = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
}
#: ModelConfig's DataType of each datatype.
CONFIG_TYPES = {"FP32": oip.TYPE_FP32, "INT64": oip.TYPE_INT64, "INT32": oip.TYPE_INT32, "INT16": oip.TYPE_INT16}
#: The outputs a kind adds to its manifest's, computed from a native output.
PROBABILITIES = "probabilities"


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

    def answer(self, output: pb.StepOutput) -> dict[str, np.ndarray]:
        """Every protocol output of a native StepOutput, [1, *shape] each."""
        native = {tensor.name: from_proto(tensor) for tensor in output.tensors}
        if self.softmax_of:
            logits = native[self.softmax_of].astype(np.float64)
            exp = np.exp(logits - logits.max())
            native[PROBABILITIES] = (exp / exp.sum()).astype(np.float32)
        return {t.name: native[t.name][np.newaxis] for t in self.outputs}


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


def requested_outputs(request: oip.ModelInferRequest, model: OipModel) -> list[OipTensor]:
    """The outputs to answer with, in the request's order (every output when it names none)."""
    if not request.outputs:
        return list(model.outputs)
    known = {t.name: t for t in model.outputs}
    chosen = []
    for wanted in request.outputs:
        spec = known.get(wanted.name)
        if spec is None:
            raise InvalidArgument(f"unknown output {wanted.name!r}: model {model.name!r} returns {sorted(known)}")
        chosen.append(spec)
    return chosen


def fill_outputs(
    response: oip.ModelInferResponse, arrays: dict[str, np.ndarray], outputs: list[OipTensor], raw: bool
) -> None:
    """Writes the outputs into the answer: raw bytes when the request sent raw, typed contents otherwise."""
    for spec in outputs:
        array = arrays[spec.name]
        dtype, field = CONTENTS[spec.datatype]
        out = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.astype(dtype, copy=False).tobytes())
        else:
            getattr(out.contents, field).extend(array.reshape(-1).tolist())


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
