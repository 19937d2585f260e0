"""``statestream client generate``: sample text on the server, inside one session, after a prompt."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from service.api import statestream_pb2 as pb
from service.client.positions import within_text
from service.client.registry import command, served_model
from service.client.sdk import Client, StepFailed
from service.command import EXIT_USAGE, UINT32_MAX, CommandError, int_in, non_negative_float, rpc_error, seed

DESCRIPTION = "sample text on the server, inside one session, after a prompt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--prompt", required=True, help="text fed to the model before sampling starts")
    parser.add_argument("--length", type=int_in(1, UINT32_MAX), default=200, help="characters to generate")
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.8,
        help="sampling temperature: 0 always takes the likeliest, higher is more varied",
    )
    parser.add_argument(
        "--top-k", type=int_in(0, UINT32_MAX), default=0, help="sample among the k likeliest only (0: among all)"
    )
    parser.add_argument(
        "--seed", type=seed, default=None, help="random seed: the same seed gives the same text (default: a random one)"
    )


@command("generate", DESCRIPTION, add_arguments, tasks=("language_model",))
def generate(client: Client, args: argparse.Namespace) -> int:
    if not args.prompt:  # the server would refuse it as a session that has seen no step
        raise CommandError("--prompt is empty: give at least one character to start from", EXIT_USAGE)
    served_model(client, args)
    session = client.open(args.model)
    events = session.generate(args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    try:
        for event in events:
            if isinstance(event, pb.Token):
                _show_token(event, as_json=args.json)
            elif args.json:
                print(json.dumps({"done": True, "tokens": event.tokens, "seed": event.seed, "text": event.text}))
            else:
                sys.stdout.write("\n")
    except StepFailed as exc:  # the prompt is sent whole: the server's positions are the prompt's own
        message = within_text(exc.error.message, 0, "--prompt")
        raise rpc_error(exc.code or grpc.StatusCode.UNKNOWN, message) from exc
    finally:
        events.close()  # now, not at garbage collection: a reader that went away leaves it mid-answer
        session.close()
    return 0


def _show_token(token: pb.Token, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"index": token.index, "token": token.text, "prob": round(token.prob, 4)}), flush=True)
    else:
        sys.stdout.write(token.text)
        sys.stdout.flush()
