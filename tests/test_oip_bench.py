"""Tiny runs of the bench's ``oip`` variant and of the in-process harness's ``oip`` protocol.

The windows are far too short to say anything about speed (nothing here asserts one); these
prove each runs end to end against the native stream on the same server, without errors.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loadtest import oip_load
from loadtest.bench import main
from loadtest.hotpath import drive
from tests.fake_proc import pretend_machine


def test_the_oip_variant_runs_beside_the_native_stream_and_reports_its_ratio(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pretend_machine(monkeypatch, tmp_path / "proc", busy=False)  # so that its target is judged
    arguments = ["--models-dir", str(tiny_lm_dir), "--json", "--variants", "statestream,oip", "--streams", "3"]
    timing = ["--repeats", "1", "--duration-s", "0.4", "--warmup-s", "0.1", "--memory-sessions", "0"]
    assert main([*arguments, *timing]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    load = {r["variant"]: r for r in rows if r["kind"] == "load"}
    assert set(load) == {"statestream", "oip"}
    oip = load["oip"]
    assert oip["streams"] == 3 and oip["steps_per_s"] > 0 and oip.get("errors", 0) == 0
    assert oip["response_bytes"] > 0
    (target,) = [r for r in rows if r["kind"] == "target"]
    assert target["target"] == "oip steps/s / statestream steps/s at 3 streams" and isinstance(target["met"], bool)


def test_an_error_answer_is_told_from_a_result_by_its_first_byte() -> None:
    from tritonclient.grpc import service_pb2

    error = service_pb2.ModelStreamInferResponse(error_message="INVALID_ARGUMENT: no").SerializeToString()
    result = service_pb2.ModelStreamInferResponse(
        infer_response=service_pb2.ModelInferResponse(model_name="m")
    ).SerializeToString()
    assert oip_load.is_error(error) == 1 and oip_load.is_error(result) == 0


def test_the_in_process_harness_drives_oip_sequences_beside_native_streams(tiny_lm_dir: Path) -> None:
    rows = asyncio.run(drive(tiny_lm_dir, "char_lm", [(2, 3)], protocols=("statestream", "oip"), rounds=2))
    assert [(r["protocol"], r["streams"]) for r in rows] == [("statestream", 2), ("oip", 2)] * 2
    # every request answered without an error (the harness raises on one): 3 steps a stream, and
    # each OIP sequence's ending request
    assert [r["steps"] for r in rows] == [6, 8] * 2
    assert all(r["cpu_us_per_step"] > 0 for r in rows)
