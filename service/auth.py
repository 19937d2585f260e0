"""Who is calling: the identity sessions belong to.

Without a tokens file every caller is ``anonymous`` (the local demo), unless the port runs mutual
TLS: then the caller is the identity in the client certificate (``cert:<subject alt name or
common name>``). With a tokens file, every call must carry ``authorization: Bearer <token>`` and
the token's name becomes the caller, whatever certificate the client showed (mutual TLS then only
decides who may connect). Sessions belong to the caller who opened them, and another caller is
told they do not exist.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import grpc

from service.errors import Unauthenticated

ANONYMOUS = "anonymous"
MIN_TOKEN_CHARS = 16
CERT_PREFIX = "cert:"


def load_tokens(path: Path) -> dict[str, str]:
    """Reads ``<token> <caller name>`` lines (``#`` comments and blank lines allowed).

    Tokens must be at least 16 characters and unique; several tokens may name one caller (rotation).
    """
    tokens: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) < MIN_TOKEN_CHARS:
            raise ValueError(f"{path}:{number}: expected '<token of {MIN_TOKEN_CHARS}+ characters> <caller name>'")
        if parts[0] in tokens:
            raise ValueError(f"{path}:{number}: this token is already listed (for {tokens[parts[0]]!r})")
        tokens[parts[0]] = parts[1]
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


class Authenticator:
    """Maps a call to its caller name; raises Unauthenticated when tokens are on and the call has none.

    Tokens are kept as SHA-256 digests and compared in constant time, so neither the table nor
    the comparison reveals a token by timing.
    """

    def __init__(self, tokens: dict[str, str] | None = None, *, client_certificates: bool = False) -> None:
        self.tokens = tokens
        self.client_certificates = client_certificates  # mutual TLS: a verified cert names the caller
        self._by_digest = {_digest(t): name for t, name in tokens.items()} if tokens is not None else None

    @property
    def callers(self) -> set[str]:
        return set(self.tokens.values()) if self.tokens is not None else set()

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        if self._by_digest is None:
            identity = _certificate_identity(context) if self.client_certificates else None
            return identity or ANONYMOUS
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = _text(value)
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        presented = _digest(token)
        found = None
        for known, name in self._by_digest.items():  # every entry, so the time does not say which matched
            if hmac.compare_digest(known, presented):
                found = name
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found


def _certificate_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The verified client certificate's identity under mutual TLS, else None."""
    try:
        identities = context.peer_identities()
    except Exception:  # no transport security on this call
        return None
    if not identities:
        return None
    return CERT_PREFIX + _text(identities[0])
