"""statestream import: foreign stateful ONNX graphs, wrapped, proved, served, and bad specs refused in one line.

The graphs come from plain ``torch.onnx.export`` (tests/foreign_graphs.py), not from statestream.
Served answers are compared with ONNX Runtime running the *original* graph in its own layout,
one session at a time, so neither the importer's wrapper nor its golden trace is the reference.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.client.sdk import AsyncClient, Client, SessionOptions, StepFailed
from service.importer.folder import import_onnx
from service.importer.spec import ImportSpec
from service.settings import Settings
from service.tensors import from_proto
from tests.foreign_graphs import LSTM_SPEC, ONE_STEP_SPEC, write_lstm, write_one_step
from tests.servers import STATESTREAM, ServerThread

#: Served (batched, wrapped) against the original graph run alone: the same ORT kernels in
#: float32; batched GEMMs may round differently, ~1e-6.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("foreign")
    write_lstm(folder / "lstm.onnx")
    write_one_step(folder / "one_step.onnx")
    write_one_step(folder / "fixed_batch.onnx", dynamic_batch=False)
    (folder / "lstm.toml").write_text(LSTM_SPEC)
    (folder / "one_step.toml").write_text(ONE_STEP_SPEC)
    return folder


@pytest.fixture(scope="module")
def served(graphs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The LSTM imported by the command (as a user would) and the one-step graph by the function, served."""
    models = tmp_path_factory.mktemp("imported")
    done = statestream(
        "import", str(graphs / "lstm.onnx"), "--spec", str(graphs / "lstm.toml"), "--out", str(models / "lstm2")
    )
    assert done.returncode == 0, done.stderr
    assert "imported lstm.onnx as model 'lstm2'" in done.stdout
    import_onnx(graphs / "one_step.onnx", ImportSpec.load(graphs / "one_step.toml"), models / "one_step")
    server = ServerThread(Settings(models_dir=models, max_chunk=64))
    yield server
    server.stop()


def statestream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STATESTREAM, *args], capture_output=True, text=True, timeout=120)


def lstm_reference(graph: Path, xs: np.ndarray) -> dict[str, np.ndarray]:
    """The original graph, one session, the whole sequence in one call in its own layout: x [T, 1, 4]."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    zeros = np.zeros((2, 1, 16), np.float32)
    y, hidden, _, _ = session.run(None, {"x": xs[:, np.newaxis], "h0": zeros, "c0": zeros})
    return {"y": y[:, 0], "hidden": hidden[:, 0]}


def one_step_reference(graph: Path, steps: np.ndarray) -> np.ndarray:
    """The original one-step graph, one session: the last 4 samples carried in numpy, sr fed each call."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    state, carried, outputs = np.zeros((2, 1, 8), np.float32), np.zeros((1, 4), np.float32), []
    for step in steps:
        joined = np.concatenate([carried, step[np.newaxis]], axis=1)
        output, state = session.run(None, {"input": joined, "state": state, "sr": np.array(16000, np.int64)})
        carried = joined[:, -4:]
        outputs.append(output[0])
    return np.stack(outputs)


async def _stream_sessions(target: str, inputs: list[np.ndarray], chunks: list[int]) -> list[dict[str, np.ndarray]]:
    """Each session's steps in ``chunks``, all sessions' chunks sent together (so they batch)."""
    async with AsyncClient(target) as client:
        sessions = await asyncio.gather(*(client.open("lstm2") for _ in inputs))
        collected: list[dict[str, list[np.ndarray]]] = [{"y": [], "hidden": []} for _ in inputs]
        start = 0
        for chunk in chunks:
            results = await asyncio.gather(
                *(s.step(tensors={"x": x[start : start + chunk]}) for s, x in zip(sessions, inputs, strict=True))
            )
            for result, into in zip(results, collected, strict=True):
                for out in result.outputs:
                    for tensor in out.tensors:
                        into[tensor.name].append(from_proto(tensor))
            start += chunk
        return [{name: np.stack(values) for name, values in c.items()} for c in collected]


