"""``statestream serve --workers N``: N processes on one address, sessions handed between them.

A resume on a new connection reaches whichever worker the kernel picks (SO_REUSEPORT); the
session's outputs must be those of one uninterrupted run wherever its steps were applied, and a
client without the SDK (raw statestream.v1 stubs, no routing header) must resume the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.client import Client
from service.client.sdk import make_step
from service.logs import configure
from service.session_records import SessionRecord
from service.settings import Settings
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import STATESTREAM, serve_process

TOLERANCE = 1e-5
TEXT = "Now is the winter of our discontent made glorious summer"
RESUMES = 8  # fresh connections, each may reach either worker


def raw_resume(target: str, session_id: str, text: str, first_seq: int) -> list[np.ndarray]:
    """Attaches and steps with the generated stubs only: what grpcurl or another language would send."""
    with grpc.insecure_channel(target) as channel:
        stub = rpc.SessionServiceStub(channel)
        requests = [pb.SessionRequest(attach=pb.AttachSession(session_id=session_id))]
        requests += [pb.SessionRequest(step=make_step(first_seq + i, text=char)) for i, char in enumerate(text)]
        responses = list(stub.Session(iter(requests)))
    assert responses[0].opened.last_applied_seq == first_seq - 1
    return [from_proto(r.result.outputs[0].tensors[0]) for r in responses[1:]]


def test_sessions_resume_across_workers(lm_dir: Path, shipped_lm: OfflineLM) -> None:
    env = {**os.environ, "STATESTREAM_LOG_LEVEL": "WARNING"}
    args = ["--models-dir", str(lm_dir), "--workers", "2", "--grace-s", "2"]
    with serve_process(args, env, stderr=subprocess.DEVNULL) as (process, line, target):
        assert "(2 workers)" in line
        rows: list[np.ndarray] = []
        with Client(target) as client:
            session = client.open("char_lm", return_tensors=["logits"])
            rows += [from_proto(session.step(text=char).outputs[0].tensors[0]) for char in TEXT[:8]]
            session.cancel()  # the stream breaks; the session stays for resume
        seq, per_resume = 9, (len(TEXT) - 8) // RESUMES
        for index in range(RESUMES):  # a new channel each time: a new connection, maybe another worker
            part = TEXT[8 + index * per_resume : 8 + (index + 1) * per_resume]
            if index % 2:
                rows += raw_resume(target, session.id, part, seq)
            else:
                with Client(target) as client:
                    resumed = client.attach(session.id)
                    assert resumed.last_seq == seq - 1
                    rows += [from_proto(resumed.step(text=char).outputs[0].tensors[0]) for char in part]
                    resumed.cancel()
            seq += len(part)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    used = TEXT[: seq - 1]
    np.testing.assert_allclose(np.stack(rows), shipped_lm.logits(used), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": "0"}, r"workers: 0 is out of range \(1-256, or 'auto'\)"),
        ({"workers": "many"}, "workers: 'many' is neither a whole number nor 'auto'"),
        ({"session_store": "localhost:6379"}, "session_store must be a redis://HOST:PORT"),
        ({"session_store": "redis://127.0.0.1:notaport"}, "the port must be a number from 0 to 65535"),
        ({"session_store": "redis://127.0.0.1:70000"}, "the port must be a number from 0 to 65535"),
        ({"session_store": "unix://"}, "give the socket's path"),
        ({"snapshot_secret": "abc"}, "snapshot_secret must be at least 16 bytes, got 3"),
        ({"checkpoint_every": -1}, r"checkpoint_every: -1 is out of range \(0 or more\)"),
    ],
)
def test_scale_settings_are_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--workers", "0"), "--workers: 0 is out of range (1-256, or 'auto')"),
        (("--session-store", "redis://127.0.0.1:notaport"), "the port must be a number from 0 to 65535"),
        (("--snapshot-secret", "abc"), "snapshot_secret must be at least 16 bytes"),
    ],
)
def test_a_bad_scale_flag_is_one_line(lm_dir: Path, flags: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        [*STATESTREAM, "serve", "--models-dir", str(lm_dir), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_an_unreachable_session_store_is_one_line(lm_dir: Path) -> None:
    done = subprocess.run(
        [*STATESTREAM, "serve", "--models-dir", str(lm_dir), "--port", "0", "--session-store", "redis://127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "the session store (ping redis://127.0.0.1:1) is unreachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_auto_is_the_cores() -> None:
    assert Settings(workers="auto").worker_count == len(os.sched_getaffinity(0))
    assert Settings().worker_count == 1 and Settings().checkpoints == 1


def test_a_session_record_round_trips() -> None:
    rows = {"h": np.arange(6, dtype=np.float32).reshape(2, 3), "ctx": np.ones((4,), np.float32)}
    record = SessionRecord(
        session_id="abc", model="m", version="1", caller="alice", top_k=3, return_tensors=("logits",), last_seq=7,
        rows=rows, initial=None, scratch={"logits": np.array([0.5, -1.0], np.float32)},
        reply_kind="step", reply=pb.StepResult(seq=7).SerializeToString(),
    )  # fmt: skip
    back = SessionRecord.from_bytes(record.to_bytes())
    assert (back.session_id, back.caller, back.top_k, back.return_tensors, back.last_seq) == (
        "abc",
        "alice",
        3,
        ("logits",),
        7,
    )
    assert back.initial is None and back.reply_kind == "step"
    assert pb.StepResult.FromString(back.reply).seq == 7
    for name, value in rows.items():
        np.testing.assert_array_equal(back.rows[name], value)
    np.testing.assert_array_equal(back.scratch["logits"], [0.5, -1.0])


def test_each_workers_log_lines_name_the_worker(lm_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    args = ["--models-dir", str(lm_dir), "--workers", "2", "--log-json", "--grace-s", "1"]
    with log.open("w") as sink, serve_process(args, env, stderr=sink) as (process, _, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    loaded = [entry for entry in entries if entry["msg"].startswith("loaded model char_lm")]
    assert sorted(entry["worker"] for entry in loaded) == [0, 1]  # both workers loaded it, and said which they are


def test_a_workers_plain_log_lines_name_the_worker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # configure replaces them; put them back after
    monkeypatch.setattr(root, "level", root.level)
    configure("INFO", False, worker=1)
    logging.getLogger("service.test").info("ready")
    assert capsys.readouterr().err.rstrip().endswith(" INFO worker 1 service.test: ready")
