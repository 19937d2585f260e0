"""Shared fixtures: a tiny char-LM trained and exported once per run, and real servers on port 0."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.contract import Manifest
from service.settings import Settings
from tests.servers import ServerThread, serve_process

TESTS = Path(__file__).parent
ROOT = TESTS.parent
TINY_RECIPE = TESTS / "recipes" / "tiny_char_lm.toml"
SHIPPED_MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding ``char_lm``: the real recipe's network, tiny, trained 40 steps.

    It goes through the same train and export commands as the shipped model, parity check included.
    """
    from training.cli import export_command, train_command

    work = tmp_path_factory.mktemp("tiny_lm")
    runs, models = work / "runs", work / "models"
    assert (
        train_command(["char_lm", "--recipe", str(TINY_RECIPE), "--out", str(runs), "--quiet", "--device", "cpu"]) == 0
    )
    assert export_command(["char_lm", "--checkpoint", str(runs / "weights.pt"), "--out", str(models / "char_lm")]) == 0
    return models


@pytest.fixture
def models_dir(tiny_lm_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny models folder, so a test may add broken models to it."""
    target = tmp_path / "models"
    shutil.copytree(tiny_lm_dir, target)
    return target


@pytest.fixture(scope="module")
def server(tiny_lm_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=tiny_lm_dir, max_chunk=256, max_generate_tokens=500))
    yield running
    running.stop()


class OfflineLM:
    """The reference: the same graph run directly with ONNX Runtime, one character per call."""

    def __init__(self, folder: Path) -> None:
        self.manifest = Manifest.load(folder)
        self.session = ort.InferenceSession(str(folder / self.manifest.step_graph), providers=["CPUExecutionProvider"])
        self.vocab = {ch: i for i, ch in enumerate(self.manifest.vocabulary)}

    def logits(self, text: str) -> np.ndarray:
        """``[len(text), V]``: the logits after each character, state carried from zeros."""
        state = {s.input: np.zeros((1, *s.shape), np.float32) for s in self.manifest.state}
        names = ["logits", *(s.output for s in self.manifest.state)]
        rows = []
        for ch in text:
            logits, *new_state = self.session.run(names, {"char_id": np.array([[self.vocab[ch]]], np.int64), **state})
            state = {s.input: value for s, value in zip(self.manifest.state, new_state, strict=True)}
            rows.append(logits[0, 0])
        return np.stack(rows)


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only the shipped ``char_lm``: for tests that start whole server processes,
    where training the tiny model first would cost more than loading the shipped one."""
    target = tmp_path_factory.mktemp("shipped_lm") / "models"
    shutil.copytree(SHIPPED_MODELS / "char_lm", target / "char_lm")
    return target


@pytest.fixture(scope="session")
def shipped_lm(lm_dir: Path) -> OfflineLM:
    return OfflineLM(lm_dir / "char_lm")


@pytest.fixture(scope="session")
def offline_lm(tiny_lm_dir: Path) -> OfflineLM:
    return OfflineLM(tiny_lm_dir / "char_lm")


@dataclass(frozen=True)
class ShippedServer:
    """``statestream serve`` on the shipped models, as a newcomer starts it; its log goes to ``log``."""

    target: str
    log: Path
    env: dict[str, str]  # what a client run against it should be given (STATESTREAM_TARGET set)


@pytest.fixture(scope="session")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedServer]:
    """The README's server: the shipped ``models/char_lm``, default settings, JSON logs to a file.

    The log is a file, not a pipe: a pipe nobody reads fills up and stalls the server.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    log = tmp_path_factory.mktemp("shipped") / "server.log"
    with (
        log.open("w") as sink,
        serve_process(["--models-dir", str(SHIPPED_MODELS), "--log-json"], clean, cwd=ROOT, stderr=sink) as (
            _,
            _,
            target,
        ),
    ):
        yield ShippedServer(target, log, {**clean, "STATESTREAM_TARGET": target})


@pytest.fixture(scope="module")
def lstm256_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server on loopback serving the shipped ``lstm256`` alone (idle sessions kept 60 s):
    what the tests of requests read from their bytes send their streams to."""
    models = tmp_path_factory.mktemp("lstm256") / "models"
    shutil.copytree(SHIPPED_MODELS / "lstm256", models / "lstm256")
    running = ServerThread(Settings(models_dir=models, idle_timeout_s=60.0))
    yield running
    running.stop()
