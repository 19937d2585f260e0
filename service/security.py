"""Transport security and caller identity, built from the settings: TLS, mutual TLS, bearer tokens.

Everything here is off unless configured, so the local demo runs with a plaintext port and one
``anonymous`` caller. Configured, it is:

* TLS: ``--tls-cert`` and ``--tls-key`` (PEM files) → the port speaks only TLS;
* mutual TLS: ``--tls-client-ca`` as well → a client must present a certificate issued by that
  CA, or its handshake fails (the client sees UNAVAILABLE; no RPC runs);
* bearer tokens: ``--tokens-file`` → every statestream RPC needs ``authorization: Bearer <token>``
  (UNAUTHENTICATED otherwise), and the token's caller name owns the sessions it opens.

Files are read and checked when the server starts, with errors that name the flag, so a typo
fails the start instead of the first handshake. Only grpcio is used (serving stays lean).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.auth import Authenticator, load_tokens
from service.settings import Settings

log = logging.getLogger(__name__)

PEM_MARKER = b"-----BEGIN "


class SecurityConfigError(ValueError):
    """A certificate, key or tokens file that cannot be used; the message names the flag."""


def read_pem(path: Path, flag: str, what: str) -> bytes:
    """The bytes of a PEM file, refusing a missing, empty or non-PEM file with the flag's name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{flag} {path}: cannot read the {what} ({exc.strerror or exc})") from None
    if PEM_MARKER not in data:
        raise SecurityConfigError(f"{flag} {path}: not a PEM file (expected a '-----BEGIN …' block holding the {what})")
    return data


@dataclass(frozen=True)
class TransportSecurity:
    """What the listening port speaks, resolved from the settings (kept for inspection and logs)."""

    credentials: grpc.ServerCredentials | None
    tls: bool = False
    mutual: bool = False

    @property
    def mode(self) -> str:
        return "mutual TLS" if self.mutual else "TLS" if self.tls else "plaintext"


def transport_security(settings: Settings) -> TransportSecurity:
    """Server credentials from ``tls_cert``/``tls_key`` (+ ``tls_client_ca`` for mutual TLS)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return TransportSecurity(None)
    chain = read_pem(settings.tls_cert, "--tls-cert", "server certificate chain")
    key = read_pem(settings.tls_key, "--tls-key", "server private key")
    if b"PRIVATE KEY" not in key:
        raise SecurityConfigError(f"--tls-key {settings.tls_key}: no 'PRIVATE KEY' block in the file")
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = read_pem(settings.tls_client_ca, "--tls-client-ca", "client CA bundle")
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return TransportSecurity(credentials, tls=True, mutual=client_ca is not None)


def authenticator(settings: Settings) -> Authenticator:
    """Bearer-token authentication from ``tokens_file``; without one, identity from mutual TLS or anonymous."""
    mutual = settings.tls_client_ca is not None
    if settings.tokens_file is None:
        return Authenticator(client_certificates=mutual)
    try:
        tokens = load_tokens(settings.tokens_file)
    except OSError as exc:
        raise SecurityConfigError(f"--tokens-file {settings.tokens_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SecurityConfigError(f"--tokens-file {exc}") from None
    return Authenticator(tokens, client_certificates=mutual)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings, transport: TransportSecurity, auth: Authenticator) -> None:
    """Logs a warning for configurations that send secrets or state in the clear beyond this host."""
    if auth.tokens is not None and not transport.tls:
        log.warning("bearer tokens are checked on a plaintext port: anyone on the path can read them; add --tls-cert")
    if not is_loopback(settings.host) and not transport.tls:
        log.warning("listening on %s without TLS: session data crosses the network in the clear", settings.host)
    if not is_loopback(settings.host) and auth.tokens is None and not transport.mutual:
        log.warning("listening on %s without tokens or mutual TLS: every caller is 'anonymous'", settings.host)


class BindError(OSError):
    """The server cannot listen on its address (most often: the port is in use).

    ``port`` and ``flag`` say which of the server's ports it was, so the error names the flag
    that picks another.
    """

    def __init__(self, message: str, port: int = 0, flag: str = "--port") -> None:
        super().__init__(message)
        self.port = port
        self.flag = flag


def bind(server: grpc.aio.Server, target: str, transport: TransportSecurity) -> int:
    """Binds the port (TLS when configured); returns the port number, raising BindError when it cannot bind."""
    try:
        if transport.credentials is None:
            port = int(server.add_insecure_port(target))
        else:
            port = int(server.add_secure_port(target, transport.credentials))
    except RuntimeError as exc:  # grpcio raises RuntimeError("Failed to bind to address ...")
        raise BindError(f"cannot listen on {target}") from exc
    if port == 0:
        raise BindError(f"cannot listen on {target}")
    return port
