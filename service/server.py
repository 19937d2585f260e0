"""serve(): build the server, add servicers, health and reflection, bind, start, drain.

The order is always the same: read the security files (TLS certificates, tokens; see
service/security.py and docs/security.md), load and prove the models, build the runtimes and
the session store, add the servicers, health and reflection, bind (TLS when configured), start.
On SIGTERM (or ``drain()``) the server drains: health goes NOT_SERVING, new sessions are refused
with UNAVAILABLE, in-flight steps finish and are answered within ``grace_s``, then the process
exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service import grpc_environment, process
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.contract import MANIFEST_FILE
from service.durable_sessions import DurableSessions
from service.engine import SessionEngine
from service.metrics import Metrics
from service.redis_store import RedisStore
from service.registry import Registry
from service.runtime import Runtimes
from service.security import (
    BindError,
    TransportSecurity,
    authenticator,
    bind,
    transport_security,
    warn_if_exposed,
)
from service.servicers.inference import InferenceServicer
from service.servicers.models import ModelServicer
from service.servicers.sessions import SessionServicer
from service.servicers.wire import add_servicer
from service.session_log import events
from service.session_store import SessionStore
from service.settings import Settings, address
from service.tasks import driver_class

log = logging.getLogger(__name__)

SERVICES = ("ModelService", "SessionService")


def _full_name(service: str) -> str:
    return pb.DESCRIPTOR.services_by_name[service].full_name


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


#: The Open Inference Protocol's service (--oip), beside statestream.v1's.
OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def served_services(settings: Settings) -> tuple[str, ...]:
    """The full names of the API services this server serves (health and reflection list them)."""
    return (*(_full_name(s) for s in SERVICES), *((OIP_SERVICE,) if settings.oip else ()))


async def set_health(servicer: health.aio.HealthServicer, status: int, services: tuple[str, ...]) -> None:
    for name in ("", *services):
        await servicer.set(name, status)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every served proto in one pool for reflection: the OIP's messages live in a pool of their
    own, not the default one (service/api/generate.py says why)."""
    pool = descriptor_pool.DescriptorPool()
    files: tuple[FileDescriptor, ...] = (
        pb.DESCRIPTOR,
        oip.DESCRIPTOR,
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
    )
    for file in files:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
    return pool


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
    ]


