"""The Locust users drive every kind that ships against a real server, and the SLO runner reads their results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest import slo
from loadtest.workloads import Workload, declared
from service import tasks
from service.command import EXIT_USAGE, CommandError
from service.contract import Manifest

ROOT = Path(__file__).resolve().parent.parent

#: Users for the runner's own test: each makes one request when it starts and one when it stops,
#: and waits out the run in between.
COUNTED_USERS = """
from locust import User, constant, task


class CountedUser(User):
    wait_time = constant(600)

    def report(self, name):
        self.environment.events.request.fire(
            request_type="test", name=name, response_time=1.0, response_length=0, exception=None, context={}
        )

    @task
    def started(self):
        self.report("started")

    def on_stop(self):
        self.report("stopped")
"""


@pytest.fixture(scope="module")
def workloads() -> list[Workload]:
    """The locustfile's users as they declared themselves (read in a child process: Locust patches its importer)."""
    return declared()


def test_every_kind_that_ships_has_a_locust_user(workloads: list[Workload]) -> None:
    driven = {Manifest.load(ROOT / "models" / each.model).task for each in workloads}
    # The shipped drivers only: a test's own kind (tests/accumulator_driver.py) registers here too.
    served = set(tasks.shipped_tasks())
    assert served <= driven, f"no Locust user drives {sorted(served - driven)}"


def test_locust_users_run_every_workload_without_failures(
    workloads: list[Workload], models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The default --users is the sum of the user classes' weights, so each class runs. The
    # objectives are set out of reach on purpose: this checks the machinery, not this machine's
    # speed. The models other than the tiny char_lm are the shipped ones, copied (read-only use).
    for model in {each.model for each in workloads} - {path.name for path in models_dir.iterdir()}:
        shutil.copytree(ROOT / "models" / model, models_dir / model)
    objectives = [name for each in workloads for name in each.slo_ms]
    relaxed = [f"--slo={name}=600000" for name in objectives]
    code = slo.main(["--run-time", "6s", "--models-dir", str(models_dir), "--json", *relaxed])
    printed = capfd.readouterr()  # file descriptors: Locust and the server are child processes
    rows = {row["name"]: row for row in map(json.loads, printed.out.splitlines()) if row}
    assert code == 0
    # Users stopped mid-read at the end of the run cancel their calls: once, each printed a chain
    # of tracebacks ending in "Internal gRPC call error 8" while the run still passed.
    assert "Traceback" not in printed.err and "call error" not in printed.err
    assert set(rows) == set(objectives)
    for row in rows.values():
        assert row["requests"] > 0 and row["failures"] == 0 and row["ok"]
        assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_the_table_counts_every_request_locust_counted(tmp_path: Path) -> None:
    # Once the table came from Locust's CSV, which it rewrites only every second: the requests of
    # the run's last moments (here, every user's "stopped") were missing, and the runner's table
    # disagreed with the one Locust printed beside it.
    locustfile = tmp_path / "counted.py"
    locustfile.write_text(COUNTED_USERS)
    stats = slo.run_locust(locustfile, users=3, run_time_s=1, host="127.0.0.1:9", work=tmp_path)
    rows = {row.name: row for row in slo.read_stats(stats, {})}
    assert {name: row.requests for name, row in rows.items()} == {"started": 3, "stopped": 3}


def test_percentiles_follow_locusts_rule() -> None:
    # 98 answers in 5 ms and 2 in 80 ms: 99% finished within 80 ms, half within 5.
    histogram = {5.0: 98, 80.0: 2}
    assert slo.percentile_ms(histogram, 0.99) == 80.0
    assert slo.percentile_ms(histogram, 0.5) == 5.0
    assert slo.percentile_ms({}, 0.99) == 0.0


def test_a_missed_slo_or_a_failure_fails_its_row(tmp_path: Path) -> None:
    def entry(name: str, failures: int, times: dict[str, int]) -> dict[str, object]:
        return {"name": name, "num_requests": sum(times.values()), "num_failures": failures,
                "response_times": times, "start_time": 100.0, "last_request_timestamp": 110.0}  # fmt: skip

    stats = tmp_path / "locust.json"
    stats.write_text(json.dumps([entry("step", 0, {"10": 90, "80": 10}), entry("chunk16", 2, {"10": 100})]))
    rows = {r.name: r for r in slo.read_stats(stats, {"step": 50.0, "chunk16": 100.0})}
    assert not rows["step"].ok and rows["step"].p99_ms == 80.0  # p99 80 ms over a 50 ms objective
    assert not rows["chunk16"].ok and rows["chunk16"].p99_ms == 10.0  # in time, but 2 failures
    assert rows["step"].requests_per_s == 10.0  # 100 requests over the 10 s the run's requests spanned


def test_an_objective_nobody_measured_is_a_failing_not_run_row() -> None:
    measured = [slo.Row("step", 10, 0, 1.0, 5.0, 9.0, 100.0, True)]
    missing = slo.not_run(measured, {"step": 100.0, "generate_32": 1000.0})
    assert [(r.name, r.requests, r.ok) for r in missing] == [("generate_32", 0, False)]


def test_an_objective_for_a_request_no_user_reports_is_a_usage_error(workloads: list[Workload]) -> None:
    with pytest.raises(CommandError, match="no Locust user reports it") as refused:
        slo.objectives(workloads, [("stepp", 50.0)])
    assert refused.value.exit_code == EXIT_USAGE
    name = next(iter(workloads[0].slo_ms))
    assert slo.objectives(workloads, [(name, 7.0)])[name] == 7.0
