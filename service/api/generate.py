"""Regenerates the committed protobuf / gRPC modules from protos/*.proto.

Run from the repository root: ``python -m service.api.generate``. Each proto is mapped to the
virtual path ``service/api/<name>.proto`` so the generated modules import each other as
``service.api.*`` without any post-editing, with one exception, for grpc_service.proto (the
Open Inference Protocol): its messages keep their published names (``inference.*``), which
``tritonclient`` registers in protobuf's default descriptor pool too, and a pool refuses a
second definition of a name. So its module builds its classes in a pool of its own (one word
of the generated code changes, below), and a client and this server can share a process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
#: The Open Inference Protocol's module, and the one change made to it (see the docstring).
OIP_MODULE = ROOT / "service" / "api" / "grpc_service_pb2.py"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def main() -> int:
    common = [f"--proto_path=service/api={ROOT / 'protos'}", f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
    status = protoc.main(["grpc_tools.protoc", *common, f"--grpc_python_out={ROOT}", "service/api/statestream.proto"])
    if status:
        return int(status)
    status = protoc.main(["grpc_tools.protoc", *common, "service/api/grpc_service.proto"])
    if status:
        return int(status)
    code = OIP_MODULE.read_text()
    if code.count(DEFAULT_POOL) != 1:
        print(f"{OIP_MODULE}: expected one {DEFAULT_POOL!r}; protoc's output changed", file=sys.stderr)
        return 1
    OIP_MODULE.write_text(code.replace(DEFAULT_POOL, OWN_POOL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
