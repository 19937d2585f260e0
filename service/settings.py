"""Flags and environment variables → one typed, frozen settings object.

This is the only module that reads the environment. Every option has a flag (``--max-chunk``)
and an environment variable (``STATESTREAM_MAX_CHUNK``); a flag given on the command line wins
over the variable, which wins over the default. The resolved object is handed down to every
part of the server, so what the server runs with can be logged and inspected in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.command import (
    InRange,
    OneOf,
    OutOfRange,
    flag_of,
    float_in,
    int_in,
    non_negative_float,
    non_negative_int,
    positive_int,
    seconds,
)
from service.command import (
    port as tcp_port,
)

ENV_PREFIX = "STATESTREAM_"
SCHEDULERS = ("batched", "none")
PROVIDERS = ("auto", "cpu", "cuda")
STATE_MEMORIES = ("auto", "host", "device")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The shortest HMAC key --snapshot-secret may be (UTF-8 bytes): shorter keys are guessable.
MIN_SNAPSHOT_SECRET_BYTES = 16
#: The most server processes ``--workers`` starts ('auto' is one per core).
MAX_WORKERS = 256
#: gRPC takes message sizes as a C int.
INT32_MAX = 2**31 - 1
#: The longest a scheduler may hold a batch open to let it fill: past a second it is a typo.
MAX_DELAY_MS = 1000.0
#: The largest --inline-call-us: a call this long holds the event loop (and every stream) that long.
MAX_INLINE_CALL_US = 10000.0
#: The GIL switch interval's range (µs): below 10 the threads do little but hand the GIL over.
MIN_GIL_SWITCH_INTERVAL_US, MAX_GIL_SWITCH_INTERVAL_US = 10.0, 100000.0


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:50051``), as gRPC targets write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_count(text: str) -> str:
    """The type of ``--workers``: ``auto``, or a count from 1 to MAX_WORKERS."""
    if text.strip() == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise OutOfRange(f"{text!r} is neither a whole number nor 'auto'") from None
    if not 1 <= count <= MAX_WORKERS:
        raise OutOfRange(f"{count} is out of range (1-{MAX_WORKERS}, or 'auto')")
    return str(count)


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with. Defaults are the documented defaults."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free port)", "type": tcp_port})
    models_dir: Path = field(default=Path("models"), metadata={"help": "folder of model folders"})
    log_level: str = field(
        default="INFO",
        metadata={"help": "how much the log says (any case)", "type": OneOf(LOG_LEVELS, fold_case=True)},
    )
    log_json: bool = field(default=False, metadata={"help": "structured JSON log lines"})
    log_session_events_per_s: float = field(
        default=20.0,
        metadata={
            "help": "most session event lines (opened, closed, evicted, resumed, refused) logged per second; "
            "the rest are counted (0: count only)",
            "type": non_negative_float,
        },
    )

    scheduler: str = field(
        default="batched",
        metadata={"help": "'none' runs one ORT call per step", "type": OneOf(SCHEDULERS)},
    )
    max_batch: int = field(default=256, metadata={"help": "most session-steps in one ORT call", "type": positive_int})
    max_delay_ms: float = field(
        default=0.0,
        metadata={
            "help": "the first step of a batch waits up to this long for others to join it (0: run at once; "
            "fractions of a millisecond are kept)",
            "type": float_in(0, MAX_DELAY_MS),
        },
    )
    inline_call_us: float = field(
        default=150.0,
        metadata={
            "help": "run a small batch of single steps on the event loop, not the ORT thread, when calls of "
            "its size have cost under this much CPU (µs; 0: lone steps only). A hand-off to the thread and "
            "back costs more than such a call",
            "type": float_in(0, MAX_INLINE_CALL_US),
        },
    )
    gil_switch_interval_us: float = field(
        default=200.0,
        metadata={
            "help": "how often a thread holding the GIL is asked to hand it over (µs; Python's default is 5000). "
            "Each batch goes to the ORT thread and back; with 5 ms a batch could wait up to two intervals "
            "for the GIL around its call (docs/benchmarks.md, 'GIL switch interval')",
            "type": float_in(MIN_GIL_SWITCH_INTERVAL_US, MAX_GIL_SWITCH_INTERVAL_US),
        },
    )
    ort_intra_threads: int = field(
        default=1, metadata={"help": "ONNX Runtime intra-op threads per model", "type": positive_int}
    )
    ort_spinning: bool = field(default=False, metadata={"help": "let ORT threads spin-wait (steals a core from gRPC)"})
    provider: str = field(default="auto", metadata={"help": "the execution provider", "type": OneOf(PROVIDERS)})
    io_binding: bool = field(default=True, metadata={"help": "bind ORT inputs/outputs to preallocated buffers"})
    state_memory: str = field(
        default="auto",
        metadata={
            "help": "where session state lives; 'device' keeps it in the execution provider's memory (the "
            "GPU's with CUDA); 'auto' is device on CUDA, host on the CPU",
            "type": OneOf(STATE_MEMORIES),
        },
    )

    initial_capacity: int = field(
        default=64, metadata={"help": "state slab rows preallocated per model", "type": positive_int}
    )
    max_sessions: int = field(
        default=100_000, metadata={"help": "open sessions in the whole server", "type": positive_int}
    )
    max_sessions_per_caller: int = field(
        default=10_000, metadata={"help": "open sessions one caller may hold", "type": positive_int}
    )
    detach_ttl_s: float = field(
        default=300.0, metadata={"help": "how long a session outlives its stream, for resume", "type": seconds}
    )
    idle_timeout_s: float = field(
        default=3600.0, metadata={"help": "a session unused this long is closed", "type": seconds}
    )
    max_chunk: int = field(default=4096, metadata={"help": "most time steps in one Step message", "type": positive_int})
    max_generate_tokens: int = field(
        default=4096, metadata={"help": "most tokens one Generate may ask for", "type": positive_int}
    )
    max_run_steps: int = field(
        default=1024, metadata={"help": "most model steps one server-side Run may take", "type": positive_int}
    )
    max_init_bytes: int = field(
        default=1024 * 1024,
        metadata={
            "help": "largest init payload (tensors or encoded bytes) an open may carry",
            "type": int_in(1, INT32_MAX),
        },
    )
    max_message_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "largest gRPC message accepted", "type": int_in(1024, INT32_MAX)},
    )
    max_streams: int = field(
        default=10_000, metadata={"help": "concurrent streams the server accepts", "type": positive_int}
    )
    evict_detached: bool = field(
        default=False, metadata={"help": "when full, close the least recently used detached session to make room"}
    )
    snapshot_secret: str = field(
        default="",
        metadata={
            "help": "HMAC key for snapshot blobs (default: random per process; set it to restore across restarts)"
        },
    )
    reply_cache: int = field(
        default=8,
        metadata={"help": "answers kept per session to re-send to a resuming client", "type": non_negative_int},
    )

    tls_cert: Path | None = field(default=None, metadata={"help": "server certificate chain (PEM); enables TLS"})
    tls_key: Path | None = field(default=None, metadata={"help": "server private key (PEM), with --tls-cert"})
    tls_client_ca: Path | None = field(
        default=None, metadata={"help": "CA bundle (PEM) clients must present a cert from: mutual TLS"}
    )
    tokens_file: Path | None = field(
        default=None, metadata={"help": "bearer tokens, '<token> <caller>' per line; enables auth"}
    )

    metrics_port: int = field(default=0, metadata={"help": "Prometheus /metrics port (0: off)", "type": tcp_port})
    grace_s: float = field(default=10.0, metadata={"help": "SIGTERM drain: time for in-flight steps", "type": seconds})
    event_loop: str = field(
        default="auto",
        metadata={
            "help": "the event loop that runs the server; 'auto' is uvloop where it is installed, else asyncio's own",
            "type": OneOf(EVENT_LOOPS),
        },
    )

    workers: str = field(
        default="1",
        metadata={
            "help": "server processes sharing the address (SO_REUSEPORT), or 'auto' for one per core; more than one "
            "hands sessions between them through the session store (a private redis-server when "
            "--session-store is not given)",
            "type": worker_count,
        },
    )
    session_store: str = field(
        default="",
        metadata={
            "help": "redis://HOST:PORT[/DB] (or unix:///PATH) of the Redis that keeps sessions beyond this process: "
            "checkpoints, take-over on resume, drain hand-over (default: none, sessions live only in the process)"
        },
    )
    checkpoint_every: int | None = field(
        default=None,
        metadata={
            "help": "write a session to the session store every K acknowledged requests, before answering the "
            "K-th (default 1 with --session-store: every answered step is durable; 0: only on detach, "
            "hand-over and drain, the default for the private store of --workers)",
            "type": non_negative_int,
        },
    )
    handover_timeout_s: float = field(
        default=1.0,
        metadata={"help": "how long a resume waits for the live owner of a session to hand it over", "type": seconds},
    )
    worker_index: int | None = field(
        default=None,
        metadata={
            "help": "set by 'serve --workers N' on each worker process: its index, which its log lines carry",
            "type": int_in(0, MAX_WORKERS - 1),
        },
    )
    reuse_port: bool = field(
        default=False, metadata={"help": "bind with SO_REUSEPORT, sharing the port with other processes"}
    )
    oip: bool = field(
        default=True,
        metadata={"help": "also serve the Open Inference Protocol (inference.GRPCInferenceService) on the same port"},
    )

    @property
    def worker_count(self) -> int:
        """--workers resolved: 'auto' is the cores this process may run on."""
        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return int(self.workers)

    @property
    def checkpoints(self) -> int:
        """--checkpoint-every resolved (its default is 1)."""
        return 1 if self.checkpoint_every is None else self.checkpoint_every

    @property
    def target(self) -> str:
        """``host:port`` as gRPC and clients take it."""
        return address(self.host, self.port)

    def __post_init__(self) -> None:
        if self.host.startswith("["):
            raise ValueError(f"host: give an IPv6 address without brackets (e.g. ::1), got {self.host!r}")
        if self.snapshot_secret and len(self.snapshot_secret.encode()) < MIN_SNAPSHOT_SECRET_BYTES:
            raise ValueError(
                f"snapshot_secret must be at least {MIN_SNAPSHOT_SECRET_BYTES} bytes, "
                f"got {len(self.snapshot_secret.encode())}"
            )
        for f in fields(self):
            _check_range(f, getattr(self, f.name))
        if self.session_store:
            _check_store_url(self.session_store)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        metrics_ports = range(self.metrics_port, self.metrics_port + max(1, self.worker_count))
        if self.port and self.metrics_port and self.port in metrics_ports:
            raise ValueError(f"metrics_port {self.metrics_port} takes port {self.port}, the gRPC port: pick another")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _check_store_url(url: str) -> None:
    """Refuses a --session-store that is not a URL redis-py could connect to, before anything starts."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"session_store must be a redis://HOST:PORT (or unix://PATH) URL, got {url!r}")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise ValueError(f"session_store {url!r}: the port must be a number from 0 to 65535") from None
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"session_store {url!r}: give the socket's path, e.g. unix:///run/redis.sock")


