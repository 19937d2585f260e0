"""The one line a user reads when the server cannot listen where they asked.

``serve`` checks its ports before loading models (:func:`check_can_listen`, which the load
tools' own servers use too), and the supervisor of ``--workers`` reserves the shared port
itself; both turn the failed bind into the same ``CommandError`` here, so a taken port reads
alike whichever found it.
"""

from __future__ import annotations

import errno
import socket

from service.command import EXIT_USAGE, CommandError
from service.settings import address


def listen_error(host: str, port: int, exc: OSError, flag: str = "--port") -> CommandError:
    """The failed bind of ``host:port`` (the port of ``flag``) as one line: the port in use,
    ``--host`` not this machine's, or what the system said."""
    if exc.errno == errno.EADDRINUSE:
        return port_in_use(host, port, flag)
    if exc.errno == errno.EADDRNOTAVAIL:
        return CommandError(
            f"--host {host}: not an address of this machine, so the server cannot listen there",
            EXIT_USAGE,
            hint="give one of its addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (all of them)",
        )
    return CommandError(f"cannot listen on {address(host, port)} ({flag}): {exc.strerror}", EXIT_USAGE)


def port_in_use(host: str, port: int, flag: str = "--port") -> CommandError:
    """A port another process holds, naming the flag that picks another."""
    if flag != "--port":
        return CommandError(f"port {port} on {host} is in use ({flag})", EXIT_USAGE, hint=f"pick another {flag}")
    return CommandError(
        f"port {port} on {host} is in use",
        EXIT_USAGE,
        hint=f"is another server running there ('statestream client models --target {address(host, port)}')? "
        "Pick another with --port, or --port 0 for a free one",
    )


def check_can_listen(host: str, port: int, flag: str = "--port") -> None:
    """Raises a one-line CommandError if nothing could listen on ``host:port`` now (the server
    binds it later): the port in use (under ``flag``), or ``--host`` unresolvable or not this
    machine's. Port 0 checks the host alone."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"--host {host}: cannot resolve it ({exc.strerror})", EXIT_USAGE) from exc
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is not "in use"
        try:
            probe.bind(where)
        except OSError as exc:
            raise listen_error(host, port, exc, flag) from exc
