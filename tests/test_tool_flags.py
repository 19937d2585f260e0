"""The load tools refuse what they cannot run in one usage line, before anything starts.

A models folder that is not there, a model not in it or of another kind than the tool drives, a
folder to write that is a file, a port or host its server cannot listen on, a replica that is not
HOST:PORT: each was a traceback (or a run that went wrong later, or bound another port) and is
now one ``statestream: error:`` line with the usage exit code. The numeric flags' ranges are checked for every tool in
test_bench_smoke (``test_every_numeric_flag_refuses_a_value_out_of_its_range_in_one_line``).
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import NoReturn

import pytest

from service import command, process
from service.command import EXIT_USAGE
from tests.conftest import ROOT

SHIPPED = ROOT / "models"

#: The tools that take --models-dir and --model, with the flags each needs besides.
MODEL_TOOLS = {
    "bench": [],
    "durable_hotpath": [],
    "fuzz": [],
    "hotpath": [],
    "instructions": [],
    "minimal": [],
    "profile_paced": ["--rate", "10"],
    "revisions": ["--base", "HEAD"],
    "vad_hotpath": [],
}


def refusal(run: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a command refused as a usage error, as ``python -m`` runs it
    (argparse's exit, or a CommandError that ``command.run`` prints)."""
    try:
        code = command.run(run)
    except SystemExit as exited:
        code = int(exited.code or 0)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("statestream: error: "), err
    return err


def tool_main(tool: str) -> Callable[[list[str]], int]:
    return importlib.import_module(f"loadtest.{tool}").main  # type: ignore[no-any-return]


def served(*args: object) -> NoReturn:
    raise AssertionError("the tool went on to serve")


@pytest.fixture
def few_models(tmp_path: Path) -> Path:
    """A models folder of three shipped models (links): a tool that ran anyway would load only these."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("char_lm", "lstm256", "silero_vad", "silero_vad_8k"):
        (folder / name).symlink_to(SHIPPED / name)
    return folder


@pytest.mark.parametrize("tool", sorted(MODEL_TOOLS))
def test_a_models_dir_that_is_not_there_is_refused(
    tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    argv = [*MODEL_TOOLS[tool], "--models-dir", str(missing)]
    line = refusal(lambda: tool_main(tool)(argv), capsys)
    assert f"--models-dir {missing}: no such folder" in line


@pytest.mark.parametrize("tool", sorted(MODEL_TOOLS))
def test_a_model_not_in_the_models_dir_is_refused(
    tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*MODEL_TOOLS[tool], "--models-dir", str(tmp_path), "--model", "nope"]
    line = refusal(lambda: tool_main(tool)(argv), capsys)
    assert f"no model folder 'nope' in {tmp_path} (--models-dir, --model)" in line


#: A call that would run at once had the model been accepted, and what the refusal says.
OTHER_KINDS = [
    ("vad_hotpath", ["--model", "lstm256", "--calls", "1", "--chunks", "2", "--rounds", "1"], "'sequence_model'"),
    ("vad_hotpath", ["--model", "silero_vad_8k", "--calls", "1", "--chunks", "2", "--rounds", "1"], "[256]"),
    ("fuzz", ["--model", "lstm256", "--cases", "1"], "its task is 'sequence_model'"),
    ("bench", ["--vad-calls", "--model", "lstm256", "--ladder", "1", "--duration-s", "0.01"], "'sequence_model'"),
    ("bench", ["--vad-calls", "--model", "char_lm", "--ladder", "1", "--duration-s", "0.01"], "'language_model'"),
]


@pytest.mark.parametrize(("tool", "argv", "says"), OTHER_KINDS)
def test_a_model_of_another_kind_than_the_tool_drives_is_refused(
    tool: str, argv: list[str], says: str, few_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ran on and ended in a traceback (the fuzzer's reference, the harness's frame count), or
    (bench --vad-calls --model char_lm) ran silero_vad instead without a word."""
    line = refusal(lambda: tool_main(tool)([*argv, "--models-dir", str(few_models)]), capsys)
    assert says in line and f"--model {argv[argv.index('--model') + 1]}" in line


def test_the_slab_bench_refuses_a_model_it_cannot_feed_and_an_out_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quick = ["--cpu-only", "--batches", "1", "--duration-s", "0.001"]
    line = refusal(lambda: tool_main("gpu_bench")([*quick, "--model", str(SHIPPED / "lstm256")]), capsys)
    assert "--model" in line and "its task is 'sequence_model'" in line
    line = refusal(lambda: tool_main("gpu_bench")([*quick, "--model", str(tmp_path)]), capsys)
    assert f"--model {tmp_path}: not a model folder" in line
    file = tmp_path / "results"
    file.write_text("")
    argv = [*quick, "--model", str(SHIPPED / "char_lm"), "--out", str(file)]
    assert refusal(lambda: tool_main("gpu_bench")(argv), capsys).startswith(
        f"statestream: error: --out {file} is a file"
    )


