"""The raw-tensor driver: any step model, tensors in and tensors out, nothing decoded.

Serves models whose task is ``sequence_model`` (what ``statestream import`` and the PyTorch
module export write by default): a Step carries one tensor per model input (``[K, *shape]``)
and its answer holds every output, or those ``SessionOptions.return_tensors`` narrows it to.
The answer is written as bytes directly, the same bytes the default message would serialize to;
its size is bounded as every kind's (``service.drivers.bounds``) for the outputs it returns.
"""

from __future__ import annotations

from service.api import statestream_pb2 as pb
from service.contract import Arrays
from service.drivers.base import Driver
from service.drivers.steps import StepInputs
from service.session_options import ResolvedOptions
from service.tasks import register


@register("sequence_model")
class TensorDriver(Driver):
    sends = "tensors: one per model input, [K, *shape]"
    returns = "per step, every output (or those named in SessionOptions.return_tensors)"

    def resolve_options(self, options: pb.SessionOptions) -> ResolvedOptions:
        """The default's checks; no ``return_tensors`` means every output, in the manifest's order."""
        resolved = super().resolve_options(options)
        if not resolved.return_tensors:
            resolved.return_tensors = tuple(t.name for t in self.manifest.outputs)
        return resolved

    def encode_output(self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int) -> bytes | None:
        """The outputs asked for, as bytes (None where they are not what the manifest says)."""
        return self.output_tensors.encode(options.return_tensors, outputs, t)
