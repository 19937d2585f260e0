"""The session store: ids, owners, sequence numbers, limits and lifetimes.

A session is data: a row in its model's state slabs plus a few counters. The rule that makes
resume safe lives here: a state-changing request carries ``seq``; ``seq == last + 1`` is
applied, ``seq <= last`` is a duplicate and is *not* applied again (its cached answer is
returned while the session still holds it), and a gap is refused. A step applied twice would
corrupt the hidden state silently, so nothing else in the server decides this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from service.errors import FailedPrecondition, NotFound, ResourceExhausted
from service.metrics import Metrics
from service.runtime import ModelRuntime, Runtimes
from service.session_log import events
from service.session_options import ResolvedOptions
from service.settings import Settings
from service.snapshots import Sealer

log = logging.getLogger(__name__)

SESSION_ID_BYTES = 24  # 192 random bits
#: Request keys a session remembers (``Session.remember_key``): more than the answers it caches,
#: so that a key resent after its answer left the cache is still known as applied.
KEYS_KEPT = 256


class SeqCheck(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"


class ReplyKind(Enum):
    """Which request a cached answer answered: a resent seq gets it back only as the same kind."""

    STEP = "step"  # a pb.StepResult
    GENERATE = "generate"  # a pb.GenerateDone
    RUN = "run"  # a pb.RunDone
    RESET = "reset"  # no answer is kept


@dataclass(frozen=True)
class Checkpoint:
    """A session's row and driver scratch, taken before a server-side loop and restored if it breaks."""

    rows: dict[str, np.ndarray]
    scratch: dict[str, np.ndarray]


@dataclass(eq=False)
class Session:
    id: str
    runtime: ModelRuntime
    row: int
    owner: str
    options: ResolvedOptions
    last_seq: int = 0
    #: Recent answers by seq, as their encoded message (a StepResult, GenerateDone or RunDone):
    #: kept as bytes, they cost one object each, and a step's answer is sent as they are.
    replies: OrderedDict[int, tuple[ReplyKind, bytes]] = field(default_factory=OrderedDict)
    #: The row a reset returns to, when the init graph made it (None: zeros).
    initial: dict[str, np.ndarray] | None = None
    # Driver data that must survive between requests: a language model's last logits.
    scratch: dict[str, np.ndarray] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stream: object | None = None  # the stream attached now, if any
    last_used: float = field(default_factory=time.monotonic)
    detached_at: float | None = None
    closed: bool = False
    #: The owner epoch this process holds the session under in the session store (0: no store).
    epoch: int = 0
    #: Requests applied since the last checkpoint to the session store.
    unsaved: int = 0
    #: The seq each recent request key was applied as, for protocols whose clients send a request
    #: id instead of a seq (the Open Inference Protocol); see ``SessionEngine.apply_step``.
    keys: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def check_seq(self, seq: int) -> SeqCheck:
        """Decides whether a request with ``seq`` is applied; raises on a gap or a missing seq."""
        if seq < 1:
            raise FailedPrecondition(f"seq must be >= 1 (the next expected is {self.last_seq + 1})")
        if seq <= self.last_seq:
            return SeqCheck.DUPLICATE
        if seq != self.last_seq + 1:
            raise FailedPrecondition(
                f"seq {seq} skips ahead: the last applied is {self.last_seq}, the next expected is {self.last_seq + 1}"
            )
        return SeqCheck.APPLY

    def record(self, seq: int, reply: bytes | None, keep: int, kind: ReplyKind = ReplyKind.STEP) -> None:
        """Marks ``seq`` applied and keeps its answer (encoded) for a resending client."""
        self.last_seq = seq
        self.last_used = time.monotonic()
        if keep and reply is not None:
            self.replies[seq] = (kind, reply)
            while len(self.replies) > keep:
                self.replies.popitem(last=False)

    def seq_for_key(self, key: str) -> int:
        """The seq a request ``key`` was applied as, or the next seq if it is new."""
        return self.keys.get(key, self.last_seq + 1)

    def remember_key(self, key: str, seq: int) -> None:
        self.keys[key] = seq
        while len(self.keys) > KEYS_KEPT:
            self.keys.popitem(last=False)

    def cached_reply(self, seq: int, kind: ReplyKind) -> bytes | None:
        """The encoded answer kept for ``seq`` if it answered a request of ``kind`` (a seq may have been another)."""
        cached = self.replies.get(seq)
        return cached[1] if cached is not None and cached[0] is kind else None


