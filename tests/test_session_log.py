"""Operators' session log lines: one per event, rate limited with the rest counted, never the payload."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from service.client import Client, StepFailed
from service.errors import InvalidArgument
from service.session_log import SessionEvents, events, masked
from service.settings import Settings
from tests.servers import ServerThread


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_session(session_id: str = "abcdefghijklmnop") -> Any:
    return SimpleNamespace(id=session_id, owner="alice", last_seq=3, runtime=SimpleNamespace(name="char_lm"))


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "statestream.sessions"]


def test_each_event_is_one_line_with_the_session_id_prefix(caplog: pytest.LogCaptureFixture) -> None:
    events = SessionEvents(per_second=100, clock=Clock())
    session = fake_session()
    with caplog.at_level(logging.INFO, logger="statestream.sessions"):
        events.opened(session)
        events.resumed(session)
        events.closed(session, "closed")
        events.closed(session, "detach_ttl")
        events.refused(InvalidArgument("character 'é' at position 0 is not in the model's vocabulary"), session)
    lines = records(caplog)
    assert [r.event for r in lines] == [  # type: ignore[attr-defined]
        "session_opened",
        "session_resumed",
        "session_closed",
        "session_evicted",
        "session_refused",
    ]
    assert all(r.session == "abcdefgh" for r in lines)  # type: ignore[attr-defined]
    assert lines[-1].code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert "é" not in lines[-1].getMessage() and "'…'" in lines[-1].getMessage()
    assert events.counts == {"opened": 1, "resumed": 1, "closed": 1, "evicted": 1, "refused": 1}


def test_events_over_the_rate_are_counted_and_reported_on_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    events = SessionEvents(per_second=2, clock=clock)
    with caplog.at_level(logging.INFO, logger="statestream.sessions"):
        for _ in range(10):  # a burst of 10 at one instant: 2 logged (the burst size), 8 counted
            events.opened(fake_session())
        assert len(records(caplog)) == 2
        clock.now += 1.0  # a second later, two more lines are allowed
        events.closed(fake_session(), "closed")
    lines = records(caplog)
    assert len(lines) == 3
    assert lines[-1].not_logged == {"opened": 8}  # type: ignore[attr-defined]
    assert events.counts["opened"] == 10 and not events.suppressed


def test_a_rate_of_zero_logs_no_event_but_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    events = SessionEvents(per_second=0, clock=Clock())
    with caplog.at_level(logging.INFO, logger="statestream.sessions"):
        events.opened(fake_session())
        events.refused(SimpleNamespace(code=grpc.StatusCode.NOT_FOUND, message="no such session"))
        events.stopped(streams_drained=1, streams_cut=0, sessions_left=2, seconds=0.5)
    lines = records(caplog)
    assert len(lines) == 1  # the final line is always logged
    assert lines[0].session_events == {"opened": 1, "refused": 1}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("model 'secret-model' is not loaded; loaded: ['char_lm']", "model '…' is not loaded; loaded: ['…']"),
        ("character '\"' at position 2", "character '…' at position 2"),
        ("limit max_chunk=4096 reached", "limit max_chunk=4096 reached"),
    ],
)
def test_quoted_request_values_are_masked(reason: str, shown: str) -> None:
    assert masked(reason) == shown


@pytest.fixture
def every_event_logged() -> Iterator[None]:
    """The process's writer with no rate limit: other tests' sessions must not use up this test's lines."""
    events.configure(1e9)
    yield
    events.configure(Settings().log_session_events_per_s)


@pytest.mark.usefixtures("every_event_logged")
def test_a_served_session_logs_opened_resumed_refused_and_closed(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="statestream.sessions"), Client(server.target) as client:
        session = client.open("char_lm")
        session.step(text="a")
        session.cancel()  # the stream breaks; the next step resumes the session on a new one
        session.step(text="b")
        with pytest.raises(StepFailed):
            session.step(text="\u00e9")
        session.close()
    prefix = session.id[:8]
    mine = [r for r in records(caplog) if getattr(r, "session", None) == prefix]
    assert [r.event for r in mine] == [  # type: ignore[attr-defined]
        "session_opened",
        "session_resumed",
        "session_refused",
        "session_closed",
    ]
    assert session.id not in caplog.text  # only the prefix
