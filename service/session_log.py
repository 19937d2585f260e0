"""Operators' log lines about sessions: opened, closed, evicted, resumed; refused requests; the drain.

An operator asks "what happened to session 3f9a…?" and "why are requests refused?" of the
logs, so each of those events is one structured line with the session's id prefix (8
characters: enough to find it, too little to attach to it), its model, and for a refusal the
status code and the reason. Never the payload: quoted values in a reason (a character the
client sent, a name) are masked.

At a high rate one line per event would drown the logs and cost CPU on the hot path, so lines
are rate limited (``--log-session-events-per-s``, a token bucket): events over the rate are
counted, not logged, and the count is reported on the next line that is logged and in the final
line on stop. The Prometheus counters count every event regardless.

The call sites are one line each (service/session_store.py, service/engine.py,
service/servicers/sessions.py, service/server.py); everything else lives here.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("statestream.sessions")

ID_PREFIX_CHARS = 8
MAX_REASON_CHARS = 200
#: Quoted text in a reason comes from the request (a character, a name): masked, never logged.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class _Error(Protocol):
    code: Any  # grpc.StatusCode
    message: str


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Session(Protocol):
    """What a line says of a session (``service.session_store.Session`` has it; this module sits below it)."""

    @property
    def id(self) -> str: ...
    @property
    def runtime(self) -> _Named: ...
    @property
    def owner(self) -> str: ...
    @property
    def last_seq(self) -> int: ...


def short_id(session_id: str) -> str:
    return session_id[:ID_PREFIX_CHARS]


def masked(reason: str) -> str:
    """The reason with every quoted value replaced by '…', cut to MAX_REASON_CHARS."""
    text = _QUOTED.sub("'…'", reason)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


class SessionEvents:
    """The rate-limited writer of session event lines (one per server process)."""

    def __init__(self, per_second: float = 20.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.configure(per_second)

    def configure(self, per_second: float) -> None:
        """Lines allowed per second on average, with bursts of as many; 0 logs none (counts only)."""
        self.per_second = max(0.0, per_second)
        self.burst = max(1.0, self.per_second)
        self._tokens = self.burst
        self._refilled = self.clock()
        self.counts: Counter[str] = Counter()  # every event since start, logged or not
        self.suppressed: Counter[str] = Counter()  # events not logged since the last line

    def _allowed(self) -> bool:
        if self.per_second <= 0:
            return False
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.per_second)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def emit(self, event: str, **fields: Any) -> None:
        """Logs ``event`` with ``fields`` (``key=value`` in the text, and as JSON fields), if the rate allows."""
        self.counts[event] += 1
        if not self._allowed():
            self.suppressed[event] += 1
            return
        if self.suppressed:
            fields["not_logged"] = dict(self.suppressed)  # events over the rate since the last line
            self.suppressed.clear()
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        log.info("session %s %s", event, text, extra={"event": f"session_{event}", **fields})

    # -- the events ---------------------------------------------------------------------

    def opened(self, session: Session) -> None:
        self.emit("opened", session=short_id(session.id), model=session.runtime.name, caller=session.owner)

    def resumed(self, session: Session) -> None:
        self.emit("resumed", session=short_id(session.id), model=session.runtime.name, last_seq=session.last_seq)

    def closed(self, session: Session, reason: str) -> None:
        """A session freed: by its client (``closed``) or by the server (evicted, with why)."""
        event = "closed" if reason == "closed" else "evicted"
        self.emit(
            event, session=short_id(session.id), model=session.runtime.name, reason=reason, last_seq=session.last_seq
        )

    def refused(self, error: _Error, session: Session | None = None, model: str = "") -> None:
        """A request answered with an error: its code and masked reason, never its payload."""
        fields: dict[str, Any] = {}
        if session is not None:
            fields["session"] = short_id(session.id)
            fields["model"] = session.runtime.name
        elif model:
            fields["model"] = model
        code = getattr(error.code, "name", str(error.code))
        self.emit("refused", **fields, code=code, reason=masked(error.message))

    def stopped(self, *, streams_drained: int, streams_cut: int, sessions_left: int, seconds: float) -> None:
        """The last line of a server: what the drain finished, what it cut, and every event counted.

        Always logged (not rate limited): it is the one line an operator reads after a stop.
        """
        log.info(
            "stopped: drained %d stream(s) in %.1fs, cut %d; %d session(s) were open; session events %s",
            streams_drained,
            seconds,
            streams_cut,
            sessions_left,
            dict(self.counts),
            extra={
                "event": "server_stopped",
                "streams_drained": streams_drained,
                "streams_cut": streams_cut,
                "sessions_left": sessions_left,
                "drain_s": round(seconds, 3),
                "session_events": dict(self.counts),
                "not_logged": dict(self.suppressed),
            },
        )


#: The process's one writer: the server configures it from Settings at start.
events = SessionEvents()
