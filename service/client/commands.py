"""``statestream client …``: list models, stream a text one character per step, generate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from service.api import statestream_pb2 as pb
from service.client.sdk import DEFAULT_TARGET, Client, StepFailed


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
    common.add_argument("--target", default=DEFAULT_TARGET, help=f"HOST:PORT of the server (default {DEFAULT_TARGET})")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
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
    return parser


COMMANDS = {"models": _models, "predict": _predict, "generate": _generate}


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    with Client(args.target) as client:
        return COMMANDS[args.command](client, args)
