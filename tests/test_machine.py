"""The bench's noise guard (issue 26): /proc read right, and no target judged on a busy machine.

The parsers are fed fixed text as Linux writes it; the guard's verdicts are checked on the
targets the bench really builds, and a tiny ``statestream bench`` run against a pretend /proc
shows the verdict in both outputs (the run's speed is not looked at).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest import bench, machine
from loadtest.bench import main, targets_of
from loadtest.cells import Plan, Row, Target
from loadtest.machine import CpuTimes, Reading, RunWindow, parse_cpu_times, parse_loadavg, read_machine, steal_share
from loadtest.scale import SCALE_STREAMS, scale_targets
from tests.fake_proc import STAT, pretend_machine, write_proc


def test_the_load_averages_are_the_first_three_fields_of_proc_loadavg() -> None:
    assert parse_loadavg("1.09 1.54 1.52 3/151 12341\n") == (1.09, 1.54, 1.52)
    with pytest.raises(ValueError, match="not a /proc/loadavg line"):
        parse_loadavg("1.09\n")


def test_cpu_times_come_from_the_all_cpu_line_and_leave_guest_time_inside_user_time() -> None:
    assert parse_cpu_times(STAT) == CpuTimes(total=9560, steal=30)  # 1000+500+8000+10+20+30, steal 30
    # guest and guest_nice (the last two columns) are already counted in user and nice (proc(5)).
    assert parse_cpu_times("cpu  1000 0 500 8000 10 0 20 30 400 7\n") == CpuTimes(total=9560, steal=30)
    assert parse_cpu_times("cpu  1000 0 500 8000 10 0 20\n") is None  # a kernel without a steal column
    with pytest.raises(ValueError, match="no 'cpu' line"):
        parse_cpu_times("cpu0 1 2 3 4 5 6 7 8\nintr 1\n")


def test_steal_is_a_share_of_all_cpu_time_between_the_two_readings() -> None:
    assert steal_share(CpuTimes(9560, 30), CpuTimes(10560, 80)) == pytest.approx(0.05)  # 50 of 1000 ticks
    assert math.isnan(steal_share(CpuTimes(9560, 30), CpuTimes(9560, 30)))  # no time passed
    assert math.isnan(steal_share(None, CpuTimes(10560, 80)))


def test_the_machine_is_read_from_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "PROC", write_proc(tmp_path, 3.25))
    assert read_machine() == Reading((3.25, 0.5, 0.25), CpuTimes(9560, 30))


def window(load_1m: float, cores: int = 2) -> RunWindow:
    before = Reading((load_1m, 0.5, 0.25), CpuTimes(9560, 30))
    return RunWindow(cores, before, Reading((2.5, 1.0, 0.5), CpuTimes(10560, 80)))


def test_busy_means_a_1_minute_load_above_half_the_cores_before_the_run() -> None:
    assert not window(1.0).busy and window(1.01).busy
    assert not window(3.9, cores=8).busy and window(4.1, cores=8).busy
    assert window(0.2).to_json() == {
        "kind": "machine",
        "cores": 2,
        "busy_above_load_1m": 1.0,
        "before": {"load_1m": 0.2, "load_5m": 0.5, "load_15m": 0.25},
        "after": {"load_1m": 2.5, "load_5m": 1.0, "load_15m": 0.5},
        "steal_share": 0.05,
        "busy": False,
        "targets_judged": True,
    }
    text = window(1.5).describe()
    assert "before the run: load 1.50 / 0.50 / 0.25 (1, 5, 15 min)" in text
    assert "after the run:  load 2.50 / 1.00 / 0.50 (1, 5, 15 min); steal 5.0 % of CPU time" in text
    assert text.endswith("busy (1-min load 1.50 > 1): targets not judged")


def closed_loop_targets() -> list[Target]:
    """The bench's own targets for a run where some are met and some missed."""

    def row(variant: str, streams: int, rate: float, p50: float) -> Row:
        return Row(variant, streams, 1, rate, rate, p50, 2 * p50)

    rows = [row("naive", 1, 1000, 0.8), row("statestream", 1, 1000, 0.7), row("minimal", 1, 1000, 0.5)]
    rows += [row("echo", 256, 4000, 60), row("naive", 256, 1000, 250), row("statestream", 256, 3500, 70)]
    targets = targets_of(rows, None, Plan(streams=(1, 256), variants=("echo", "naive", "minimal", "statestream")))
    assert {t.verdict for t in targets} == {"met", "missed"}  # both kinds are there to be overruled
    return targets


def test_a_busy_machine_turns_every_target_into_not_judged_and_a_quiet_one_keeps_the_verdicts() -> None:
    targets = closed_loop_targets()
    assert window(0.4).judge(targets) == targets
    judged = window(1.5).judge(targets)
    assert [t.name for t in judged] == [t.name for t in targets]
    assert [t.value for t in judged] == [t.value for t in targets]  # still measured and shown
    for target in judged:
        assert target.verdict == "not judged: machine busy" and not target.judged
        assert target.to_json()["met"] is None and target.to_json()["judged"] is False


def test_a_scale_target_keeps_its_own_reason_for_not_being_judged_on_a_busy_machine() -> None:
    rows = [Row(f"workers {w}", n, 1, 1000.0 * w, 1000.0 * w, 1.0, 2.0) for w in (1, 2) for n in SCALE_STREAMS]
    targets = window(1.5).judge(scale_targets(rows, cores=2))
    assert [t.verdict for t in targets] == [
        "not judged: 2 cores, 1 taken by the load generator, 1 free for 2 workers",
        "not judged: 2 cores, 2 taken by the load generator, 0 free for 2 workers",
    ]


def test_the_bench_help_says_how_targets_are_judged() -> None:
    help_text = bench.parser().format_help()
    assert "/proc/loadavg" in help_text and "machine busy" in help_text and "half the machine's cores" in help_text


@pytest.mark.parametrize("output", ["json", "text"])
def test_a_bench_run_on_a_busy_machine_says_so_and_judges_no_target(
    tiny_lm_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
) -> None:
    pretend_machine(monkeypatch, tmp_path / "proc", busy=True)
    arguments = ["--models-dir", str(tiny_lm_dir), "--variants", "naive,minimal,statestream", "--streams", "1"]
    timing = ["--repeats", "1", "--duration-s", "0.3", "--warmup-s", "0.1", "--memory-sessions", "0"]
    assert main([*arguments, *timing, *(["--json"] if output == "json" else [])]) == 0
    printed = capsys.readouterr()
    assert "busy, the targets will not be judged" in printed.err  # said before the run starts
    cores = machine.machine_cores()
    if output == "json":
        rows = [json.loads(line) for line in printed.out.splitlines() if line.strip()]
        (reading,) = [r for r in rows if r["kind"] == "machine"]
        assert reading["busy"] is True and reading["targets_judged"] is False
        assert reading["before"]["load_1m"] == 2.0 * cores and reading["cores"] == cores
        targets = [r for r in rows if r["kind"] == "target"]
        assert len(targets) == 2  # p50 against naive and against minimal at 1 stream
        assert all(t["verdict"] == "not judged: machine busy" and t["met"] is None for t in targets)
    else:
        lines = printed.out.splitlines()
        assert f"  busy (1-min load {2.0 * cores:.2f} > {cores / 2:g}): targets not judged" in lines
        verdicts = [line for line in lines if line.startswith("  [")]
        assert len(verdicts) == 2 and all(v.startswith("  [not judged: machine busy] ") for v in verdicts)
