"""Regenerates the committed protobuf / gRPC modules from protos/statestream.proto.

Run from the repository root: ``python -m service.api.generate``. The proto is mapped to the
virtual path ``service/api/statestream.proto`` so the generated modules import each other as
``service.api.*`` without any post-editing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    args = [
        "grpc_tools.protoc",
        f"--proto_path=service/api={ROOT / 'protos'}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        "service/api/statestream.proto",
    ]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
