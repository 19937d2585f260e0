"""The sequence-classifier driver: class probabilities per frame (a stream) or per whole sequence.

The manifest's ``decoding.mode`` says which (``training/tasks/sequence_classifier/`` makes both):

* ``stream``: a one-step graph, ``frame [F] -> logits [C]``, its recurrent state kept by the
  server. A Step carries one frame (tensor ``frame [1, F]``) and is answered at once with the
  running answer: label = the likeliest class's name, tensor ``probabilities [C]``. A client has
  an answer before the sequence ends; ``Reset`` starts the next one.
* ``whole``: a stateless graph of ``frames [max_frames, F]`` (zero-padded) and ``length []``. A
  Step carries one whole sequence, ``frames [T, F]`` with ``1 <= T <= max_frames``; the driver
  pads it, so every call has one shape and sequences of any length share batches, and the graph's
  masks keep the padding out of a sequence's answer (docs/zoo.md, "Whole utterances").

Bad input (a wrong feature count or dtype, NaN or Inf, two frames in a streaming Step, a sequence
over ``max_frames``) is InvalidArgument for that Step, found before anything is queued.
"""

from __future__ import annotations

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.steps import StepInputs, check_chunk, named_tensors
from service.errors import InvalidArgument
from service.session_options import ResolvedOptions
from service.tasks import register
from service.tensors import to_proto

TASK = "sequence_classifier"
LOGITS = "logits"
PROBABILITIES = "probabilities"
#: The whole-sequence graph's inputs, and the tensor a Step carries for it.
FRAMES, LENGTH = "frames", "length"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float32 (computed in float64 for stability)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probabilities: np.ndarray = (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probabilities


@register(TASK)
class ClassifierDriver(Driver):
    sends = (
        "stream models: tensor frame [1, F], one frame per Step; "
        "whole-sequence models: tensor frames [T, F], one whole sequence per Step (T <= max_frames)"
    )
    returns = "per Step, label = the likeliest class and tensor probabilities [C] (the running answer of a stream)"

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.classes = [str(c) for c in manifest.decoding["classes"]]
        self.whole = manifest.decoding["mode"] == "whole"
        self.max_frames = int(manifest.decoding.get("max_frames", 0))
        self.features = manifest.inputs[0].shape[-1]

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        mode, classes = manifest.decoding.get("mode"), manifest.decoding.get("classes")
        if mode not in ("stream", "whole"):
            raise ContractError("a sequence classifier's manifest needs decoding.mode: 'stream' or 'whole'")
        outputs = {t.name: t for t in manifest.outputs}
        if set(outputs) != {LOGITS} or len(outputs[LOGITS].shape) != 1:
            raise ContractError(f"a sequence classifier has one output, {LOGITS} [classes]")
        if not isinstance(classes, list) or len(classes) != outputs[LOGITS].shape[0]:
            raise ContractError(f"decoding.classes must name the {outputs[LOGITS].shape[0]} classes")
        inputs = {t.name: t for t in manifest.inputs}
        if mode == "stream":
            if len(inputs) != 1 or len(manifest.inputs[0].shape) != 1 or manifest.inputs[0].dtype != "float32":
                raise ContractError("a streaming classifier takes one input, a float32 frame [F]")
            if manifest.decoding.get("steps_per_call") != 1:
                raise ContractError("a streaming classifier's graph takes one frame per call (steps_per_call 1)")
            return
        max_frames = manifest.decoding.get("max_frames")
        frames = inputs.get(FRAMES)
        if (
            set(inputs) != {FRAMES, LENGTH}
            or frames is None
            or len(frames.shape) != 2
            or frames.shape[0] != max_frames
            or inputs[LENGTH].shape != ()
            or inputs[LENGTH].dtype != "int64"
        ):
            raise ContractError("a whole-sequence classifier takes frames [max_frames, F] and length [] (int64)")
        if manifest.state:
            raise ContractError("a whole-sequence classifier keeps no state")

    # -- steps ---------------------------------------------------------------------------

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        kind = step.WhichOneof("input")
        if kind != "tensors":
            name = FRAMES if self.whole else self.manifest.inputs[0].name
            raise InvalidArgument(f"model {self.manifest.name!r} takes tensor {name!r}, not {kind or 'nothing'}")
        if not self.whole:
            decoded = self.step_decoder.decode(step.tensors, max_chunk)
            if decoded.steps != 1:
                raise InvalidArgument(f"model {self.manifest.name!r} takes one frame per Step, got {decoded.steps}")
            return decoded
        (frames,) = named_tensors(step.tensors.tensors, {FRAMES}, "input").values()
        if frames.dtype != np.float32 or frames.ndim != 2 or frames.shape[1] != self.features:
            raise InvalidArgument(
                f"tensor {FRAMES!r} is {frames.dtype.name} {list(frames.shape)}; the model takes float32 [T, {self.features}]"
            )
        check_chunk(frames.shape[0], max_chunk)
        if frames.shape[0] > self.max_frames:
            raise InvalidArgument(
                f"the sequence has {frames.shape[0]} frames; model {self.manifest.name!r} takes at most {self.max_frames}"
            )
        if not np.isfinite(frames).all():
            raise InvalidArgument(f"tensor {FRAMES!r} holds NaN or Inf")
        padded = np.zeros((1, self.max_frames, self.features), np.float32)
        padded[0, : frames.shape[0]] = frames
        return StepInputs({FRAMES: padded, LENGTH: np.array([frames.shape[0]], np.int64)}, 1)

    def output_bytes_bound(self, options: ResolvedOptions) -> int:
        longest = max(len(c.encode()) for c in self.classes)
        own = bounds.tensor(PROBABILITIES, (len(self.classes),), np.float32)
        return bounds.step_output(self.manifest, options.return_tensors, label_bytes=longest) + own

    def build_output(
        self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int, out: pb.StepOutput
    ) -> None:
        probabilities = softmax(outputs[LOGITS][t])
        out.label = self.classes[int(np.argmax(probabilities))]
        out.tensors.append(to_proto(PROBABILITIES, probabilities))
        super().build_output(options, decoded, outputs, t, out)
