"""The one line a user reads when the server cannot listen where they asked.

``serve`` checks its ports before loading models, and the supervisor of ``--workers`` reserves
the shared port itself; both turn the failed bind into the same ``CommandError`` here, so a taken
port reads alike whichever found it.
"""

from __future__ import annotations

import errno

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
