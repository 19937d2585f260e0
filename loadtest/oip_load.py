"""The ``oip`` bench variant's client: a Triton client's ModelStreamInfer sequence per stream.

Each stream is one OIP sequence on the statestream server (its first request sets
``sequence_start``), stepped in a closed loop like the native ``statestream`` rows. The requests
are ``ModelInferRequest``s built once with tritonclient's generated protobuf classes
(``tritonclient.grpc.service_pb2``, the message a Triton client sends, tensors in
``raw_input_contents``) and sent as their bytes, as the native rows send pre-encoded bytes, so
both rows cost the client the same and compare the servers' protocols alone.
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2

#: The streaming method of the published service.
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: The first byte of a ModelStreamInferResponse whose error_message (field 1) is set; a
#: success starts with infer_response (field 2).
ERROR_TAG = 0x0A
#: OIP datatype of each manifest dtype.
DATATYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "int16": "INT16"}


def infer_request(
    model: str, sequence_id: int, arrays: dict[str, np.ndarray], *, start: bool = False, end: bool = False
) -> bytes:
    """One step of sequence ``sequence_id`` ([1, *shape] per input), serialized; ``start``/``end``
    set its sequence flags."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.parameters["sequence_id"].int64_param = sequence_id
    if start:
        request.parameters["sequence_start"].bool_param = True
    if end:
        request.parameters["sequence_end"].bool_param = True
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=DATATYPES[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
    return bytes(request.SerializeToString())


def is_error(response: bytes) -> int:
    """1 when a ModelStreamInferResponse carries an error_message, else 0."""
    return int(bool(response) and response[0] == ERROR_TAG)
