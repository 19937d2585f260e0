"""Associative memories served: a completion Run streamed sweep by sweep, steps as pixels arrive, bad probes.

Tiny memories are exported in a fixture (a Storkey Hopfield net over five letters, a 16-pixel
RBM with random weights) and served by a real server on a loopback port. The reference of
every streamed run is the same ONNX graph run offline with ``completion_feeds`` (the run's whole
randomness) from a zero state: patterns are exact (±1 / 0/1 values), energies equal to 1e-6 (the
same float32 graph on the same inputs; batching cannot change a row, docs/memory.md).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service import command
from service.api import statestream_pb2 as pb
from service.auth import ANONYMOUS
from service.client import commands
from service.client.sdk import AsyncClient, Client, StepFailed
from service.contract import Manifest, zero_state
from service.datasets.patterns import LETTER_SHAPE, flip_bits, letter_patterns
from service.drivers.memory import completion_feeds, geometric_schedule
from service.settings import Settings
from service.tensors import from_proto
from tests.servers import ServerThread
from training.onnx_replay import open_session, ort_step_fn
from training.tasks.associative_memory.boltzmann import RBM
from training.tasks.associative_memory.export import export_memory
from training.tasks.associative_memory.hopfield import Hopfield

LETTERS = "EQVYZ"
TOLERANCE = 1e-6
MAX_RUN_STEPS = 100
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("memories")
    stored = letter_patterns(LETTERS)
    export_memory(
        Hopfield.from_patterns(stored, rule="storkey"),
        root / "letters",
        name="letters",
        description="test letters",
        shape=LETTER_SHAPE,
        golden_start=stored[0],
        decoding={"pattern_names": list(LETTERS), "patterns": stored.tolist()},
    )
    torch.manual_seed(0)
    rbm = RBM(visible=16, hidden=8)
    with torch.no_grad():
        rbm.weight.normal_(0.0, 1.0)
    export_memory(rbm, root / "rbm", name="rbm", description="test rbm", shape=(4, 4), golden_start=np.zeros(16))
    return root


@pytest.fixture(scope="module")
def memory_server(memory_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=memory_dir, max_run_steps=MAX_RUN_STEPS))
    yield running
    running.stop()


def offline(
    folder: Path, pattern: np.ndarray, mask: np.ndarray, *, seed: int, max_steps: int, temperatures: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """The reference completion: the graph run with ONNX Runtime, one sweep per call, the server's stop rules."""
    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(folder / manifest.step_graph))
    state = zero_state(manifest, 1)
    patterns, energies = [], []
    feeds = completion_feeds(manifest, pattern, mask, seed=seed, temperatures=temperatures)
    for index in range(max_steps):
        out = step(next(feeds) | state)
        state = {"pattern_in": out["pattern_out"]}
        patterns.append(out["pattern_out"][0])
        energies.append(float(out["energy"][0, 0]))
        if temperatures is None and out["changed"][0, 0] == 0:
            return np.stack(patterns), np.array(energies), "fixed_point"
        if temperatures is not None and index + 1 == len(temperatures):
            return np.stack(patterns), np.array(energies), "schedule_end"
    return np.stack(patterns), np.array(energies), "max_steps"


def streamed(answers: list[pb.RunOutput | pb.RunDone]) -> tuple[np.ndarray, np.ndarray, pb.RunDone, list[str]]:
    outputs = [a for a in answers if isinstance(a, pb.RunOutput)]
    done = answers[-1]
    assert isinstance(done, pb.RunDone)
    tensors = [{t.name: from_proto(t) for t in o.output.tensors} for o in outputs]
    return (
        np.stack([t["pattern"] for t in tensors]),
        np.array([float(t["energy"]) for t in tensors]),
        done,
        [o.output.label for o in outputs],
    )


def _noisy_letter(index: int, seed: int) -> np.ndarray:
    return flip_bits(letter_patterns(LETTERS)[index : index + 1], 0.2, seed=seed)[0]


def test_a_streamed_completion_equals_the_offline_one_and_stops_at_a_fixed_point(
    memory_server: ServerThread, memory_dir: Path
) -> None:
    probe = _noisy_letter(0, seed=1)
    free = np.zeros_like(probe)
    with Client(memory_server.target) as client:
        info = client.get_model("letters")
        assert "fixed_point" in info.task_info.run
        session = client.open("letters")
        answers = list(session.run(50, tensors={"pattern": probe[None], "mask": free[None]}, seed=3))
    patterns, energies, done, labels = streamed(answers)
    want_patterns, want_energies, reason = offline(
        memory_dir / "letters", probe, free, seed=3, max_steps=50, temperatures=None
    )
    assert (
        (done.stop_reason, done.steps, done.seed) == (reason, len(want_patterns), 3) == ("fixed_point", done.steps, 3)
    )
    np.testing.assert_array_equal(patterns, want_patterns)
    np.testing.assert_allclose(energies, want_energies, atol=TOLERANCE)
    assert np.all(np.diff(energies) <= TOLERANCE)  # asynchronous sweeps never raise the energy
    assert labels[-1] == "E" and np.array_equal(patterns[-1], letter_patterns("E")[0])


