"""The Locust users drive every workload against a real server, and the SLO runner reads their results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest import slo

ROOT = Path(__file__).resolve().parent.parent


def test_locust_users_run_every_workload_without_failures(models_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # 13 users = the sum of the user classes' weights, so each class runs. SLOs are set out of reach
    # on purpose: this checks the machinery, not this machine's speed. The completion user's
    # memory, the speaker models, the forecaster, the captioner and the translator are the shipped ones, copied (read-only use of models/).
    for name in ("hopfield_letters", "speakers", "speakers_bi", "laser", "captioner", "dates"):
        shutil.copytree(ROOT / "models" / name, models_dir / name)
    relaxed = [f"--slo={name}=1e9" for name in slo.DEFAULT_SLO_MS]
    code = slo.main(["--users", "13", "--run-time", "6s", "--models-dir", str(models_dir), "--json", *relaxed])
    printed = capfd.readouterr()  # file descriptors: Locust and the server are child processes
    rows = {row["name"]: row for row in map(json.loads, printed.out.splitlines()) if row}
    assert code == 0
    # Users stopped mid-read at the end of the run cancel their calls: once, each printed a chain
    # of tracebacks ending in "Internal gRPC call error 8" while the run still passed.
    assert "Traceback" not in printed.err and "call error" not in printed.err
    assert set(rows) == set(slo.DEFAULT_SLO_MS)
    for row in rows.values():
        assert row["requests"] > 0 and row["failures"] == 0 and row["ok"]
        assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_an_objective_nobody_measured_is_a_failing_not_run_row() -> None:
    measured = [slo.Row("step", 10, 0, 1.0, 5.0, 9.0, 100.0, True)]
    missing = slo.not_run(measured, {"step": 100.0, "generate_32": 1000.0})
    assert [(r.name, r.requests, r.ok) for r in missing] == [("generate_32", 0, False)]


def test_a_missed_slo_fails_the_run(tmp_path: Path) -> None:
    stats = tmp_path / "stats.csv"
    stats.write_text(
        "Type,Name,Request Count,Failure Count,Requests/s,50%,99%\n"
        "grpc,step,100,0,50.0,10,80\n"
        "grpc,chunk16,100,2,50.0,10,20\n"
        ",Aggregated,200,2,100.0,10,80\n"
    )
    rows = {r.name: r for r in slo.read_stats(stats, {"step": 50.0, "chunk16": 100.0})}
    assert not rows["step"].ok  # p99 80 ms over a 50 ms objective
    assert not rows["chunk16"].ok  # failures
    assert "Aggregated" not in rows
