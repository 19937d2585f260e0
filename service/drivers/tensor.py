"""The raw-tensor driver: any step model, tensors in and tensors out, nothing decoded.

Serves models whose task is ``sequence_model``: a Step carries one tensor per model input
(``[K, *shape]``) and its answer holds the outputs the session asked for in
``SessionOptions.return_tensors``. Every behaviour is the ``Driver`` default but one: the
answer is written as bytes directly, the same bytes the default message would serialize to.
"""

from __future__ import annotations

from service.answer_bytes import OutputTensors, step_result
from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.drivers.base import Driver
from service.drivers.steps import Arrays, StepInputs
from service.sessions import ResolvedOptions
from service.tasks import register


@register("sequence_model")
class TensorDriver(Driver):
    sends = "tensors: one per model input, [K, *shape]"
    returns = "per step, the outputs named in SessionOptions.return_tensors"

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self._tensors = OutputTensors(manifest.outputs)

    def encode_result(self, options: ResolvedOptions, step: pb.Step, decoded: StepInputs, outputs: Arrays) -> bytes:
        """``build_result``'s answer, written as bytes directly (``service.answer_bytes``)."""
        first = decoded.steps - 1 if step.last_only else 0
        encoded = []
        for t in range(first, decoded.steps):
            tensors = self._tensors.encode(options.return_tensors, outputs, t)
            if tensors is None:  # not what the manifest says: the message encodes whatever it is
                return super().encode_result(options, step, decoded, outputs)
            encoded.append(tensors)
        return step_result(step.seq, encoded)
