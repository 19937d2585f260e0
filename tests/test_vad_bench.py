"""``statestream bench --vad-calls``, smoked: a tiny ladder, a short window, both servers.

Speed is not asserted (the machine is shared; docs/benchmarks.md records the measurements): the
smoke checks that every rung is measured and reported, every frame of every call is answered
without error, and that the baseline does the same work as statestream: its answers equal
silero-vad's OnnxWrapper, so the ladder compares like with like.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from loadtest import bench
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
        assert rung["loop_cpu"] > 0 and rung["load_cpu"] > 0


def test_the_baseline_answers_as_onnx_wrapper(tmp_path: Path) -> None:
    speech = speech_with_noise(tmp_path)[: 3 * 16000]
    with started("baseline", ROOT / "models") as baseline, Client(baseline.target) as client:
        probabilities, _ = feed(client.open("silero_vad"), speech, 320)
    np.testing.assert_allclose(probabilities, wrapper_probabilities(speech), rtol=0, atol=1e-5)
