"""A tiny run of the benchmark machinery: every variant starts, is driven, reports sane rows, and stops.

Durations are far too short to mean anything about speed, and nothing here asserts a speed: the
benchmark is a command (``statestream bench``), not a test. This only proves that the command
works end to end and that its JSON rows have the documented fields.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from loadtest import bench, gpu_bench, load, lstm256, messages, profile_paced, servers, slo
from loadtest.bench import main, targets_of
from loadtest.cells import BY_THREAD, Plan, Row
from loadtest.durable_hotpath import VariantList
from loadtest.flags import CountList, NameList, Objective, RunTime
from service import answer_bytes, grpc_environment
from service.api import statestream_pb2 as pb
from service.command import EXIT_INTERRUPTED, EXIT_USAGE, CommandError, InRange, Parser, nonempty_path
from service.contract import Manifest
from service.registry import LoadedModel
from service.settings import Settings
from service.tasks import driver_class
from service.tensors import from_proto
from tests.fake_proc import pretend_machine

VARIANTS = {"echo", "naive", "minimal", "statestream", "chunked", "multiplexed", "ort"}
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


def test_hand_encoded_requests_are_what_protobuf_would_send() -> None:
    request = pb.SessionRequest.FromString(messages.session_step_request(300, messages.text_input(b"hey"), True))
    assert request.step == pb.Step(seq=300, text="hey", last_only=True)
    prefixes = [messages.session_step_prefix("id-a"), messages.session_step_prefix("id-b")]
    inputs = [messages.text_input(b"x"), messages.text_input(b"yz")]
    multiplex = pb.MultiplexRequest.FromString(messages.multiplex_request(prefixes, 7, inputs))
    assert [(s.session_id, s.step.seq, s.step.text) for s in multiplex.steps] == [("id-a", 7, "x"), ("id-b", 7, "yz")]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensors = pb.SessionRequest.FromString(messages.session_step_request(2, messages.tensors_input({"x": x})))
    assert tensors.step.seq == 2 and list(tensors.step.tensors.tensors[0].shape) == [2, 3]
    assert np.array_equal(from_proto(tensors.step.tensors.tensors[0]), x)
    assert answer_bytes.varint(2**40 + 5) == pb.Step(seq=2**40 + 5).SerializeToString()[1:]


def test_a_tiny_bench_run_reports_every_variant_and_stops_its_servers(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pretend_machine(monkeypatch, tmp_path / "proc", busy=False)  # so that the targets are judged
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main(
        [
            "--models-dir",
            str(tiny_lm_dir),
            "--json",
            "--streams",
            "1,4",
            "--repeats",
            "1",
            "--duration-s",
            "0.4",
            "--warmup-s",
            "0.1",
            "--memory-sessions",
            "200",
            "--chunk-streams",
            "4",
            "--multiplex-streams",
            "2",
            "--per-message",
            "8",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    load = [r for r in rows if r["kind"] in ("load", "ort")]
    assert {r["variant"] for r in load} == VARIANTS
    for row in load:
        for name in ("variant", "streams", "steps_per_s", "p50_ms", "p99_ms"):
            assert name in row, f"{row['variant']} row lacks {name}"
        assert row["steps_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row.get("errors", 0) == 0
    per_step = {(r["variant"], r["streams"]) for r in load if r["kind"] == "load" and r["steps_per_message"] == 1}
    assert {("echo", 1), ("naive", 4), ("minimal", 1), ("statestream", 1), ("statestream", 4)} <= per_step
    chunked = next(r for r in load if r["variant"] == "chunked")
    assert chunked["steps_per_message"] == 16
    assert math.isclose(chunked["steps_per_s"], 16 * chunked["messages_per_s"], rel_tol=0.01)
    # Answers of the echo and the real server are about the same size (same proto, same top-k).
    echo = next(r for r in load if r["variant"] == "echo")
    ours = next(r for r in load if r["variant"] == "statestream")
    minimal = next(r for r in load if r["variant"] == "minimal")
    assert abs(echo["response_bytes"] - ours["response_bytes"]) <= 8
    assert abs(minimal["response_bytes"] - ours["response_bytes"]) <= 8  # the same top-5 answers
    assert set(ours["vs"]) == {"echo_messages_per_s", "naive_steps_per_s", "minimal_steps_per_s", "minimal_p50"}
    for row in load:
        assert_split_sums_to_the_total(row)
    # grpc.aio's poller is gRPC's: echo, which starts no thread of its own, has nothing in "python".
    assert echo["cpu_us_per_step_by_thread"]["python"] == 0
    memory = next(r for r in rows if r["kind"] == "memory")
    assert memory["sessions"] == 200 and memory["state_bytes_per_session"] > 0
    targets = [r for r in rows if r["kind"] == "target"]
    assert len(targets) == 8 and all(isinstance(t["met"], bool) and t["judged"] for t in targets)
    assert {t["verdict"] for t in targets} <= {"met", "missed"}
    (reading,) = [r for r in rows if r["kind"] == "machine"]
    assert reading["busy"] is False and reading["targets_judged"] is True
    # Issue 14's against the bare server: only its 1-stream p50 here (no minimal row at 16 or 256).
    assert [t["target"] for t in targets if "minimal" in t["target"]] == ["statestream p50 / minimal p50 at 1 stream"]
    # Every server and load worker the run started is gone (multiprocessing's own resource tracker stays).
    leftover = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
    alive = [psutil.Process(p) for p in leftover if psutil.pid_exists(p)]
    running = [p.cmdline() for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not [c for c in running if not any("resource_tracker" in part for part in c)]


def assert_split_sums_to_the_total(row: dict[str, Any], window_s: float = 0.4) -> None:
    """A load row's server CPU per step by thread: the three buckets, summing to about its total.

    /proc counts CPU time in clock ticks, per thread for the split and once for the process, so
    they may differ by a few ticks over the window, on top of 15 %; ORT rows (no server) have none.
    """
    if row["kind"] == "ort":
        assert "cpu_us_per_step_by_thread" not in row
        return
    split = row["cpu_us_per_step_by_thread"]
    assert list(split) == ["loop", "python", "grpc"] and all(v >= 0 for v in split.values()), row
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    steps = row["steps_per_s"] * window_s
    total = row["server_cpu_us_per_step"]
    assert abs(sum(split.values()) - total) <= 0.15 * total + 5 * tick_us / steps, row


def test_the_minimal_variant_on_a_tensor_model_reports_statestream_against_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--model lstm256 --variants minimal,statestream``: tensor steps both ways, and the ratio per N."""
    code = main(
        [
            *("--models-dir", str(SHIPPED_MODELS), "--model", "lstm256", "--json", "--streams", "1,4"),
            *("--repeats", "1", "--duration-s", "0.4", "--warmup-s", "0.1", "--memory-sessions", "0"),
            *("--variants", "minimal,statestream"),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    load = {(r["variant"], r["streams"]): r for r in rows if r["kind"] == "load"}
    assert set(load) == {("minimal", 1), ("minimal", 4), ("statestream", 1), ("statestream", 4)}
    assert not [r for r in rows if r["kind"] in ("ort", "memory")]  # nothing measured that was not asked for
    for (variant, streams), row in load.items():
        assert row["errors"] == 0 and row["steps_per_s"] > 0, (variant, streams)
        # Each answer carries y: 64 float32 (256 bytes) plus its framing, from both servers alike.
        assert 256 < row["response_bytes"] < 320, (variant, row["response_bytes"])
        if variant == "statestream":
            minimal = load[("minimal", streams)]
            vs = row["vs"]
            assert math.isclose(vs["minimal_steps_per_s"], row["steps_per_s"] / minimal["steps_per_s"], rel_tol=0.01)
            assert math.isclose(vs["minimal_p50"], row["p50_ms"] / minimal["p50_ms"], rel_tol=0.01)


def test_issue_14s_targets_are_read_against_the_bare_server_with_echos_ceiling_beside_them() -> None:
    def row(variant: str, streams: int, rate: float, p50: float) -> Row:
        return Row(variant, streams, 1, rate, rate, p50, 2 * p50)

    rows = [
        row("minimal", 1, 1000, 0.70),
        row("statestream", 1, 950, 0.84),
        row("minimal", 16, 2000, 8.0),
        row("statestream", 16, 2100, 7.5),
        row("echo", 256, 4400, 50.0),
        row("minimal", 256, 2000, 120.0),
        row("statestream", 256, 3000, 90.0),
    ]
    plan = Plan(streams=(1, 16, 256), variants=("echo", "minimal", "statestream"))
    found = {t.name: t for t in targets_of(rows, None, plan) if "minimal" in t.name}
    lone = found["statestream p50 / minimal p50 at 1 stream"]
    assert math.isclose(lone.value, 1.2) and not lone.met  # 1.2 > 1.1
    sixteen = found["statestream steps/s / minimal steps/s at 16 streams"]
    assert math.isclose(sixteen.value, 1.05) and sixteen.met
    many = found["statestream steps/s / minimal steps/s at 256 streams"]
    assert math.isclose(many.value, 1.5) and not many.met
    assert "echo's ceiling 2.20x" in many.detail  # 4400 / 2000: no server of one message per step passes it
    assert "echo" not in sixteen.detail  # no echo row at 16 streams


def test_issue_26s_paced_targets_are_read_against_the_bare_server_with_echos_floor_beside_them() -> None:
    def row(variant: str, rate: float, p50: float, p99: float, cpu: float) -> Row:
        return Row(variant, 256, 1, rate, rate, p50, p99, server_cpu_us_per_step=cpu)

    plan = Plan(streams=(256,), variants=("echo", "minimal", "statestream"), rate=2300.0)
    rows = [
        row("echo", 2300, 0.35, 0.69, 110.0),
        row("minimal", 2300, 0.45, 1.20, 310.0),
        row("statestream", 2295, 0.44, 0.93, 262.0),
    ]
    found = {t.name: t for t in targets_of(rows, None, plan)}
    assert set(found) == {
        f"statestream {q} / minimal {q} at 256 streams, 2300 msg/s" for q in ("p50", "p99", "CPU/step")
    }
    p50, p99, cpu = (
        found[f"statestream {q} / minimal {q} at 256 streams, 2300 msg/s"] for q in ("p50", "p99", "CPU/step")
    )
    assert math.isclose(p50.value, 0.44 / 0.45) and p50.met and p50.judged
    assert math.isclose(p99.value, 0.93 / 1.20) and not p99.met  # 0.78 > 0.5
    assert p99.detail == "0.93 ms / 1.20 ms; echo's floor 0.57x"  # echo, with no model, misses it too
    assert math.isclose(cpu.value, 262 / 310) and cpu.met and cpu.detail == "262 us / 310 us"
    # A server that answered less than the offered rate was not paced: nothing is judged.
    rows[1] = row("minimal", 2000, 5.0, 40.0, 300.0)
    behind = targets_of(rows, None, plan)
    assert len(behind) == 3 and all(t.not_judged == "minimal fell behind 2300 msg/s" for t in behind)
    # Without the bare server there is nothing to judge against; closed loop judges none of these.
    assert not targets_of([rows[0], rows[2]], None, plan)
    closed = Plan(streams=(256,), variants=("echo", "minimal", "statestream"))
    assert not [t for t in targets_of(rows, None, closed) if "msg/s" in t.name]


def test_the_residual_target_is_statestreams_cpu_less_echos_and_orts_at_256_streams() -> None:
    """Issue 14's char_lm residual, from CPU per step of three rows of one run; absent without them."""

    def row(variant: str, streams: int, cpu: float) -> Row:
        return Row(variant, streams, 1, 1000, 1000, 1.0, 2.0, server_cpu_us_per_step=cpu)

    rows = [row("echo", 256, 160.0), row("statestream", 256, 300.0), row("ort", 256, 97.5)]
    plan = Plan(streams=(256,), variants=("echo", "statestream"))
    residual = [t for t in targets_of(rows, None, plan) if "ORT CPU/step" in t.name]
    assert len(residual) == 1
    assert math.isclose(residual[0].value, 300.0 - (160.0 + 97.5)) and not residual[0].met  # 42.5 > 40
    assert residual[0].detail == "300 - (160 + 97.5) us"
    rows[1] = row("statestream", 256, 290.0)
    assert [t.met for t in targets_of(rows, None, plan) if "ORT CPU/step" in t.name] == [True]
    # Without ORT's CPU time (an ORT row of wall-clock rate only) there is nothing to subtract.
    rows[2] = Row("ort", 256, 1, 1000, 1000, 1.0, 2.0)
    assert not [t for t in targets_of(rows, None, plan) if "ORT CPU/step" in t.name]


def test_the_table_keeps_its_columns_and_adds_each_rows_cpu_by_thread_after_them() -> None:
    def row(variant: str, cpu: float, split: dict[str, float] | None) -> Row:
        extra = {BY_THREAD: split} if split else {}
        return Row(variant, 256, 1, 1000, 1000, 1.0, 2.0, server_cpu_us_per_step=cpu, extra=extra)

    rows = [
        row("minimal", 300.0, {"loop": 250.0, "python": 10.0, "grpc": 40.0}),
        row("statestream", 200.0, {"loop": 120.5, "python": 60.0, "grpc": 19.5}),
        row("ort", 97.5, None),
    ]
    lines = bench.format_table(rows, [], None, "header").splitlines()
    columns = ["variant", "streams", "steps/msg", "msg/s", "steps/s", "p50", "ms", "p99", "ms", "CPU", "us/step"]
    assert lines[2].split() == [*columns, "vs"]  # the main table's columns, as before
    assert lines[4].split()[:8] == ["minimal", "256", "1", "1000", "1000", "1.00", "2.00", "300"]
    block = lines[lines.index("server CPU per step by thread (us):") :]
    assert block[1].split() == ["variant", "streams", "loop", "python", "grpc"]
    assert [line.split() for line in block[2:4]] == [
        ["minimal", "256", "250.0", "10.0", "40.0"],
        ["statestream", "256", "120.5", "60.0", "19.5"],
    ]
    assert block[4] == ""  # ORT alone has no server threads: no line, and the targets follow
    assert lines.index("server CPU per step by thread (us):") < lines.index("targets (ratios from this run):")
    no_split = [row("echo", 100.0, None)]
    assert "by thread" not in bench.format_table(no_split, [], None, "header")


@pytest.mark.parametrize("arrivals", ["spread", "together"])
def test_paced_load_offers_every_row_the_same_rate_and_judges_no_speed_target(
    tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str], arrivals: str
) -> None:
    """``--rate``: each stream keeps its schedule, so no row answers more than the schedule sends."""
    streams, rate, window_s = 4, 40.0, 0.5
    code = main(
        [
            *("--models-dir", str(tiny_lm_dir), "--json", "--streams", str(streams), "--rate", str(rate)),
            *("--arrivals", arrivals, "--repeats", "1", "--duration-s", str(window_s), "--warmup-s", "0.2"),
            *("--memory-sessions", "0", "--variants", "echo,statestream"),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    load_rows = [r for r in rows if r["kind"] == "load"]
    assert {r["variant"] for r in load_rows} == {"echo", "statestream"}
    # Each stream sends every streams / rate = 0.1 s: at most window / 0.1 + 1 answers each land in
    # the window. Closed-loop load on this tiny model answers hundreds of times more.
    bound = streams * (window_s * rate / streams + 1) / window_s
    for row in load_rows:
        assert row["errors"] == 0 and 0 < row["messages_per_s"] <= bound, row
        assert set(row["cpu_us_per_step_by_thread"]) == {"loop", "python", "grpc"}  # paced rows too
    # No speed target on paced load; the paced ones need the bare server (no memory row here).
    assert not [r for r in rows if r["kind"] == "target"]


def test_sigterm_stops_a_bench_run_and_every_process_it_started(tiny_lm_dir: Path) -> None:
    """A bench stopped by SIGTERM (a CI timeout, ``kill``) stops its servers and load generators as
    Ctrl-C does, instead of dying at once and leaving them running."""
    command = [
        *(sys.executable, "-m", "service.cli", "bench", "--models-dir", str(tiny_lm_dir), "--variants", "echo"),
        *("--streams", "1", "--repeats", "1", "--duration-s", "60", "--warmup-s", "0.2", "--memory-sessions", "0"),
    ]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stderr is not None
        lines = []
        while not any(line.startswith("started echo") for line in lines):
            line = run.stderr.readline()
            assert line, "the bench ended before it started its echo server: " + "".join(lines)
            lines.append(line)
        bench_process = psutil.Process(run.pid)
        deadline = time.monotonic() + 30
        while len(bench_process.children(recursive=True)) < 2:  # the echo server and a load generator
            assert time.monotonic() < deadline, "the load generator never started"
            time.sleep(0.05)
        started = bench_process.children(recursive=True)
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=60)[1]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == EXIT_INTERRUPTED, rest
    assert "interrupted" in rest and "Traceback" not in rest
    # Each is on its way out: multiprocessing's resource tracker, for one, exits once the bench's
    # end closes its pipe. None may still be running after a few seconds.
    _, left = psutil.wait_procs(started, timeout=10)
    assert not left, [(p.pid, p.name()) for p in left]


def test_a_command_stopping_its_children_on_sigterm_unwinds_and_puts_the_old_handler_back() -> None:
    unwound: list[str] = []

    @servers.stopping_children_on_sigterm
    def command_line(argv: list[str]) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts the wait
            return 0
        finally:
            unwound.append(argv[0])  # as a server's context manager would stop it

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        command_line(["bench"])
    assert unwound == ["bench"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_paced_streams_are_spread_over_the_interval_or_all_in_phase() -> None:
    spec = load.LoadSpec(target="", model="m", mode="stream", streams=4, interval_s=0.2)
    assert [load._Pace.of(spec, i).phase_s for i in range(4)] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    together = load.LoadSpec(target="", model="m", mode="stream", streams=4, interval_s=0.2, spread=False)
    assert {load._Pace.of(together, i) for i in range(4)} == {load._Pace(0.2, 0.0)}


@pytest.mark.parametrize(
    "command_line", [bench.parser, slo.parser, profile_paced.parser], ids=["bench", "loadtest", "profile_paced"]
)
def test_an_empty_models_dir_is_refused_not_read_as_the_current_folder(
    command_line: Callable[[], argparse.ArgumentParser], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        command_line().parse_args(
            ["--models-dir", "", "--rate", "10"] if command_line is profile_paced.parser else ["--models-dir", ""]
        )
    assert exited.value.code == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        f"statestream: error: --models-dir: the path is empty; see '{command_line().prog} --help'"
    ]


def test_arrivals_without_a_rate_is_refused_before_anything_starts() -> None:
    with pytest.raises(CommandError, match="give --rate too") as refused:
        main(["--models-dir", str(SHIPPED_MODELS), "--arrivals", "together"])
    assert refused.value.exit_code == EXIT_USAGE


def test_the_bare_server_runs_with_grpcs_settings_as_the_user_gave_them_and_statestream_with_its_own(
    tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As under `statestream bench`: the entry point set its defaults in the bench's environment,
    # where the user had set GRPC_VERBOSITY and no experiment.
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_listener")
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")
    monkeypatch.setattr(grpc_environment, "GIVEN", {"GRPC_VERBOSITY": "INFO", "GRPC_EXPERIMENTS": None})
    plan = bench.plan_of(bench.parser().parse_args([]))
    variants = {v.name: v for v in bench.server_variants(plan, tiny_lm_dir, "char_lm")}
    environs = {}
    for name in ("minimal", "statestream"):
        with variants[name].server() as server:
            raw = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
            environs[name] = dict(entry.decode().partition("=")[::2] for entry in raw if entry)
    assert "GRPC_EXPERIMENTS" not in environs["minimal"]  # gRPC's default: the event engine reads sockets
    assert environs["minimal"]["GRPC_VERBOSITY"] == "INFO"
    assert environs["statestream"]["GRPC_EXPERIMENTS"] == "-event_engine_listener"
    assert grpc_environment.socket_reader(grpc_environment.given()) == "event engine"
    assert grpc_environment.socket_reader(grpc_environment.given(defaults=True)) == "grpc.aio poller"
    # The bare server imports grpc before echo's module (which sets statestream's settings where
    # grpc is not loaded yet), so it keeps the environment it was given; echo's own process does not.
    probe = "import os, sys, importlib; importlib.import_module(sys.argv[1]); print(os.environ.get('GRPC_EXPERIMENTS'))"
    given = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    read = {
        module: subprocess.run(
            [sys.executable, "-c", probe, module], env=given, capture_output=True, text=True, check=True
        ).stdout.strip()
        for module in ("loadtest.minimal", "loadtest.echo")
    }
    assert read == {"loadtest.minimal": "None", "loadtest.echo": "-event_engine_listener"}


def test_serve_flags_reach_the_statestream_server_alone_and_are_checked_by_serves_parser() -> None:
    args = bench.parser().parse_args(["--serve-flags=--inline-call-us 0 --gil-switch-interval-us 50"])
    plan = bench.plan_of(args)
    assert plan.serve_flags == ("--inline-call-us", "0", "--gil-switch-interval-us", "50")
    commands = {v.name: v.command for v in bench.server_variants(plan, SHIPPED_MODELS, "lstm256")}
    assert commands["statestream"][-4:] == list(plan.serve_flags)
    assert all("--inline-call-us" not in command for name, command in commands.items() if name != "statestream")
    for wrong, said in [
        ("--inline-call-us 99999", "out of range"),
        ("--no-such-flag", "unrecognized arguments"),
        ("'unclosed", "No closing quotation"),
        ("--help", "listed by 'statestream serve --help'"),
    ]:
        with pytest.raises(CommandError, match=said) as refused:
            bench.plan_of(bench.parser().parse_args([f"--serve-flags={wrong}"]))
        assert refused.value.exit_code == EXIT_USAGE and "--serve-flags" in str(refused.value)


#: How a number is written inside each flag type that holds numbers in text.
SPELLINGS: dict[type, Callable[[float], str]] = {
    CountList: lambda n: f"1,{n}",
    RunTime: lambda n: f"{n}s",
    Objective: lambda n: f"step={n}",
    VariantList: lambda n: f"none,K={n}",
}


def range_of(flag_type: object) -> InRange[Any] | None:
    """The range a flag's type checks its numbers against, or None for a flag that takes no number."""
    if isinstance(flag_type, InRange):
        return flag_type
    inner = getattr(flag_type, "range", None)
    return inner if isinstance(inner, InRange) else None


#: Every load tool with a command line (a module of loadtest/ with a ``main``): each has a ``parser()``,
#: checked below, so a tool added tomorrow is covered without touching this list.
TOOLS = sorted(p.stem for p in (SHIPPED_MODELS.parent / "loadtest").glob("*.py") if "\ndef main(" in p.read_text())
#: The tools with no numeric option (front's ports are in its HOST:PORT arguments: test_tool_flags).
NO_NUMBERS = {"front", "lstm256"}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_numeric_flag_refuses_a_value_out_of_its_range_in_one_line(
    tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = importlib.import_module(f"loadtest.{tool}").parser()
    assert isinstance(parser, Parser)  # the project's: a usage error is one line (argparse's own prints the usage too)
    flags = [action for action in parser._actions if action.option_strings]
    paths = (Path, nonempty_path)
    names = [a for a in flags if isinstance(a.type, NameList)]  # a list of names takes no number
    unchecked = [
        a.option_strings[0]
        for a in flags
        if range_of(a.type) is None and a.type not in (None, *paths) and a not in names
    ]
    assert not unchecked  # a flag that takes a number takes it range-checked
    numeric = [action for action in flags if range_of(action.type) is not None]
    assert numeric or tool in NO_NUMBERS  # the loop below is not empty
    for action in numeric:
        flag, bounds = action.option_strings[0], range_of(action.type)
        assert bounds is not None
        spell = SPELLINGS.get(type(action.type), str)
        for value in (bounds.low - 1, None if bounds.high is None else bounds.high + 1):
            if value is None:
                continue
            with pytest.raises(SystemExit) as exited:
                parser.parse_args([f"{flag}={spell(value)}"])
            error = capsys.readouterr().err
            assert exited.value.code == EXIT_USAGE, (flag, value)
            assert error.count("\n") == 1 and error.startswith(f"statestream: error: {flag}: "), error
            assert f"({bounds.describe()}" in error, error


def test_the_lstm256_command_rebuilds_the_shipped_model(tmp_path: Path) -> None:
    """``python -m loadtest.lstm256`` makes the shipped folder again: same graph bytes, a golden that replays."""
    assert lstm256.main(["--out", str(tmp_path / "lstm256")]) == 0
    built, shipped = tmp_path / "lstm256", SHIPPED_MODELS / "lstm256"
    assert (built / "step.onnx").read_bytes() == (shipped / "step.onnx").read_bytes()
    assert Manifest.load(built) == Manifest.load(shipped)
    model = LoadedModel.from_folder(
        built, Settings(), driver_class
    )  # loads only if ORT's LSTM replays the numpy golden
    assert model.manifest.task == "sequence_model" and model.golden_error < 1e-5
    assert model.manifest.state_bytes == 2 * 256 * 4


def test_the_slab_bench_proves_device_slabs_against_host_slabs_and_times_both(
    tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``loadtest.gpu_bench`` on a CPU-only machine: the parity line and a row per variant and batch."""
    code = gpu_bench.main(
        ["--model", str(tiny_lm_dir / "char_lm"), "--out", str(tmp_path), "--batches", "1,4", "--duration-s", "0.01"]
    )
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "gpu_bench.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["batch"]) for r in rows} == {("cpu", 1), ("cpu-device", 1), ("cpu", 4), ("cpu-device", 4)}
    assert all(r["steps_per_s"] > 0 for r in rows)
    header = (tmp_path / "gpu_bench.md").read_text().splitlines()[0]
    diff = float(header.split("cpu/device slabs ")[1].split()[0].rstrip(","))
    assert diff <= 1e-5  # device slabs give the host slabs' logits and state


def test_a_threads_run_time_is_read_to_the_nanosecond_and_agrees_with_the_ticks() -> None:
    """``/proc``'s user and system times count 10 ms ticks; schedstat's run time is what the split reads."""
    pid = os.getpid()
    before = servers.thread_run_seconds(pid, pid)
    assert before is not None
    deadline = time.thread_time() + 0.05
    while time.thread_time() < deadline:  # 50 ms of this thread's CPU
        pass
    after = servers.thread_run_seconds(pid, pid)
    assert after is not None and 0.045 < after - before < 0.5
    main_thread = next(t for t in psutil.Process(pid).threads() if t.id == pid)
    assert math.isclose(after, main_thread.user_time + main_thread.system_time, abs_tol=0.05)
    assert round(after * 1e9) % 10_000_000 != 0 or round(before * 1e9) % 10_000_000 != 0  # not whole ticks
    assert servers.thread_run_seconds(pid, 2**22 + 7) is None  # no such thread


PERF_REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 4K of event 'cpu-clock:ppp'
#
# Overhead  Shared Object
# ........  ....................
#
    37.93%  [kernel.kallsyms]
    24.09%  libpython3.11.so.1.0
    12.38%  cygrpc.cpython-311-x86_64-linux-gnu.so
    11.26%  onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so
     5.21%  libc.so.6
     2.94%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     2.08%  loop.cpython-311-x86_64-linux-gnu.so
     2.02%  _message.abi3.so
     0.77%  _asyncio.cpython-311-x86_64-linux-gnu.so
     1.32%  libstdc++.so.6.0.30
"""


def test_perfs_shared_objects_are_summed_into_the_libraries_a_reader_knows() -> None:
    found = profile_paced.shares(PERF_REPORT)
    assert list(found) == list(profile_paced.LIBRARIES)
    assert found["kernel"] == pytest.approx(0.3793) and found["grpc"] == pytest.approx(0.1238)
    assert found["event loop"] == pytest.approx(0.0208 + 0.0077)  # uvloop and asyncio's C part
    assert found["other"] == pytest.approx(0.0132)  # libstdc++
    assert sum(found.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rate", "100", "--variants", "echo,bogus"], "--variants: 'bogus' is not one of echo, minimal, statestream"),
        (["--rate", "0"], "--rate: 0"),
        (["--rate", "100", "--model", "nope"], "no model folder 'nope' in"),
        (["--variants", "echo"], "--rate"),
    ],
)
def test_the_profiler_refuses_bad_flags_in_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = profile_paced.main(argv)
    except SystemExit as exited:  # argparse's own refusals (a missing or malformed flag) exit
        code = int(exited.code or 0)
    assert code == EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_the_profiler_says_when_perf_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(profile_paced.shutil, "which", lambda name: None)
    assert profile_paced.main(["--rate", "100", "--models-dir", str(SHIPPED_MODELS)]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        "statestream: error: perf is not installed; install Linux's perf tool (Debian: linux-perf)"
    ]


@pytest.mark.parametrize(
    ("variants", "says"),
    [
        ("echo,nope", "--variants: 'nope' is not one of echo, naive, minimal, statestream, chunked, multiplexed, oip"),
        ("echo,echo", "--variants: echo is given twice"),
    ],
)
def test_the_bench_refuses_a_variant_it_does_not_have_in_one_line(
    variants: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.parser().parse_args(["--variants", variants])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert bench.parser().parse_args(["--variants", "oip,echo"]).variants == ("oip", "echo")
