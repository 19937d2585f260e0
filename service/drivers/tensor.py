"""The raw-tensor driver: any step model, tensors in and tensors out, nothing decoded.

Serves models whose task is ``sequence_model``: a Step carries one tensor per model input
(``[K, *shape]``) and its answer holds the outputs the session asked for in
``SessionOptions.return_tensors``. Every behaviour is the ``Driver`` default but one: the
answer is written as bytes directly, the same bytes the default message would serialize to.
"""

from __future__ import annotations

from service.contract import Arrays
from service.drivers.base import Driver
from service.drivers.steps import StepInputs
from service.session_options import ResolvedOptions
from service.tasks import register


@register("sequence_model")
class TensorDriver(Driver):
    sends = "tensors: one per model input, [K, *shape]"
    returns = "per step, the outputs named in SessionOptions.return_tensors"

    def encode_output(self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int) -> bytes | None:
        """The outputs asked for, as bytes (None where they are not what the manifest says)."""
        return self.output_tensors.encode(options.return_tensors, outputs, t)
