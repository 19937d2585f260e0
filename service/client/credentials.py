"""Client-side security: TLS channel credentials, a client certificate for mutual TLS, a bearer token.

``connection(...)`` turns the paths and token a user gives into the keyword arguments of
``Client`` / ``AsyncClient`` (``credentials``, ``metadata``, ``options``), so the SDK and the
``statestream client`` commands connect the same way::

    Client(target, **connection(tls_ca=Path("ca.pem"), tls_cert=Path("me.pem"),
                                tls_key=Path("me.key"), token=os.environ["STATESTREAM_TOKEN"]))

Only the CLI reads environment variables (see service/client/commands.py); this module takes
explicit values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

TOKEN_HEADER = "authorization"


class ClientSecurityError(ValueError):
    """A certificate, key or token file that cannot be used; the message names it."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientSecurityError(f"{what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ClientSecurityError(f"{what} {path}: not a PEM file")
    return data


def channel_credentials(
    *, tls: bool = False, tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel.

    TLS is on when ``tls`` is set or any file is given. ``tls_ca`` is the CA bundle that signed
    the server's certificate (default: the system's roots). ``tls_cert`` and ``tls_key`` are this
    client's certificate and key, for a server that requires mutual TLS; they go together.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ClientSecurityError("--tls-cert and --tls-key go together (a client certificate needs its key)")
    if not (tls or tls_ca or tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "--tls-ca") if tls_ca else None,
        private_key=_read(tls_key, "--tls-key") if tls_key else None,
        certificate_chain=_read(tls_cert, "--tls-cert") if tls_cert else None,
    )


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer <token>`` header every call carries, or none."""
    if token is None:
        return ()
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ClientSecurityError("the bearer token is empty or holds whitespace")
    if not (token.isascii() and token.isprintable()):  # an HTTP/2 header value: gRPC fails the call on any other
        raise ClientSecurityError("the bearer token holds a character outside printable ASCII")
    return ((TOKEN_HEADER, f"Bearer {token}"),)


def read_token_file(path: Path) -> str:
    """A token kept in a file (first non-empty line), so it stays out of the process list."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ClientSecurityError(f"--token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClientSecurityError(f"--token-file {path}: not a text file (not UTF-8)") from None
    if not lines:
        raise ClientSecurityError(f"--token-file {path}: the file is empty")
    return lines[0]


def connection(
    *,
    tls: bool = False,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_server_name: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``Client``/``AsyncClient``: credentials, metadata and channel options.

    ``tls_server_name`` checks the server's certificate against that name instead of the target's
    host (e.g. connecting to an IP address whose certificate names a DNS host).
    """
    credentials = channel_credentials(tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    if tls_server_name and credentials is None:
        raise ClientSecurityError("--tls-server-name needs TLS (--tls or --tls-ca)")
    options: list[tuple[str, Any]] = []
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return {"credentials": credentials, "metadata": bearer_metadata(token), "options": options}
