"""The raw-tensor driver: any step model, tensors in and tensors out, nothing decoded.

Serves models whose task is ``sequence_model``: a Step carries one tensor per model input
(``[K, *shape]``) and its answer holds the outputs the session asked for in
``SessionOptions.return_tensors``. Every behaviour is the ``Driver`` default; this file names
the task so that such a model is served on purpose, not by accident.
"""

from __future__ import annotations

from service.drivers.base import Driver
from service.tasks import register


@register("sequence_model")
class TensorDriver(Driver):
    sends = "tensors: one per model input, [K, *shape]"
    returns = "per step, the outputs named in SessionOptions.return_tensors"
