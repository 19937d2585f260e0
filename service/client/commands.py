"""``statestream client …``: list models, stream a text one character per step, generate.

Connection flags are shared by every command: ``--target``, TLS (``--tls``, ``--tls-ca``,
``--tls-server-name``), a client certificate for mutual TLS (``--tls-cert``, ``--tls-key``) and a
bearer token (``--token`` or ``--token-file``). Each has an environment variable (below), read here
and nowhere else; a flag wins over its variable. The TLS variables carry ``CLIENT_`` so they never
collide with the server's ``STATESTREAM_TLS_CERT``/``STATESTREAM_TLS_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from service.api import statestream_pb2 as pb
from service.client import caption, complete, forecast, health, identify, translate
from service.client.credentials import ClientSecurityError, connection, read_token_file
from service.client.sdk import DEFAULT_TARGET, Client, SessionLost, StepFailed
from service.command import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Parser,
    call_error,
    error_line,
    non_negative_float,
    non_negative_int,
    positive_int,
    rpc_error,
)

#: flag destination → the environment variable that fills it when the flag is not given.
ENVIRONMENT = {
    "target": "STATESTREAM_TARGET",
    "tls_ca": "STATESTREAM_CLIENT_TLS_CA",
    "tls_cert": "STATESTREAM_CLIENT_TLS_CERT",
    "tls_key": "STATESTREAM_CLIENT_TLS_KEY",
    "tls_server_name": "STATESTREAM_CLIENT_TLS_SERVER_NAME",
    "token": "STATESTREAM_TOKEN",
    "token_file": "STATESTREAM_TOKEN_FILE",
}


def _models(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models()
    rows = [
        {
            "name": m.name,
            "version": m.version,
            "task": m.task,
            "state_bytes": m.state_bytes,
            "scores": dict(m.scores),
            "active_sessions": m.active_sessions,
        }
        for m in models
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        # Columns as wide as their longest entry, so a long model or task name keeps the table aligned.
        name_width = max((len(m.name) for m in models), default=0)
        task_width = max((len(m.task) for m in models), default=0)
        for row in rows:
            print(
                f"{row['name']:<{name_width}} v{row['version']:<4} {row['task']:<{task_width}} "
                f"{row['state_bytes']:>8} state bytes"
            )
    return 0


def _within_text(message: str, offset: int, flag: str) -> str:
    """The server's message with a character's position counted in the whole text the user gave in ``flag``.

    predict sends its text one character per message, so the server can only say "position 0"
    of that message; the user typed the whole text and wants to find the character in it.
    """
    return re.sub(r"at position (\d+)", lambda m: f"at position {offset + int(m.group(1))} of {flag}", message)


def _predict(client: Client, args: argparse.Namespace) -> int:
    if not args.text:
        raise CommandError("--text is empty: give at least one character to stream", EXIT_USAGE)
    session = client.open(args.model, top_k=args.top_k)
    refused = 0
    try:
        for position, char in enumerate(args.text):
            try:
                result = session.step(text=char)
            except StepFailed as exc:
                refused += 1
                message = _within_text(exc.error.message, position, "--text")
                if args.json:
                    row = {"error": exc.error.code_name, "message": message, "position": position, "input": char}
                    print(json.dumps(row), flush=True)
                else:
                    print(error_line(message, code=exc.error.code_name), file=sys.stderr, flush=True)
                continue
            out = result.outputs[0]
            top = [[t.token, round(t.prob, 4)] for t in out.top]
            if args.json:
                print(json.dumps({"seq": result.seq, "input": out.input, "top": top}), flush=True)
            else:
                shown = "  ".join(f"{t!r}:{p:.2f}" for t, p in top)
                print(f"{result.seq:>4} {out.input!r:>6} -> {shown}", flush=True)
    finally:
        session.close()
    return EXIT_REFUSED if refused else 0  # each refused character has had its own line


def _generate(client: Client, args: argparse.Namespace) -> int:
    session = client.open(args.model)
    events = session.generate(args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    try:
        for event in events:
            if isinstance(event, pb.Token):
                if args.json:
                    print(
                        json.dumps({"index": event.index, "token": event.text, "prob": round(event.prob, 4)}),
                        flush=True,
                    )
                else:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            elif args.json:
                print(json.dumps({"done": True, "tokens": event.tokens, "seed": event.seed, "text": event.text}))
            else:
                sys.stdout.write("\n")
    finally:
        events.close()  # now, not at garbage collection: a reader that went away leaves it mid-answer
        session.close()
    return 0


def add_connection_arguments(parser: argparse.ArgumentParser, *, repeated: bool) -> None:
    """The options every client command takes: where the server is, TLS, a token, and --json.

    They are accepted before the subcommand (``client --target X models``) and after it
    (``client models --target X``). The copy on each subcommand (``repeated``) has no default of
    its own, so it does not overwrite a value given before the subcommand.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if repeated else value

    parser.add_argument(
        "--target",
        default=default(None),
        metavar="HOST:PORT",
        help=f"the server's address (default: {DEFAULT_TARGET}, or env STATESTREAM_TARGET)",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON lines, not text")
    security = parser.add_argument_group("security (off unless given)")
    security.add_argument(
        "--tls", action="store_true", default=default(False), help="connect with TLS, trusting the system's root CAs"
    )
    security.add_argument(
        "--tls-ca",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="CA bundle that signed the server's certificate; implies --tls (env STATESTREAM_CLIENT_TLS_CA)",
    )
    security.add_argument(
        "--tls-cert",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="this client's certificate, for a server that requires mutual TLS (env STATESTREAM_CLIENT_TLS_CERT)",
    )
    security.add_argument(
        "--tls-key",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="this client's private key, with --tls-cert (env STATESTREAM_CLIENT_TLS_KEY)",
    )
    security.add_argument(
        "--tls-server-name",
        default=default(None),
        metavar="NAME",
        help="check the server's certificate against this name instead of the target's host "
        "(env STATESTREAM_CLIENT_TLS_SERVER_NAME)",
    )
    security.add_argument(
        "--token",
        default=default(None),
        help="bearer token (env STATESTREAM_TOKEN; prefer --token-file: a flag shows in the process list)",
    )
    security.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="FILE",
        help="file whose first line is the bearer token (env STATESTREAM_TOKEN_FILE)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="statestream client",
        description="Talk to a statestream server: list its models, stream a text, generate text, complete a pattern.",
        epilog="The connection options may come before or after the command:\n"
        "  statestream client --target HOST:PORT models\n"
        "  statestream client models --target HOST:PORT\n"
        "Run 'statestream client COMMAND --help' for a command's own options.",
    )
    add_connection_arguments(parser, repeated=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, description: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=description, description=description)
        add_connection_arguments(child, repeated=True)
        return child

    command("models", "list the models being served, with their version, task and state size")
    predict = command(
        "predict", "stream a text one character per message over one session; print the top next characters after each"
    )
    predict.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    predict.add_argument("--text", required=True, help="the text to stream (at least one character)")
    predict.add_argument("--top-k", type=positive_int, default=5, help="how many likeliest next characters to print")
    generate = command("generate", "sample text on the server, inside one session, after a prompt")
    generate.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    generate.add_argument("--prompt", required=True, help="text fed to the model before sampling starts")
    generate.add_argument("--length", type=positive_int, default=200, help="characters to generate")
    generate.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.8,
        help="sampling temperature: 0 always takes the likeliest, higher is more varied",
    )
    generate.add_argument(
        "--top-k", type=non_negative_int, default=0, help="sample among the k likeliest only (0: among all)"
    )
    generate.add_argument(
        "--seed", type=int, default=None, help="random seed: the same seed gives the same text (default: a random one)"
    )
    complete.add_arguments(command("complete", complete.DESCRIPTION))
    forecast.add_arguments(command("forecast", forecast.DESCRIPTION))
    identify.add_arguments(command("identify", identify.DESCRIPTION))
    caption.add_arguments(command("caption", caption.DESCRIPTION))
    health.add_arguments(command("health", health.DESCRIPTION))
    translate.add_arguments(command("translate", translate.DESCRIPTION))
    return parser