def _check_range(f: Field[Any], value: Any) -> None:
    """Raises ValueError naming the field when ``value`` is outside the range its option takes."""
    kind = f.metadata.get("type")
    if kind is None or value is None:
        return
    try:
        kind.check(value) if isinstance(kind, InRange | OneOf) else kind(value)
    except OutOfRange as exc:
        raise ValueError(f"{f.name}: {exc}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(f: Field[Any]) -> Any:
    """What turns the text of a flag or variable into the field's value: its range-checked type, or its annotation's."""
    if "type" in f.metadata:
        return f.metadata["type"]
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return {"str": str, "Path": Path, "bool": _parse_bool}[name.removesuffix(" | None")]


def _default_text(default: Any) -> str:
    """``default X; `` for the help text, or nothing for an option that is off until given (its help says so)."""
    return "" if default is None or default == "" else f"default {default}; "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per settings field, defaulting to "not given" so env vars can fill in."""
    for f in fields(Settings):
        kind = _converter(f)
        if kind is _parse_bool:
            parser.add_argument(
                flag_of(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{f.metadata.get('help', '')} (default {'on' if f.default else 'off'}; "
                f"env {ENV_PREFIX}{f.name.upper()})",
            )
        else:
            parser.add_argument(
                flag_of(f.name),
                dest=f.name,
                default=None,
                type=kind,
                metavar="{" + ",".join(kind.choices) + "}" if isinstance(kind, OneOf) else None,
                help=f"{f.metadata.get('help', '')} ({_default_text(f.default)}env {ENV_PREFIX}{f.name.upper()})",
            )


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags beat environment variables, which beat defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            try:
                values[f.name] = _converter(f)(raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from None
    return Settings(**values)


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="statestream serve")
    add_arguments(parser)
    return from_namespace(parser.parse_args(list(argv)), environ)
