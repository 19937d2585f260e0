"""What ``client caption`` and ``client translate`` share: the decoding flags, and a decode read off
the server (a session opened on the payload, one Run streaming each token with its attention).

The two commands differ only in their payload (image bytes or text), how a token prints, and the
picture they draw; the protocol of a decode is the attention decoder driver's and lives here once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.registry import served_model
from service.client.sdk import Client
from service.command import UINT32_MAX, int_in, non_negative_float, seed
from service.tensors import from_proto


@dataclass(frozen=True)
class DecodedToken:
    """One streamed token: its position, its text, its probability and the attention it was chosen with."""

    index: int
    label: str
    prob: float
    attention: np.ndarray

    @property
    def peak(self) -> int:
        return int(np.argmax(self.attention))


@dataclass(frozen=True)
class Decode:
    tokens: list[DecodedToken]
    stop_reason: str


def add_decoding_arguments(parser: argparse.ArgumentParser, *, limit_flag: str, limit: int, limit_help: str) -> None:
    """The decoding settings (beam, temperature, seed) and the command's own cap on tokens."""
    parser.add_argument("--beam", type=int_in(1, UINT32_MAX), default=1, help="beam width (1: greedy or sampled)")
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0: greedy; > 0: sample (with --beam 1)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seeds sampling (--temperature > 0)")
    parser.add_argument(limit_flag, type=int_in(1, UINT32_MAX), default=limit, help=limit_help)


def decode(
    client: Client,
    args: argparse.Namespace,
    *,
    payload: bytes,
    max_tokens: int,
    on_token: Callable[[DecodedToken], None],
) -> Decode:
    """Opens a session of ``args.model`` (of a task the command serves) on ``payload`` and decodes it
    with the command's settings, calling ``on_token`` as each token arrives; the session is closed."""
    served_model(client, args)
    session = client.open(args.model, init=payload)
    tokens: list[DecodedToken] = []
    done = pb.RunDone()
    try:
        options = {"beam": float(args.beam), "temperature": float(args.temperature)}
        for event in session.run(max_tokens, options=options, seed=args.seed):
            if isinstance(event, pb.RunDone):
                done = event
                continue
            token = DecodedToken(
                index=event.index,
                label=event.output.label,
                prob=round(event.output.top[0].prob, 4),
                attention=from_proto(event.output.tensors[0]),
            )
            tokens.append(token)
            on_token(token)
    finally:
        session.close()
    return Decode(tokens, done.stop_reason)
