"""``statestream client health``: the server's gRPC health status, the probe of the container image.

It asks the standard ``grpc.health.v1.Health/Check``, the question Envoy's active health checks
and Kubernetes' gRPC probes ask, and exits 0 only on ``SERVING``: a server still loading its
models (nothing listens yet), draining after SIGTERM (``NOT_SERVING``) or not answering in time
exits 4. The Dockerfile's ``HEALTHCHECK`` runs this command, so the image probes itself with what
it already holds (grpcio and grpcio-health-checking), not with a binary added for the purpose.
"""

from __future__ import annotations

import argparse
import json

from service.client.registry import command
from service.client.sdk import DEFAULT_TARGET, Client
from service.command import EXIT_UNREACHABLE, CommandError, seconds

DESCRIPTION = "ask the server's gRPC health service: exit 0 when it is SERVING, 4 when it is not or does not answer"
SERVING = "SERVING"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        default="",
        help="the service to ask about (default: the whole server; or e.g. statestream.v1.SessionService)",
    )
    parser.add_argument("--timeout-s", type=seconds, default=5.0, help="how long to wait for the answer, in seconds")


@command("health", DESCRIPTION, add_arguments)
def health(client: Client, args: argparse.Namespace) -> int:
    """Prints the status; any status but SERVING is an error (exit 4), so a probe can act on it."""
    status = client.health(args.service, timeout_s=args.timeout_s)
    print(json.dumps({"service": args.service, "status": status}) if args.json else status)
    if status != SERVING:
        about = f" for {args.service}" if args.service else ""
        raise CommandError(
            f"the server at {args.target or DEFAULT_TARGET} is {status}{about}",
            EXIT_UNREACHABLE,
            hint="it is draining, or not ready yet",
        )
    return 0
