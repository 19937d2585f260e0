"""The ``statestream`` command: serve, client, train, export, eval, bench, loadtest.

Serving needs only onnxruntime, numpy, grpcio and protobuf; the training commands import
``training`` (and so torch) only when they run. Every command runs under ``service.command.run``:
a user error is one ``statestream: error: …`` line and a documented exit code (docs/api.md);
``--debug``, anywhere on the command line, adds the traceback.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Sequence

from service import command, process
from service import settings as settings_module
from service.command import EXIT_USAGE, CommandError

USAGE = """usage: statestream [--debug] COMMAND [ARGS]

commands:
  serve      run the server on a models folder            (statestream serve --help)
  client     talk to a server: models, predict, generate  (statestream client --help)
  train      train a model from its recipe                (needs the 'train' extra)
  export     export a trained checkpoint to a model folder (needs the 'train' extra)
  eval       score a model folder from its ONNX graph      (needs the 'train' extra)
  scenes     write sample captioner scenes as PNGs         (needs the 'train' extra)
  bench      the side-by-side serving benchmark           (needs the 'dev' extra)
  loadtest   Locust users against a server it starts, checked against latency SLOs (needs 'dev')

options:
  --debug    on an error, print its traceback as well as the one-line message

exit codes: 0 success, 1 internal error, 2 usage, 3 refused by the server, 4 server unreachable
(docs/api.md#exit-codes)
"""


def _serve(argv: Sequence[str]) -> int:
    from service.errors import Unavailable
    from service.logs import configure
    from service.security import BindError, SecurityConfigError
    from service.server import serve

    parser = command.Parser(prog="statestream serve", description="Serve the models of a folder over gRPC.")
    settings_module.add_arguments(parser)
    try:
        settings = settings_module.from_namespace(parser.parse_args(list(argv)))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE, hint="see 'statestream serve --help'") from exc
    if not settings.models_dir.is_dir():
        raise CommandError(
            f"--models-dir {settings.models_dir}: no such folder",
            EXIT_USAGE,
            hint="give a folder of model folders, e.g. --models-dir models (the shipped one)",
        )
    if settings.event_loop == "uvloop" and not process.uvloop_installed():
        raise CommandError(
            "--event-loop uvloop: uvloop is not installed", EXIT_USAGE, hint="pip install uvloop, or --event-loop auto"
        )
    configure(settings.log_level, settings.log_json)
    if settings.worker_count > 1:
        from service.workers import run_workers

        return run_workers(settings, argv)
    if not settings.reuse_port:
        _check_port_free(settings.host, settings.port)  # before minutes of model loading, not after
    try:
        process.run(serve(settings), settings.event_loop)
    except SecurityConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except Unavailable as exc:  # the session store
        raise CommandError(exc.message, EXIT_USAGE, hint="is Redis running at --session-store?") from exc
    except BindError as exc:
        raise _port_busy(settings.host, settings.port) from exc
    return 0


def _port_busy(host: str, port: int) -> CommandError:
    return CommandError(
        f"port {port} on {host} is in use",
        EXIT_USAGE,
        hint=f"is another server running there ('statestream client models --target {host}:{port}')? "
        "Pick another with --port, or --port 0 for a free one",
    )


def _check_port_free(host: str, port: int) -> None:
    """Raises the 'port in use' CommandError if ``host:port`` cannot be bound now (grpc binds it later)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # an unresolvable host is grpc's to report
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _port_busy(host, port) from exc


def _client(argv: Sequence[str]) -> int:
    from service.client.commands import main

    return main(argv)


def _training(name: str, argv: Sequence[str]) -> int:
    try:
        from training import cli as training_cli
    except ImportError as exc:
        raise CommandError(
            f"statestream {name} needs the training extra ({exc})", EXIT_USAGE, hint="pip install -e '.[cpu,train]'"
        ) from exc
    return int(training_cli.COMMANDS[name](list(argv)))


def _bench(argv: Sequence[str]) -> int:
    from loadtest.bench import main

    return int(main(list(argv)))


def _loadtest(argv: Sequence[str]) -> int:
    from loadtest.slo import main

    return int(main(list(argv)))


def _dispatch(name: str, rest: list[str]) -> int:
    if name == "serve":
        return _serve(rest)
    if name == "client":
        return _client(rest)
    if name in ("train", "export", "eval", "scenes"):
        return _training(name, rest)
    if name == "bench":
        return _bench(rest)
    if name == "loadtest":
        return _loadtest(rest)
    raise CommandError(f"unknown command {name!r}", EXIT_USAGE, hint="see 'statestream --help'")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = command.debug_requested(args)
    while args and args[0] == command.DEBUG_FLAG:  # a global flag before the command name
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_USAGE
    return command.run(lambda: _dispatch(args[0], args[1:]), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