def test_a_partial_probe_keeps_its_known_units(memory_server: ServerThread) -> None:
    letter = letter_patterns("Z")[0]
    mask = np.zeros_like(letter)
    mask[:20] = 1.0
    with Client(memory_server.target) as client:
        session = client.open("letters")
        answers = list(session.run(30, tensors={"pattern": (letter * mask)[None], "mask": mask[None]}, seed=0))
    patterns, _, done, labels = streamed(answers)
    assert done.stop_reason == "fixed_point"
    np.testing.assert_array_equal(patterns[:, :20], np.broadcast_to(letter[:20], (len(patterns), 20)))
    assert labels[-1] == "Z"


def test_a_seeded_annealing_run_is_reproducible_alone_and_among_others(
    memory_server: ServerThread, memory_dir: Path
) -> None:
    rng = np.random.default_rng(0)
    mask = (np.arange(16) < 8).astype(np.float32)
    probe = (rng.random(16) < 0.5).astype(np.float32) * mask
    options = {"t_start": 2.0, "t_end": 0.5, "sweeps": 12}
    tensors = {"pattern": probe[None], "mask": mask[None]}

    async def one(client: AsyncClient, seed: int) -> list[pb.RunOutput | pb.RunDone]:
        session = await client.open("rbm")
        return [a async for a in session.run(40, tensors=tensors, options=options, seed=seed)]

    async def together() -> list[list[pb.RunOutput | pb.RunDone]]:
        async with AsyncClient(memory_server.target) as client:
            return list(await asyncio.gather(*(one(client, seed) for seed in (5, 6, 5, 7, 8, 5))))

    async def alone() -> list[pb.RunOutput | pb.RunDone]:
        async with AsyncClient(memory_server.target) as client:
            return await one(client, 5)

    solo = streamed(asyncio.run(alone()))
    crowd = [streamed(answers) for answers in asyncio.run(together())]
    want_patterns, want_energies, reason = offline(
        memory_dir / "rbm", probe, mask, seed=5, max_steps=40, temperatures=geometric_schedule(2.0, 0.5, 12)
    )
    assert (solo[2].stop_reason, solo[2].steps) == (reason, 12) == ("schedule_end", 12)
    np.testing.assert_array_equal(solo[0], want_patterns)
    np.testing.assert_allclose(solo[1], want_energies, atol=TOLERANCE)
    for index in (0, 2, 5):  # the seed-5 runs among others equal the solo run
        np.testing.assert_array_equal(crowd[index][0], solo[0])
        np.testing.assert_allclose(crowd[index][1], solo[1], atol=TOLERANCE)
    assert not all(np.array_equal(crowd[1][0], c[0]) for c in crowd[3:5])  # other seeds draw differently
    np.testing.assert_array_equal(solo[0][:, :8], np.broadcast_to(probe[:8], (12, 8)))  # known pixels held


def test_pixels_arriving_over_plain_steps_equal_the_offline_sweeps(
    memory_server: ServerThread, memory_dir: Path
) -> None:
    """Completion as pixels arrive: each Step clamps what is known so far and runs one sweep from where the session is."""
    letter = letter_patterns("V")[0]
    rng = np.random.default_rng(4)
    reveal = [10, 20, 35]
    feeds = []
    for known in reveal:
        mask = (np.arange(35) < known).astype(np.float32)
        feeds.append(
            {
                "clamp_mask": mask[None],
                "clamp_values": (letter * mask)[None],
                "noise": rng.random((1, 35), dtype=np.float32),
            }
        )
    manifest = Manifest.load(memory_dir / "letters")
    step = ort_step_fn(open_session(memory_dir / "letters" / manifest.step_graph))
    state = zero_state(manifest, 1)
    want = []
    for feed in feeds:
        out = step({k: v[None] for k, v in feed.items()} | state)
        state = {"pattern_in": out["pattern_out"]}
        want.append(float(out["energy"][0, 0]))
    with Client(memory_server.target) as client:
        session = client.open("letters", return_tensors=["energy", "changed"])
        got = [float(from_proto(session.step(tensors=feed).outputs[0].tensors[0])) for feed in feeds]
        row = memory_server.server.store.get(session.id, ANONYMOUS)
        final = row.runtime.slabs.read_row(row.row)["pattern_in"]
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    np.testing.assert_array_equal(final, state["pattern_in"][0])
    np.testing.assert_array_equal(final, letter)  # all pixels known: the letter itself