@dataclass
class Server:
    """A running statestream server."""

    settings: Settings
    grpc_server: grpc.aio.Server
    store: SessionStore
    runtimes: Runtimes
    health: health.aio.HealthServicer
    metrics: Metrics
    port: int
    transport: TransportSecurity
    auth: Authenticator
    engine: SessionEngine
    durable: DurableSessions | None = None
    _sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, auth: Authenticator | None = None) -> Server:
        """Builds and starts the server; ``auth`` overrides the one built from ``settings.tokens_file``."""
        transport = transport_security(settings)  # certificate and token files fail here, before any load
        auth = auth if auth is not None else authenticator(settings)
        metrics = Metrics()
        events.configure(settings.log_session_events_per_s)
        registry = Registry.from_folder(settings.models_dir, settings, driver_class)
        require_models(registry, settings.models_dir)
        runtimes = Runtimes(registry, settings, metrics)
        store = SessionStore(runtimes, settings, metrics)
        durable = await connect_session_store(settings, store, metrics)

        server = grpc.aio.server(options=grpc_options(settings))
        add_servicer(server, "ModelService", ModelServicer(runtimes, auth, settings.max_run_steps))
        engine = SessionEngine(store, settings, durable)
        add_servicer(server, "SessionService", SessionServicer(engine, metrics, auth))
        if settings.oip:
            add_servicer(server, "GRPCInferenceService", InferenceServicer(engine, metrics, auth), oip)
        health_servicer = add_health(server)
        reflection.enable_server_reflection(
            (
                *served_services(settings),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
            reflection_pool(),
        )
        # /metrics first: a gRPC server that never started keeps its port bound until the process
        # ends, while the metrics server can be closed if the gRPC port then cannot be bound.
        if settings.metrics_port:
            try:
                metrics.serve_http(settings.metrics_port, settings.host)
            except OSError as exc:
                raise BindError(
                    f"cannot serve /metrics on {address(settings.host, settings.metrics_port)}: {exc.strerror or exc}",
                    settings.metrics_port,
                    "--metrics-port",
                ) from exc
        try:
            port = bind(server, settings.target, transport)
        except BindError:
            metrics.stop_http()
            raise
        warn_if_exposed(settings, transport, auth)
        runtimes.start()
        await server.start()
        await set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING, served_services(settings))
        running = cls(
            settings, server, store, runtimes, health_servicer, metrics, port, transport, auth, engine, durable
        )
        running._sweeper = asyncio.get_running_loop().create_task(store.run_sweeper(), name="session-sweeper")
        log.info(
            "serving %d model(s) on %s (scheduler %s, max batch %d, event loop %s, sockets read by the %s; %s, %s)",
            len(registry),
            address(settings.host, port),
            settings.scheduler,
            settings.max_batch,
            process.running_loop_name(),
            grpc_environment.socket_reader(),
            transport.mode,
            f"bearer tokens for {len(auth.callers)} caller(s)" if auth.tokens is not None else "no tokens",
        )
        return running

    async def drain(self) -> None:
        """Stops taking sessions, lets in-flight requests finish within the grace time, stops.

        The server keeps listening through the grace time, so a new session is refused by the
        servicer with UNAVAILABLE (a clear answer) rather than racing gRPC's own shutdown, which
        may cancel a call it had just accepted. It stops as soon as no stream is left open.
        """
        log.info("draining: no new sessions, %.1fs for in-flight steps", self.settings.grace_s)
        self.store.accepting = False
        await set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING, served_services(self.settings))
        if self.durable is not None:  # hand every session to the store: its clients resume on another replica
            await self.durable.drain()
        loop = asyncio.get_running_loop()
        started, streams = loop.time(), self.engine.open_streams
        deadline = started + self.settings.grace_s
        while self.engine.open_streams and loop.time() < deadline:
            await asyncio.sleep(0.02)
        cut, sessions_left = self.engine.open_streams, len(self.store)
        await self.stop(max(0.0, min(0.5, deadline - loop.time())))
        events.stopped(
            streams_drained=streams - cut, streams_cut=cut, sessions_left=sessions_left, seconds=loop.time() - started
        )

    async def stop(self, grace_s: float | None = None) -> None:
        await self.grpc_server.stop(grace_s)
        await asyncio.to_thread(self.metrics.stop_http)  # waits out the HTTP server's poll (0.5 s)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.durable is not None:
            await self.durable.close()
        await self.runtimes.stop()

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()


async def connect_session_store(settings: Settings, store: SessionStore, metrics: Metrics) -> DurableSessions | None:
    """The session store of --session-store, checked reachable now (an Unavailable if not); None without one."""
    if not settings.session_store:
        return None
    redis_store = RedisStore(settings.session_store, settings.idle_timeout_s, settings.handover_timeout_s)
    await redis_store.ping()
    durable = DurableSessions(store, redis_store, settings.checkpoints, metrics)
    store.on_removed = lambda session, reason: durable.closed(session)
    durable.start()
    return durable


class NoModelsServed(Exception):
    """The models folder gave nothing to serve; the message names the likely mistake."""


def require_models(registry: Registry, models_dir: Path) -> None:
    """Refuses to start a server with no model: it would answer SERVING and then refuse every request."""
    if len(registry):
        return
    if (models_dir / MANIFEST_FILE).is_file():
        raise NoModelsServed(
            f"--models-dir {models_dir} holds a manifest.json itself: point it at the folder that contains "
            f"model folders (--models-dir {models_dir.parent})"
        )
    raise NoModelsServed(
        f"--models-dir {models_dir}: no model to serve (no folder holds a manifest.json, or every one was "
        "refused: the log above says why)"
    )


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains."""
    server = await Server.start(settings)  # a SecurityConfigError or BindError is the CLI's to report
    process.settle_heap()  # the models are loaded: what lives now lives as long as the process
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"statestream listening on {address(settings.host, server.port)} ({server.transport.mode})", flush=True)
    await stopping.wait()
    await server.drain()
