"""What gRPC's C core reads from the environment once, when grpc is first imported.

The server's entry points (``statestream``, the bench's echo) import this module before
anything imports grpc; imported after grpc, it changes nothing. A value the user set is kept.

* ``GRPC_VERBOSITY=ERROR``: the C core's own INFO lines (each failed TLS handshake, for one)
  stay out of the server's logs and a command's one error line.
* ``GRPC_EXPERIMENTS=-event_engine_listener``: the server's sockets are read by grpc.aio's
  poller thread itself (gRPC's epoll poller), not by an EventEngine thread that then wakes it.
  A message crosses one thread fewer on its way to the event loop: about a third less server
  CPU a step (docs/benchmarks.md, "One thread hand-off fewer"). Clients are unaffected. Naming
  the listener there (``event_engine_listener`` keeps gRPC's default) is left as it is; other
  experiments given there are kept, with this one added.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

#: gRPC core's experiment that reads a server's sockets on EventEngine threads (on by default).
LISTENER_EXPERIMENT = "event_engine_listener"


def experiments(environ: Mapping[str, str]) -> list[str]:
    """``GRPC_EXPERIMENTS`` as gRPC reads it: names, each with "-" in front where it is turned off."""
    return [name.strip() for name in environ.get("GRPC_EXPERIMENTS", "").split(",") if name.strip()]


def with_defaults(environ: MutableMapping[str, str]) -> None:
    """Sets statestream's defaults for gRPC core in ``environ``, keeping what is set there."""
    environ.setdefault("GRPC_VERBOSITY", "ERROR")
    given = experiments(environ)
    if not any(name.lstrip("-") == LISTENER_EXPERIMENT for name in given):
        environ["GRPC_EXPERIMENTS"] = ",".join([*given, "-" + LISTENER_EXPERIMENT])


def socket_reader(environ: Mapping[str, str] | None = None) -> str:
    """Which thread reads a server's sockets where gRPC was imported under ``environ`` (by
    default: in this process, as the server's start line says)."""
    names = READ_BY_GRPC if environ is None else experiments(environ)
    return "grpc.aio poller" if "-" + LISTENER_EXPERIMENT in names else "event engine"


def given(*, defaults: bool = False) -> dict[str, str]:
    """The variables as this process was given them (``GIVEN``), unset ones left out; with
    ``defaults``, as a server started with them sets them for itself."""
    environ = {name: value for name, value in GIVEN.items() if value is not None}
    if defaults:
        with_defaults(environ)
    return environ


#: The variables set here, as this process was given them (None: unset), before the defaults: a
#: child that stands for a user's own gRPC server (the bench's bare server) runs with these.
GIVEN: dict[str, str | None] = {name: os.environ.get(name) for name in ("GRPC_VERBOSITY", "GRPC_EXPERIMENTS")}
if "grpc" not in sys.modules:
    with_defaults(os.environ)
#: The experiments gRPC core read (or will read) at its import: a process imports this module
#: first, or after grpc, when it changed nothing.
READ_BY_GRPC = tuple(experiments(os.environ))