def _probe(pattern: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    tensors = {"pattern": pattern.astype(np.float32)[None]}
    if mask is not None:
        tensors["mask"] = mask.astype(np.float32)[None]
    return tensors


LETTER = letter_patterns("E")[0]


@pytest.mark.parametrize(
    ("model", "tensors", "max_steps", "options", "code", "message"),
    [
        ("letters", _probe(LETTER[:30]), 10, {}, "INVALID_ARGUMENT", "the model takes float32 [1, 35]"),
        ("letters", _probe(LETTER * 0.5), 10, {}, "INVALID_ARGUMENT", "takes -1, +1 or 0"),
        ("letters", _probe(LETTER, np.ones(34)), 10, {}, "INVALID_ARGUMENT", "'mask' is float32 [1, 34]"),
        ("letters", _probe(LETTER, np.full(35, 2.0)), 10, {}, "INVALID_ARGUMENT", "mask takes 0"),
        ("letters", _probe(np.zeros(35), np.ones(35)), 10, {}, "INVALID_ARGUMENT", "must be -1 or +1"),
        ("letters", _probe(np.full(35, np.nan)), 10, {}, "INVALID_ARGUMENT", "NaN"),
        ("letters", {}, 10, {}, "INVALID_ARGUMENT", "needs Run.tensors"),
        ("letters", _probe(LETTER), MAX_RUN_STEPS + 1, {}, "RESOURCE_EXHAUSTED", "max_run_steps"),
        ("letters", _probe(LETTER), 10, {"t_start": 2.0}, "INVALID_ARGUMENT", "deterministic"),
        ("rbm", _probe(np.full(16, 0.5), np.ones(16)), 10, {}, "INVALID_ARGUMENT", "takes 0 or 1"),
        ("rbm", _probe(np.ones(16)), 10, {}, "INVALID_ARGUMENT", "missing probe tensor(s) ['mask']"),
        ("rbm", _probe(np.ones(16), np.ones(16)), 10, {"t_end": 0.0}, "INVALID_ARGUMENT", "> 0"),
        ("rbm", _probe(np.ones(16), np.ones(16)), 10, {"speed": 1.0}, "INVALID_ARGUMENT", "unknown run option"),
    ],
)
def test_a_bad_completion_is_refused_in_the_stream_and_leaves_the_session_unchanged(
    memory_server: ServerThread,
    model: str,
    tensors: dict[str, np.ndarray],
    max_steps: int,
    options: dict[str, float],
    code: str,
    message: str,
) -> None:
    units = 35 if model == "letters" else 16
    with Client(memory_server.target) as client:
        session = client.open(model)
        good = _probe(LETTER) if model == "letters" else _probe(np.ones(units), np.ones(units))
        list(session.run(5, tensors=good, seed=1))  # the session holds a completed pattern
        stored = memory_server.server.store.get(session.id, ANONYMOUS)
        before = stored.runtime.slabs.read_row(stored.row)["pattern_in"]
        with pytest.raises(StepFailed) as raised:
            list(session.run(max_steps, tensors=tensors, options=options, seed=1))
        assert raised.value.error.code_name == code and message in raised.value.error.message
        np.testing.assert_array_equal(stored.runtime.slabs.read_row(stored.row)["pattern_in"], before)
        assert session.last_seq == 1  # the refused run took no seq: the next one is 2
        again = list(session.run(5, tensors=good, seed=1))
        assert isinstance(again[-1], pb.RunDone) and session.last_seq == 2


# -- the client command --------------------------------------------------------------------


def test_client_complete_prints_the_sweeps_as_json(
    memory_server: ServerThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "sweeps.png"
    argv = ["complete", "--target", memory_server.target, "--model", "letters", "--pattern", "Y"]
    code = commands.main([*argv, "--noise", "0.2", "--seed", "3", "--json", "--png", str(png)], environ={})
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["stop_reason"] == "fixed_point" and summary["seed"] == 3
    assert summary["steps"] == len(summary["sweeps"]) >= 1 and summary["sweeps"][-1]["changed"] == 0
    assert summary["recalled"] and summary["sweeps"][-1]["label"] == "Y"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_complete_refuses_what_it_cannot_build(
    memory_server: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["complete", "--target", memory_server.target, "--model", "letters"]

    def exit_code(*extra: str) -> int:  # through the one error path every command runs under
        return command.run(lambda: commands.main([*argv, *extra], environ={}))

    assert exit_code("--pattern", "7") == command.EXIT_USAGE  # a digit for a letter memory
    assert "a digit has 64 pixels" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on the serving install: the import fails
    assert exit_code("--pattern", "E", "--png", "x.png") == command.EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines() == [
        "statestream: error: --png needs matplotlib; pip install 'statestream[train]'"
    ]
    assert exit_code("--pattern", "E", "--max-steps", str(MAX_RUN_STEPS + 1)) == command.EXIT_REFUSED
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err


# -- the shipped models ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hopfield_letters", "dense_letters", "rbm_digits"])
def test_eval_recomputes_the_shipped_scores(name: str) -> None:
    from training.tasks.associative_memory.evaluate import evaluate

    folder = ROOT / "models" / name
    recorded = Manifest.load(folder).scores
    assert recorded  # scored at export
    assert {k: v for k, v in evaluate(folder).items() if k != "model"} == pytest.approx(dict(recorded), abs=1e-12)
