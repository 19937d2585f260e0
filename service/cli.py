"""The ``statestream`` command: serve, client, train, export, eval, bench.

Serving needs only onnxruntime, numpy, grpcio and protobuf; the training commands import
``training`` (and so torch) only when they run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from service import settings as settings_module

USAGE = """usage: statestream COMMAND [ARGS]

commands:
  serve      run the server on a models folder            (statestream serve --help)
  client     talk to a server: models, predict, generate  (statestream client --help)
  train      train a model from its recipe                (needs the 'train' extra)
  export     export a trained checkpoint to a model folder (needs the 'train' extra)
  eval       score a model folder from its ONNX graph
  bench      the side-by-side serving benchmark
  loadtest   Locust users against a server it starts, checked against latency SLOs
"""


def _serve(argv: Sequence[str]) -> int:
    from service.logs import configure
    from service.server import serve

    parser = argparse.ArgumentParser(prog="statestream serve", description="Serve the models of a folder over gRPC.")
    settings_module.add_arguments(parser)
    settings = settings_module.from_namespace(parser.parse_args(list(argv)))
    configure(settings.log_level, settings.log_json)
    asyncio.run(serve(settings))
    return 0


def _client(argv: Sequence[str]) -> int:
    from service.client.commands import main

    return main(argv)


def _training(command: str, argv: Sequence[str]) -> int:
    try:
        from training import cli as training_cli
    except ImportError as exc:
        print(f"statestream {command} needs the training extra: pip install -e '.[train]' ({exc})", file=sys.stderr)
        return 2
    handlers = {
        "train": training_cli.train_command,
        "export": training_cli.export_command,
        "eval": training_cli.eval_command,
    }
    return int(handlers[command](list(argv)))


def _bench(argv: Sequence[str]) -> int:
    from loadtest.bench import main

    return int(main(list(argv)))


def _loadtest(argv: Sequence[str]) -> int:
    from loadtest.slo import main

    return int(main(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return _serve(rest)
    if command == "client":
        return _client(rest)
    if command in ("train", "export", "eval"):
        return _training(command, rest)
    if command == "bench":
        return _bench(rest)
    if command == "loadtest":
        return _loadtest(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