COMMANDS = {
    "models": _models,
    "predict": _predict,
    "generate": _generate,
    "complete": complete.complete,
    "forecast": forecast.forecast,
    "identify": identify.identify,
    "caption": caption.caption,
    "health": health.health,
    "translate": translate.translate,
}


def fill_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Gives every connection flag that was not given its environment variable's value, if set."""
    for dest, variable in ENVIRONMENT.items():
        value = environ.get(variable)
        if getattr(args, dest) is None and value:
            setattr(args, dest, value if dest in ("target", "token", "tls_server_name") else Path(value))


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Client keyword arguments (credentials, metadata, options) the connection flags ask for."""
    if args.token is not None and args.token_file is not None:
        raise ClientSecurityError("give --token or --token-file, not both")
    token = read_token_file(args.token_file) if args.token_file is not None else args.token
    return connection(
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        token=token,
    )


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Runs one client command; a refused or failed call is raised as a CommandError for service.command.run."""
    args = build_parser().parse_args(list(argv))
    fill_from_environment(args, os.environ if environ is None else environ)
    try:
        kwargs = connection_options(args)
    except ClientSecurityError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    target = args.target or DEFAULT_TARGET
    try:
        with Client(target, **kwargs) as client:
            return COMMANDS[args.command](client, args)
    except grpc.RpcError as exc:
        raise call_error(exc, target=target) from exc
    except StepFailed as exc:  # generate's prompt is sent whole: its positions are the prompt's own
        message = _within_text(exc.error.message, 0, "--prompt") if args.command == "generate" else exc.error.message
        raise rpc_error(exc.code or grpc.StatusCode.UNKNOWN, message, target=target) from exc
    except SessionLost as exc:
        raise CommandError(str(exc), EXIT_UNREACHABLE, hint=f"is the server at {target} still running?") from exc