class SessionStore:
    """All open sessions of the server, with the limits that protect it."""

    def __init__(self, runtimes: Runtimes, settings: Settings, metrics: Metrics) -> None:
        self.runtimes = runtimes
        self.settings = settings
        self.metrics = metrics
        self.sealer = Sealer.from_secret(settings.snapshot_secret)
        self._sessions: dict[str, Session] = {}
        self._per_owner: dict[str, int] = {}
        self.accepting = True
        #: Told of every session closed or evicted here (the session store forgets it too).
        self.on_removed: Callable[[Session, str], None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def open(
        self,
        model: str,
        version: str,
        owner: str,
        options: ResolvedOptions,
        restore: bytes = b"",
        initial: dict[str, np.ndarray] | None = None,
    ) -> Session:
        """A new session of ``model``: from zeros, from ``initial`` (the init graph's rows), or a snapshot blob."""
        runtime = self.runtimes.get(model, version)
        snapshot = self.sealer.open(restore, runtime.model.manifest) if restore else None
        session = self._admit(runtime, owner, options)
        if initial is not None:
            runtime.slabs.write_row(session.row, initial)
            session.initial = initial
        if snapshot is not None:
            runtime.slabs.write_row(session.row, snapshot.state)
            session.last_seq = snapshot.last_seq
            if runtime.model.manifest.init is not None:  # a reset returns to what the init graph made
                session.initial = snapshot.state
        return session

    def fork(self, parent: Session) -> Session:
        """A new session with the parent's state, seq and options; it starts detached."""
        child = self._admit(parent.runtime, parent.owner, parent.options)
        parent.runtime.slabs.copy_row(parent.row, child.row)
        child.last_seq = parent.last_seq
        child.scratch = {name: value.copy() for name, value in parent.scratch.items()}
        child.initial = parent.initial
        child.detached_at = time.monotonic()
        return child

    def reset(self, session: Session) -> None:
        """Back to the session's initial row: zeros, or what the init graph made when it opened."""
        if session.initial is not None:
            session.runtime.slabs.write_row(session.row, session.initial)
        else:
            session.runtime.slabs.write_row(
                session.row, {s.input: np.zeros(s.shape, s.np_dtype) for s in session.runtime.model.manifest.rows}
            )
        session.scratch.clear()

    def checkpoint(self, session: Session) -> Checkpoint:
        """The session's row and scratch, before a server-side loop (the one rollback path)."""
        return Checkpoint(session.runtime.slabs.read_row(session.row), dict(session.scratch))

    def rollback(self, session: Session, checkpoint: Checkpoint) -> None:
        """Puts a session back as it was at ``checkpoint``: its loop did not finish, so its seq stays unapplied."""
        session.runtime.slabs.write_row(session.row, checkpoint.rows)
        session.scratch = dict(checkpoint.scratch)

    def snapshot(self, session: Session) -> bytes:
        state = session.runtime.slabs.read_row(session.row)
        return self.sealer.seal(session.runtime.model.manifest, session.last_seq, state)

    def adopt(
        self,
        session_id: str,
        model: str,
        version: str,
        owner: str,
        options: ResolvedOptions,
        rows: dict[str, np.ndarray],
    ) -> Session:
        """A session another process held, under its own id, with its row (a take-over)."""
        runtime = self.runtimes.get(model, version)
        session = self._admit(runtime, owner, options, session_id)
        runtime.slabs.write_row(session.row, rows)
        return session

    def find(self, session_id: str) -> Session | None:
        """The open session of that id here, whoever its caller (for the session store's hand-over)."""
        session = self._sessions.get(session_id)
        return None if session is None or session.closed else session

    def drop(self, session: Session, reason: str) -> None:
        """Frees the session here only: it lives on in the session store (handed over, fenced, drained)."""
        if not session.closed:
            self._remove(session, reason, forget=False)

    def _admit(
        self, runtime: ModelRuntime, owner: str, options: ResolvedOptions, session_id: str | None = None
    ) -> Session:
        """Enforces the session limits (evicting a detached session only if configured), then opens."""
        if len(self._sessions) >= self.settings.max_sessions and not self._evict_lru(None):
            raise ResourceExhausted("max_sessions", self.settings.max_sessions, "the server holds its most sessions")
        if self._per_owner.get(owner, 0) >= self.settings.max_sessions_per_caller and not self._evict_lru(owner):
            raise ResourceExhausted(
                "max_sessions_per_caller", self.settings.max_sessions_per_caller, "this caller holds its most sessions"
            )
        session_id = session_id or secrets.token_urlsafe(SESSION_ID_BYTES)
        session = Session(session_id, runtime, runtime.slabs.allocate(), owner, options)
        self._sessions[session_id] = session
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        self.metrics.active_sessions.labels(runtime.name).inc()
        self.metrics.state_bytes.labels(runtime.name).set(runtime.slabs.nbytes)
        events.opened(session)
        return session

    def _evict_lru(self, owner: str | None) -> bool:
        """Closes the least recently detached idle session (of ``owner``, if given), if allowed."""
        if not self.settings.evict_detached:
            return False
        candidates = [
            s
            for s in self._sessions.values()
            if s.stream is None and not s.lock.locked() and (owner is None or s.owner == owner)
        ]
        if not candidates:
            return False
        victim = min(candidates, key=lambda s: s.last_used)
        self._remove(victim, "evicted_lru")
        return True

    def get(self, session_id: str, owner: str) -> Session:
        """The caller's session; another caller's session is reported as not found."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner or session.closed:
            raise NotFound("no such session (it was closed, expired, or never existed)")
        return session

    async def close(self, session: Session, reason: str = "closed") -> None:
        """Frees the session's row once its in-flight step (if any) has finished."""
        if session.closed:
            return
        session.closed = True
        async with session.lock:
            self._remove(session, reason)

    def _remove(self, session: Session, reason: str, forget: bool = True) -> None:
        session.closed = True
        self._sessions.pop(session.id, None)
        remaining = self._per_owner.get(session.owner, 1) - 1
        if remaining:
            self._per_owner[session.owner] = remaining
        else:
            self._per_owner.pop(session.owner, None)
        session.runtime.slabs.release(session.row)
        name = session.runtime.name
        self.metrics.active_sessions.labels(name).dec()
        if reason != "closed":
            self.metrics.evictions.labels(name, reason).inc()
        events.closed(session, reason)
        if forget and self.on_removed is not None:
            self.on_removed(session, reason)

    def attach(self, session: Session, stream: object) -> None:
        session.stream = stream
        session.detached_at = None
        session.last_used = time.monotonic()

    def detach(self, session: Session, stream: object) -> None:
        """The stream ended without close: keep the session for resume until the detach TTL."""
        if session.stream is stream:
            session.stream = None
            session.detached_at = time.monotonic()

    async def sweep(self, now: float | None = None) -> int:
        """Closes sessions past their detach TTL or idle timeout; returns how many."""
        now = time.monotonic() if now is None else now
        expired: list[tuple[Session, str]] = []
        for session in self:
            if session.detached_at is not None and now - session.detached_at >= self.settings.detach_ttl_s:
                expired.append((session, "detach_ttl"))
            elif session.stream is None and now - session.last_used >= self.settings.idle_timeout_s:
                expired.append((session, "idle_timeout"))
        for session, reason in expired:
            await self.close(session, reason)
        return len(expired)

    async def run_sweeper(self) -> None:
        interval = max(0.05, min(self.settings.detach_ttl_s, self.settings.idle_timeout_s, 5.0) / 4)
        while True:
            await asyncio.sleep(interval)
            await self.sweep()
