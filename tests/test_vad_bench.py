"""``statestream bench --vad-calls``, smoked: a tiny ladder, a short window, both servers.

Speed is not asserted (the machine is shared; docs/benchmarks.md records the measurements): the
smoke checks that every rung is measured and reported, every frame of every call is answered
without error, and that the baseline does the same work as statestream: its answers equal
silero-vad's OnnxWrapper, so the ladder compares like with like.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import psutil
import pytest

from loadtest import bench, vad_calls, vad_hotpath
from loadtest.servers import thread_cpu_seconds, thread_name
from loadtest.vad_calls import started
from service.client.sdk import Client
from tests.conftest import ROOT
from tests.test_vad_driver import feed
from tests.test_vad_silero import wrapper_probabilities
from tests.vad_audio import speech_with_noise


def test_the_vad_ladder_measures_both_servers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--vad-calls", "--ladder", "2", "--duration-s", "1", "--load-processes", "1", "--json"]
    assert bench.main([*argv, "--models-dir", str(ROOT / "models")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rungs = [row for row in rows if row.get("kind") != "machine"]
    assert [row["kind"] for row in rows[len(rungs) :]] == ["machine"]  # the noise guard's readings, last
    assert [(r["server"], r["calls"]) for r in rungs] == [("statestream", 2), ("baseline", 2)]
    for rung in rungs:
        assert rung["errors"] == 0 and rung["lost"] == 0, rung
        assert math.isfinite(rung["worst_p99_ms"]) and rung["worst_p99_ms"] > 0
        assert rung["loop_cpu"] > 0 and rung["load_cpu"] > 0 and rung["grpc_cpu"] >= 0 and rung["ort_cpu"] >= 0
    table = vad_calls.format_ladder([vad_calls.Rung(**{k: v for k, v in r.items() if k != "held"}) for r in rungs])
    assert (
        "ORT worker | gRPC threads | load processes" in table and "largest N held: statestream 2, baseline 2" in table
    )


def test_the_cpu_split_tells_grpcs_threads_from_the_servers_own() -> None:
    """A real server's threads: its loop, its ORT worker (busy: chunks past the direct path), and
    gRPC's threads: its named ones and grpc.aio's poller, a Python thread found waiting in epoll."""
    with started("statestream", ROOT / "models") as server, Client(server.target) as client:
        (poller,) = server.pollers
        session = client.open("silero_vad")
        for _ in range(40):  # 40 chunks of 8 frames: past the direct path, on the ORT worker thread
            session.step(tensors={"audio": np.zeros(8 * 512, np.int16)})
        split = server.thread_cpu_seconds()
        names = {thread_name(server.pid, t.id) for t in psutil.Process(server.pid).threads()}
        poller_named_as_process = thread_name(server.pid, poller) == thread_name(server.pid, server.pid)
        alone = thread_cpu_seconds(server.pid)  # without the poller: it counts as one of the process's own
    assert list(split) == ["loop", "python", "grpc"]
    assert split["loop"] > 0 and split["python"] > 0 and split["grpc"] >= 0
    assert "grpc_global_tim" in names and len(names) > 2  # the process's name, and gRPC's threads' own
    assert poller_named_as_process  # unnamed: only its wait tells it apart
    assert math.isclose(sum(alone.values()), sum(split.values()), abs_tol=0.05)  # moved, not lost


@pytest.mark.parametrize("via", ["step", "run"])
def test_the_baseline_answers_as_onnx_wrapper(tmp_path: Path, via: str) -> None:
    speech = speech_with_noise(tmp_path)[: 3 * 16000]
    with started("baseline", ROOT / "models") as baseline, Client(baseline.target) as client:
        probabilities, _ = feed(client.open("silero_vad"), speech, 320, via=via)
    np.testing.assert_allclose(probabilities, wrapper_probabilities(speech), rtol=0, atol=1e-5)


def test_the_in_process_comparison_measures_both_paths_round_by_round(tmp_path: Path) -> None:
    """``python -m loadtest.vad_hotpath``, smoked: each round measures Step and Run for each chunk
    size (every frame answered, or it raises), in alternating order, and the summary has their ratio."""
    (tmp_path / "silero_vad").symlink_to(ROOT / "models" / "silero_vad")
    rows = asyncio.run(vad_hotpath.compare(tmp_path, "silero_vad", 3, [20.0, 32.0], 4, 2))
    assert [(r["round"], r["chunk_ms"], r["path"]) for r in rows] == [
        (1, 20.0, "step"), (1, 20.0, "run"), (1, 32.0, "step"), (1, 32.0, "run"),
        (2, 20.0, "run"), (2, 20.0, "step"), (2, 32.0, "run"), (2, 32.0, "step"),
    ]  # fmt: skip
    assert {r["frames"] for r in rows if r["chunk_ms"] == 32.0} == {3 * 4}  # a frame per 32 ms chunk
    assert {r["frames"] for r in rows if r["chunk_ms"] == 20.0} == {3 * (4 * 320 // 512)}
    assert all(r["cpu_us_per_frame"] > 0 for r in rows)
    lines = vad_hotpath.summary(rows)
    assert len(lines) == 2 and lines[0].startswith("20 ms chunks") and "run/step" in lines[1]