def test_plain_torch_lstm_served_per_session_equals_ort_on_the_original(graphs: Path, served: ServerThread) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(4)]
    got = asyncio.run(_stream_sessions(served.target, inputs, chunks=[2, 1, 3]))
    for session, (xs, answer) in enumerate(zip(inputs, got, strict=True)):
        want = lstm_reference(graphs / "lstm.onnx", xs)
        for name in ("y", "hidden"):  # every output, though the sessions named none in return_tensors
            assert answer[name].shape == want[name].shape, (session, name)
            np.testing.assert_allclose(answer[name], want[name], atol=TOLERANCE, err_msg=f"session {session} {name}")


def test_return_tensors_narrows_a_tensor_models_answer(served: ServerThread) -> None:
    with Client(served.target) as client:
        session = client.open("lstm2", options=SessionOptions(return_tensors=("y",)))
        result = session.step(tensors={"x": np.ones((2, 4), np.float32)})
        assert [[t.name for t in out.tensors] for out in result.outputs] == [["y"], ["y"]]


def test_one_step_graph_with_constant_and_carry_takes_chunks_as_calls_in_order(
    graphs: Path, served: ServerThread
) -> None:
    steps = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    want = one_step_reference(graphs / "one_step.onnx", steps)
    with Client(served.target) as client:
        info = client.get_model("one_step")
        assert [list(t.shape) for t in info.inputs] == [[16]]  # the 16 new samples; the 4 carried are state
        chunked = client.open("one_step")
        results = [chunked.step(tensors={"input": steps[:3]}), chunked.step(tensors={"input": steps[3:]})]
        got = np.stack([from_proto(out.tensors[0]) for r in results for out in r.outputs])
    np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_a_chunk_over_max_chunk_is_refused_before_it_runs(served: ServerThread) -> None:
    with Client(served.target) as client:
        session = client.open("one_step")
        with pytest.raises(StepFailed) as refused:
            session.step(tensors={"input": np.zeros((65, 16), np.float32)})
        assert refused.value.error.code_name == "RESOURCE_EXHAUSTED" and "max_chunk" in refused.value.error.message
        fine = session.step(tensors={"input": np.zeros((2, 16), np.float32)})  # the session goes on
        assert len(fine.outputs) == 2


BAD_SPECS = {
    "an input the graph lacks": ("one_step", ONE_STEP_SPEC.replace('input = "state"', 'input = "hidden"'),
                                 "[[state]] input 'hidden': the graph has no such input"),
    "an output the graph lacks": ("one_step", ONE_STEP_SPEC.replace('"stateN"', '"state_next"'),
                                  "[[state]] output 'state_next': the graph has no such output"),
    "a state output unlike its input": ("one_step", ONE_STEP_SPEC.replace('"stateN"', '"output"'),
                                        "differs from its input"),
    "a carry longer than the input": ("one_step", ONE_STEP_SPEC.replace("keep = 4", "keep = 12"),
                                      "[carry] keep 12 is longer than what a step of 'input'"),
    "a constant of the wrong dtype": ("one_step", ONE_STEP_SPEC.replace("sr = 16000", "sr = 16000.5"),
                                      "[constant] sr = 16000.5 is float64, the graph's input 'sr'"),
    "a wrong batch_axis the graph fixes": ("one_step", ONE_STEP_SPEC.replace("batch_axis = 1", "batch_axis = 0"),
                                           "axis 0 is fixed at 2, so it is not the batch axis"),
    "a wrong batch_axis only running shows": ("lstm", LSTM_SPEC.replace("batch_axis = 1\ntime_axis = 0", "batch_axis = 0\ntime_axis = 1"),
                                              "batch invariance check failed"),
    "a graph with no batch dimension": ("fixed_batch", ONE_STEP_SPEC,
                                        "the graph has no batch dimension"),
    "a key the spec does not have": ("one_step", ONE_STEP_SPEC + "\n[extra]\nx = 1\n", "unknown key(s) ['extra']"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SPECS), ids=list(BAD_SPECS))
