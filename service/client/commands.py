"""``statestream client COMMAND``: the frame every client command runs in (service/client/registry.py).

Connection flags are shared by every command: ``--target``, TLS (``--tls``, ``--tls-ca``,
``--tls-server-name``), a client certificate for mutual TLS (``--tls-cert``, ``--tls-key``) and a
bearer token (``--token`` or ``--token-file``). Each has an environment variable (below), read here
and nowhere else; a flag wins over its variable. The TLS variables carry ``CLIENT_`` so they never
collide with the server's ``STATESTREAM_TLS_CERT``/``STATESTREAM_TLS_KEY``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from service.client import registry
from service.client.credentials import ClientSecurityError, connection, read_token_file
from service.client.sdk import DEFAULT_TARGET, Client, SessionLost, StepFailed
from service.command import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_PORT,
    CommandError,
    Parser,
    call_error,
    flag_of,
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
    """``statestream client``'s parser: the connection options, then one subcommand per registered command."""
    parser = Parser(
        prog="statestream client",
        description="Talk to a statestream server: one command per kind of request (below).",
        epilog="The connection options may come before or after the command:\n"
        "  statestream client --target HOST:PORT models\n"
        "  statestream client models --target HOST:PORT\n"
        "Run 'statestream client COMMAND --help' for a command's own options.",
    )
    add_connection_arguments(parser, repeated=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in registry.commands():
        child = sub.add_parser(entry.name, help=entry.description, description=entry.description)
        add_connection_arguments(child, repeated=True)
        entry.add_arguments(child)
    return parser


def fill_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """Gives every connection flag that was not given its environment variable's value, if set;
    returns those it filled (flag destination → variable), so an error can name what was given."""
    filled = {}
    for dest, variable in ENVIRONMENT.items():
        value = environ.get(variable)
        if getattr(args, dest) is None and value:
            setattr(args, dest, value if dest in ("target", "token", "tls_server_name") else Path(value))
            filled[dest] = variable
    return filled


def named_as_given(message: str, filled: Mapping[str, str]) -> str:
    """A connection error that starts with a flag, naming instead the variable its value came from."""
    for dest, variable in filled.items():
        flag = flag_of(dest)
        if message.startswith(flag + " "):
            return variable + message[len(flag) :]
    return message


#: Targets in gRPC's own naming syntax (dns:///HOST:PORT, unix:PATH, ...): gRPC reads them, unchecked here.
GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
TARGET_HINT = "give --target HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051"


def check_target(target: str, where: str = "--target") -> str:
    """``target`` itself, or the usage error (naming ``where``, its flag or variable) of a HOST:PORT that cannot be one.

    gRPC takes such a target and fails only when it dials: with no port it dials 443, and
    'host:abc', ':50051' or a port over 65535 come back as resolver errors or 'connection
    refused', exit 4 as if no server were there. Checked here, each is one usage line.
    """
    if target.startswith(GRPC_SCHEMES):
        return target
    if not target.strip():
        raise CommandError(f"{where} is empty", EXIT_USAGE, hint=TARGET_HINT)
    if target.startswith("["):  # [IPv6]:PORT
        host, close, port_text = target.partition("]")
        host += close
        if not close or not port_text.startswith(":"):
            raise CommandError(f"{where} {target!r} has no port", EXIT_USAGE, hint=TARGET_HINT)
        port_text = port_text[1:]
    else:
        host, colon, port_text = target.rpartition(":")
        if not colon:
            raise CommandError(f"{where} {target!r} has no port", EXIT_USAGE, hint=TARGET_HINT)
        if ":" in host:
            raise CommandError(
                f"{where} {target!r}: an IPv6 address goes in brackets", EXIT_USAGE, hint="e.g. [::1]:50051"
            )
    if not host.strip("[]"):
        raise CommandError(f"{where} {target!r} has no host", EXIT_USAGE, hint=TARGET_HINT)
    if any(c.isspace() for c in host):
        raise CommandError(f"{where} {target!r}: {host!r} is not a host name", EXIT_USAGE, hint=TARGET_HINT)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= MAX_PORT:
        raise CommandError(
            f"{where} {target!r}: {port_text!r} is not a port (1-{MAX_PORT})", EXIT_USAGE, hint=TARGET_HINT
        )
    return target


def check_text(args: argparse.Namespace) -> None:
    """Refuses, as a usage error, a text option whose bytes are not UTF-8.

    Python keeps such bytes of the command line as lone surrogates; gRPC and protobuf cannot
    encode them, and the command would end in a traceback at its first call.
    """
    for dest, value in vars(args).items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise CommandError(f"{flag_of(dest)} is not UTF-8 text: {os.fsencode(value)!r}", EXIT_USAGE) from None


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
    filled = fill_from_environment(args, os.environ if environ is None else environ)
    check_text(args)
    where = ENVIRONMENT["target"] if "target" in filled else "--target"
    target = check_target(DEFAULT_TARGET if args.target is None else args.target, where)
    try:
        kwargs = connection_options(args)
    except ClientSecurityError as exc:
        raise CommandError(named_as_given(str(exc), filled), EXIT_USAGE) from exc
    run = next(entry.run for entry in registry.commands() if entry.name == args.command)
    try:
        with Client(target, **kwargs) as client:
            return run(client, args)
    except grpc.RpcError as exc:
        raise call_error(exc, target=target, tls=kwargs["credentials"] is not None) from exc
    except StepFailed as exc:
        raise rpc_error(exc.code or grpc.StatusCode.UNKNOWN, exc.error.message, target=target) from exc
    except SessionLost as exc:
        raise CommandError(str(exc), EXIT_UNREACHABLE, hint=f"is the server at {target} still running?") from exc
