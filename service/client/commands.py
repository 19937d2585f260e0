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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from service.api import statestream_pb2 as pb
from service.client import complete
from service.client.credentials import ClientSecurityError, connection, read_token_file
from service.client.sdk import DEFAULT_TARGET, Client, StepFailed

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
        for row in rows:
            print(f"{row['name']:<16} v{row['version']:<4} {row['task']:<16} {row['state_bytes']:>8} state bytes")
    return 0


def _predict(client: Client, args: argparse.Namespace) -> int:
    session = client.open(args.model, top_k=args.top_k)
    try:
        for char in args.text:
            try:
                result = session.step(text=char)
            except StepFailed as exc:
                print(
                    json.dumps({"error": exc.error.code_name, "message": exc.error.message, "input": char})
                    if args.json
                    else f"error: {exc}",
                    file=sys.stderr if not args.json else sys.stdout,
                )
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
    return 0


def _generate(client: Client, args: argparse.Namespace) -> int:
    session = client.open(args.model)
    try:
        for event in session.generate(
            args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed
        ):
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
        session.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statestream client", description="Talk to a statestream server.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target", default=None, help=f"HOST:PORT of the server (default {DEFAULT_TARGET}; env STATESTREAM_TARGET)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    security = common.add_argument_group("security (off unless given)")
    security.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's root CAs")
    security.add_argument(
        "--tls-ca", type=Path, help="CA bundle (PEM) that signed the server's certificate; implies --tls"
    )
    security.add_argument(
        "--tls-cert", type=Path, help="this client's certificate (PEM), for a server that requires mutual TLS"
    )
    security.add_argument("--tls-key", type=Path, help="this client's private key (PEM), with --tls-cert")
    security.add_argument(
        "--tls-server-name", help="check the server's certificate against this name instead of the target's host"
    )
    security.add_argument(
        "--token", help="bearer token (env STATESTREAM_TOKEN; prefer --token-file: a flag shows in the process list)"
    )
    security.add_argument("--token-file", type=Path, help="file whose first line is the bearer token")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", parents=[common], help="list the models being served")
    predict = sub.add_parser("predict", parents=[common], help="stream a text one character per step")
    predict.add_argument("--model", required=True)
    predict.add_argument("--text", required=True)
    predict.add_argument("--top-k", type=int, default=5)
    generate = sub.add_parser("generate", parents=[common], help="generate text on the server")
    generate.add_argument("--model", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--length", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=0.8)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--seed", type=int, default=None)
    complete.add_parser(sub, common)
    return parser


COMMANDS = {"models": _models, "predict": _predict, "generate": _generate, "complete": complete.complete}


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
    args = build_parser().parse_args(list(argv))
    fill_from_environment(args, os.environ if environ is None else environ)
    try:
        kwargs = connection_options(args)
    except ClientSecurityError as exc:
        print(f"statestream client: {exc}", file=sys.stderr)
        return 2
    try:
        with Client(args.target or DEFAULT_TARGET, **kwargs) as client:
            return COMMANDS[args.command](client, args)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"statestream client: {code.name if code else 'ERROR'}: {details}", file=sys.stderr)
        return 1
