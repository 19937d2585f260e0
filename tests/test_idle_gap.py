"""``python -m loadtest.idle_gap``: the machine's cost of idling, measured for a fixed workload."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtest import idle_gap


def test_every_workload_is_measured_at_every_rate_round_by_round() -> None:
    rows = asyncio.run(idle_gap.measure_all(["none", "both"], [0.0, 1000.0], 10, 2))
    assert [(row["workload"], row["rate"]) for row in rows] == [("none", 0.0), ("none", 1000.0), ("both", 0.0),
                                                                ("both", 1000.0)] * 2  # fmt: skip
    for row in rows:
        assert 0 < row["work_cpu_us_per_step"] <= row["loop_cpu_us_per_step"]


def test_a_paced_measurement_waits_for_each_release() -> None:
    started = time.perf_counter()
    asyncio.run(idle_gap.measure("numpy", 200.0, 5))
    assert time.perf_counter() - started >= 4 / 200  # the fifth step is released 20 ms after the first


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--workloads", "none,disk"], "--workloads: 'disk' is not one of none, python, numpy, both"),
        (["--workloads", "none,none"], "--workloads: none is given twice"),
        (["--rates", "0,fast"], "--rates: 'fast' is not a number"),
        (["--rates", "-5"], "--rates: -5 is out of range (0-1000000)"),
        (["--rates", "0,nan"], "--rates: 'nan' is not a finite number"),
        (["--steps", "0"], "--steps: 0 is out of range (1 or more)"),
    ],
)
def test_the_probe_refuses_what_it_cannot_run(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        idle_gap.main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