@pytest.mark.parametrize("port", ["70000", "-3"])
def test_the_bare_server_refuses_a_port_out_of_range(
    port: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """70000 bound port 4464 (70000 - 65536), -3 bound 65533."""
    monkeypatch.setattr(process, "run", served)  # were the port let through, the test fails rather than serves
    line = refusal(lambda: tool_main("minimal")(["--models-dir", str(SHIPPED), "--port", port]), capsys)
    assert f"--port: {port} is out of range (0-65535)" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


#: The tools that serve, with the flags each needs besides.
SERVERS = {"echo": [], "minimal": ["--models-dir", str(SHIPPED), "--model", "lstm256"], "vad_baseline": []}


@pytest.mark.parametrize("tool", sorted(SERVERS))
def test_a_server_tool_refuses_a_port_in_use_and_a_host_not_this_machines(
    tool: str, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """gRPC's bind failed with a RuntimeError traceback."""
    line = refusal(lambda: tool_main(tool)([*SERVERS[tool], "--port", str(taken_port)]), capsys)
    assert f"port {taken_port} on 127.0.0.1 is in use" in line and "--port" in line
    line = refusal(lambda: tool_main(tool)([*SERVERS[tool], "--host", "192.0.2.1"]), capsys)  # TEST-NET-1
    assert "--host 192.0.2.1: not an address of this machine" in line


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--chunk-ms", "x"], "--chunk-ms: 'x' is not a number"),
        (["--chunk-ms", "20,,32"], "--chunk-ms: '' is not a number"),
        (["--chunk-ms", "0"], "--chunk-ms: 0 is out of range (0.0625-4000)"),
        (["--chunk-ms", "nan"], "--chunk-ms: 'nan' is not a finite number"),
        (["--calls", "0"], "--calls: 0 is out of range (1 or more)"),
        (["--chunks", "1", "--chunk-ms", "20"], "--chunks 1 of --chunk-ms 20 fill no 32 ms frame"),
    ],
)
def test_the_vad_harness_refuses_chunks_it_cannot_send(
    argv: list[str], says: str, few_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed --chunk-ms was a ValueError traceback; 0 calls, or chunks that fill no frame, a ZeroDivisionError."""
    quick = ["--models-dir", str(few_models), "--calls", "1", "--rounds", "1"]
    assert says in refusal(lambda: tool_main("vad_hotpath")([*quick, *argv]), capsys)


def test_the_lstm256_command_refuses_an_out_it_cannot_write_a_model_into(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file was a FileExistsError traceback; a folder of other things got step.onnx and manifest.json among them."""
    file, other = tmp_path / "file", tmp_path / "other"
    file.write_text("")
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for out, says in [
        (file, f"--out {file} is a file, not a folder"),
        (file / "lstm256", f"--out {file / 'lstm256'}: {file} is a file, not a folder"),
        (other, f"--out {other} exists and is not a model folder"),
    ]:
        assert says in refusal(partial(tool_main("lstm256"), ["--out", str(out)]), capsys)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("target", "says"),
    [("127.0.0.1:70000", "HOST:PORT: 70000 is out of range (1-65535)"), ("replica", "'replica' is not HOST:PORT")],
)
def test_the_envoy_config_refuses_a_replica_that_is_not_host_and_port(
    target: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port of 70000 went into the config as it was; no port was an IndexError traceback."""
    assert says in refusal(partial(tool_main("front"), ["10.0.0.1:50051", target]), capsys)


@pytest.mark.parametrize(
    ("tool", "argv", "says"),
    [
        ("durable_hotpath", ["--variants", "none,fast"], "--variants: 'fast' is neither 'none' nor K=N"),
        ("durable_hotpath", ["--variants", "K=x"], "--variants: K=x: 'x' is not a whole number"),
        ("durable_hotpath", ["--variants", "K=16,none,K=16"], "--variants: K=16 is given twice"),
        ("instructions", ["--variants", "K=0"], "--variants: K=0: 0 is out of range (1-1000000)"),
        ("instructions", ["--steps", "40,10"], "--steps takes two counts, the first below the second (got 40,10)"),
        ("instructions", ["--steps", "10"], "--steps takes two counts, the first below the second (got 10)"),
        ("instructions", ["--streams", "16", "--steps", "2,18"], "is 256 steps between the runs; give at least 2,000"),
    ],
)
def test_the_durable_harnesses_refuse_variants_and_steps_they_cannot_run(
    tool: str, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in refusal(partial(tool_main(tool), [*argv, "--models-dir", str(SHIPPED)]), capsys)


def test_the_instruction_count_without_valgrind_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtest import instructions

    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    monkeypatch.setattr(instructions, "measure", served)  # had it gone on, the test fails rather than measures
    line = refusal(partial(instructions.main, ["--models-dir", str(SHIPPED)]), capsys)
    assert "valgrind is not installed" in line
