"""Who is calling: the identity sessions belong to.

Without a tokens file every caller is ``anonymous`` (the local demo). With one, every call must
carry ``authorization: Bearer <token>`` and the token's name becomes the caller: sessions belong
to the caller who opened them, and another caller is told they do not exist.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import grpc

from service.errors import Unauthenticated

ANONYMOUS = "anonymous"


def load_tokens(path: Path) -> dict[str, str]:
    """Reads ``<token> <caller name>`` lines (``#`` comments and blank lines allowed)."""
    tokens: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) < 16:
            raise ValueError(f"{path}:{number}: expected '<token of 16+ characters> <caller name>'")
        tokens[parts[0]] = parts[1]
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


class Authenticator:
    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = tokens

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        if self.tokens is None:
            return ANONYMOUS
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        for known, name in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return name
        raise Unauthenticated("unknown bearer token")