def test_bad_spec_is_refused_in_one_line_and_nothing_is_written(case: str, graphs: Path, tmp_path: Path) -> None:
    graph, spec, says = BAD_SPECS[case]
    (tmp_path / "spec.toml").write_text(spec)
    out = tmp_path / "model"
    done = statestream(
        "import", str(graphs / f"{graph}.onnx"), "--spec", str(tmp_path / "spec.toml"), "--out", str(out)
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statestream: error: "), done.stderr
    assert says in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_bad_arguments_are_refused_in_one_line_before_the_graph_runs(
    graphs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown --task or an empty --name had written a folder serve refused; an --out under a file or an
    empty graph gave a traceback or a misleading line. A known task whose driver cannot serve the graph
    is found once the graph is wrapped, still before anything is written."""
    from service import command
    from service.importer.command import main

    graph, spec, out = str(graphs / "one_step.onnx"), str(graphs / "one_step.toml"), tmp_path / "model"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    empty = tmp_path / "empty.onnx"
    empty.touch()
    cases = [
        ([graph, "--task", "oracle"], "--task 'oracle': no driver serves it; known tasks: "),
        ([graph, "--name", ""], "--name is empty; leave it out"),
        ([graph, "--out", str(a_file / "model")], f"--out {a_file / 'model'}: cannot make a folder in {a_file}"),
        ([str(empty)], f"{empty}: the file is empty, not an ONNX model"),
        ([str(tmp_path)], f"{tmp_path}: is a folder; give the path of an .onnx graph"),
        ([graph, "--task", "forecaster"], "task 'forecaster' cannot serve this graph: a forecaster takes"),
    ]
    for args, says in cases:
        argv = [*args, "--spec", spec, *([] if "--out" in args else ["--out", str(out)])]
        assert command.run(lambda argv=argv: main(argv)) == command.EXIT_USAGE, argv
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"statestream: error: {says}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.onnx", "file"]


def test_check_passes_an_imported_folder_and_names_the_rule_and_the_fix_of_a_broken_one(
    graphs: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "one_step"
    import_onnx(graphs / "one_step.onnx", ImportSpec.load(graphs / "one_step.toml"), folder)
    done = statestream("check", str(folder))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{folder}: ok: model 'one_step' version 1 (task sequence_model)")
    manifest = json.loads((folder / "manifest.json").read_text())
    broken = {
        "manifest": ({**manifest, "colour": "red"}, "unknown key(s) ['colour']", "docs/your-model.md"),
        "task": ({**manifest, "task": "juggling"}, "unknown task 'juggling'", "set the manifest's task to one"),
        "golden": (
            {**manifest, "golden": {**manifest["golden"], "outputs": {"output": [[0.5]] * 8}}},
            "golden trace mismatch",
            "export or import the folder again",
        ),
    }
    for rule, (data, what, fix) in broken.items():
        (folder / "manifest.json").write_text(json.dumps(data))
        done = statestream("check", str(folder))
        assert done.returncode == 2, rule
        (line,) = done.stderr.strip().splitlines()
        assert f"check '{rule}' failed" in line and what in line and fix in line, line


def test_a_time_axis_fixed_at_another_size_is_refused_at_load(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 2])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 2])
    s_out = helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["batch", 2])
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["s_out"])]
    save(helper.make_model(helper.make_graph(nodes, "fixed_time", [x, s], [y, s_out]), opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "step.onnx"))  # fmt: skip
    manifest = {
        "schema_version": 1, "name": "fixed_time", "version": "1", "task": "sequence_model", "step_graph": "step.onnx",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [2]}],
        "state": [{"input": "s", "output": "s_out", "dtype": "float32", "shape": [2]}],
        "golden": {"inputs": {"x": [[0.0, 0.0]]}, "outputs": {}},
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    done = statestream("check", str(tmp_path))
    assert done.returncode == 2
    assert "check 'signature' failed" in done.stderr and "time axis (axis 1) is fixed at 3" in done.stderr


def test_import_statestream_exposes_the_sdk_and_the_version(tmp_path: Path) -> None:
    code = "import statestream; print(statestream.__version__, statestream.Client.__name__, statestream.import_onnx.__name__)"
    done = subprocess.run([STATESTREAM[0], "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    version = statestream("--version")
    assert version.stdout.strip() == f"statestream {done.stdout.split()[0]}"
    assert done.stdout.split()[1:] == ["Client", "import_onnx"]
