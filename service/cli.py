"""The ``statestream`` command: serve, client, scenes, train, export, eval, bench, loadtest (COMMANDS).

Serving needs only onnxruntime, numpy, grpcio and protobuf; the training commands import
``training`` (and so torch) only when they run. Every command runs under ``service.command.run``:
a user error is one ``statestream: error: …`` line and a documented exit code (docs/api.md);
``--debug``, anywhere on the command line, adds the traceback.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import service.grpc_environment  # noqa: F401  (first: it must run before grpc is imported)
from service import command, process
from service import settings as settings_module
from service.command import EXIT_USAGE, CommandError
from service.listen_errors import check_can_listen


def _serve(argv: Sequence[str]) -> int:
    from service.errors import Unavailable
    from service.logs import configure
    from service.security import BindError, SecurityConfigError
    from service.server import NoModelsServed, serve

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
    if settings.provider == "cuda":
        from service.providers import missing_cuda

        missing = missing_cuda()
        if missing:
            raise CommandError(
                f"--provider cuda: {missing}", EXIT_USAGE, hint="install onnxruntime-gpu, or --provider auto"
            )
    if settings.event_loop == "uvloop" and not process.uvloop_installed():
        raise CommandError(
            "--event-loop uvloop: uvloop is not installed", EXIT_USAGE, hint="pip install uvloop, or --event-loop auto"
        )
    configure(settings.log_level, settings.log_json, worker=settings.worker_index)
    # Before minutes of model loading, not after: the host and the gRPC port, and every /metrics
    # port (worker i serves on --metrics-port + i). Workers share the gRPC port (SO_REUSEPORT):
    # the supervisor reserves it (service.workers), so for them only the host is checked here.
    shared_port = settings.reuse_port or settings.worker_count > 1
    check_can_listen(settings.host, 0 if shared_port else settings.port)
    for index in range(settings.worker_count if settings.metrics_port else 0):
        check_can_listen(settings.host, settings.metrics_port + index, "--metrics-port")
    if settings.worker_count > 1:
        from service.workers import run_workers

        return run_workers(settings, argv)
    try:
        process.run(serve(settings), settings.event_loop)
    except (SecurityConfigError, NoModelsServed) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except Unavailable as exc:  # the session store
        raise CommandError(exc.message, EXIT_USAGE, hint="is Redis running at --session-store?") from exc
    except BindError as exc:  # taken while the models loaded: say why where the check can tell
        port = exc.port or settings.port
        check_can_listen(settings.host, port, exc.flag)
        raise CommandError(
            f"cannot listen on {settings_module.address(settings.host, port)} ({exc.flag})", EXIT_USAGE
        ) from exc
    return 0


def _client(argv: Sequence[str]) -> int:
    from service.client.commands import main

    return main(argv)


def _scenes(argv: Sequence[str]) -> int:
    from service.scenes_command import main

    return main(argv)


def _import(argv: Sequence[str]) -> int:
    from service.importer.command import main

    return main(argv)


def _check(argv: Sequence[str]) -> int:
    from service.check_command import main

    return main(argv)


def _training(name: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        try:
            from training import cli as training_cli
        except ImportError as exc:
            raise CommandError(
                f"statestream {name} needs the training extra ({exc})", EXIT_USAGE, hint="pip install -e '.[cpu,train]'"
            ) from exc
        return int(training_cli.COMMANDS[name](list(argv)))

    return run


def _bench(argv: Sequence[str]) -> int:
    from loadtest.bench import main  # without the package, service.command says which extra to install

    return int(main(list(argv)))


def _loadtest(argv: Sequence[str]) -> int:
    from loadtest.slo import main  # without the package, service.command says which extra to install

    return int(main(list(argv)))


@dataclass(frozen=True)
class Command:
    """One ``statestream NAME``: its line in the help, what runs it, and the extra it needs beyond serving."""

    name: str
    summary: str
    run: Callable[[Sequence[str]], int]
    extra: str = ""


def _client_commands() -> str:
    from service.client.registry import commands

    return ", ".join(c.name for c in commands())


COMMANDS = (
    Command("serve", "run the server on a folder of model folders", _serve),
    Command("client", "talk to a server:", _client),
    Command("scenes", "write sample captioner scenes as PNGs, images to caption", _scenes),
    Command("import", "wrap a stateful ONNX graph from elsewhere into a model folder (docs/your-model.md)", _import),
    Command("check", "run the loader's checks on a model folder without serving it", _check),
    Command("train", "train a model from its recipe", _training("train"), extra="train"),
    Command("export", "export a trained checkpoint to a model folder", _training("export"), extra="train"),
    Command("eval", "score a model folder from its ONNX graph", _training("eval"), extra="train"),
    Command("bench", "the side-by-side serving benchmark", _bench, extra="dev"),
    Command(
        "loadtest", "Locust users against a server it starts, checked against latency SLOs", _loadtest, extra="dev"
    ),
)


def usage() -> str:
    """``statestream --help``: every command of COMMANDS, and the client's own."""
    lines = ["usage: statestream [--debug] COMMAND [ARGS]", "", "commands:"]
    for entry in COMMANDS:
        summary = f"{entry.summary} {_client_commands()}" if entry.name == "client" else entry.summary
        text = summary + (f" (needs the '{entry.extra}' extra)" if entry.extra else "")
        lines += textwrap.wrap(text, width=100, initial_indent=f"  {entry.name:<10}", subsequent_indent=" " * 12)
    return "\n".join(
        [
            *lines,
            "",
            "Run 'statestream COMMAND --help' for a command's own options.",
            "",
            "options:",
            "  --debug   on an error, print its traceback as well as the one-line message",
            "  --version print the installed version and exit",
            "",
            "exit codes: 0 success, 1 internal error, 2 usage, 3 refused by the server, 4 server unreachable",
            "(docs/api.md#exit-codes)",
        ]
    )


def _dispatch(name: str, rest: list[str]) -> int:
    entry = next((c for c in COMMANDS if c.name == name), None)
    if entry is None:
        raise CommandError(f"unknown command {name!r}", EXIT_USAGE, hint="see 'statestream --help'")
    return entry.run(rest)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = command.debug_requested(args)
    while args and args[0] == command.DEBUG_FLAG:  # a global flag before the command name
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"statestream {version('statestream')}")
        return 0
    return command.run(lambda: _dispatch(args[0], args[1:]), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
