"""The date translator end to end: export parity, the served decode, bad input, the CLI, eval.

A tiny translator (tests/recipes/tiny_dates.toml: the shipped network, tiny, two heads) goes
through the same train and export commands as models/dates. What it translates is mostly wrong
after 20 steps; the tests check that every path computes the same thing, not that it is good
(the shipped model's scores are in its manifest, recomputed by ``statestream eval``).

Tolerances: 1e-5 between the served attention and an offline ONNX Runtime run of the same
graphs (same kernels, batch 1 vs a batch: float32 rounding only); 1e-4 between ONNX Runtime and
PyTorch (the export's parity bar).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from service import command
from service.api import statestream_pb2 as pb
from service.client import commands
from service.client.sdk import Client
from service.contract import Manifest
from service.settings import Settings
from service.tensors import from_proto
from tests.servers import ServerThread
from tests.test_model_kinds import _open_fails
from training.tasks.translator import dates
from training.tasks.translator.codec import END, TARGET_STEPS
from training.tasks.translator.evaluate import OnnxTranslator, codec_of
from training.tasks.translator.export import load_translator
from training.tasks.translator.train import translate_with_torch

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "recipes" / "tiny_dates.toml"
SERVED_TOLERANCE = 1e-5
PARITY_TOLERANCE = 1e-4
TEXTS = ["Nov 27, 2026", "27. November 2026", "2026年11月27日", "11/27/26", "le 1er mai 1999"]


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.cli import export_command, train_command

    work = tmp_path_factory.mktemp("dates")
    runs, models = work / "runs", work / "models"
    assert train_command(["dates", "--recipe", str(TINY_RECIPE), "--out", str(runs), "--quiet"]) == 0
    assert export_command(["dates", "--checkpoint", str(runs / "weights.pt"), "--out", str(models / "dates")]) == 0
    return models


@pytest.fixture(scope="module")
def offline(translator_dir: Path) -> OnnxTranslator:
    return OnnxTranslator.from_folder(translator_dir / "dates")


@pytest.fixture(scope="module")
def translate_server(translator_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=translator_dir, max_run_steps=64))
    yield running
    running.stop()


def _offline_tokens(offline: OnnxTranslator, text: str) -> tuple[list[int], np.ndarray]:
    """The greedy decode of the graphs run directly: token ids up to END, and their attention."""
    codec_end = offline.manifest.vocabulary.index(END)
    chars, mask = codec_of(offline.manifest).encode_sources([text])
    step, state = offline.decoder(chars, mask)
    tokens: list[int] = []
    weights: list[np.ndarray] = []
    previous = np.array([offline.manifest.vocabulary.index("<start>")], np.int64)
    for _ in range(TARGET_STEPS):
        logits, attention, state = step(previous, state)
        previous = logits.argmax(axis=-1).astype(np.int64)
        if int(previous[0]) == codec_end:
            break
        tokens.append(int(previous[0]))
        weights.append(attention[0])
    return tokens, np.array(weights)


def _served(target: str, text: str, **options: float) -> tuple[list[int], np.ndarray, str]:
    with Client(target) as client:
        session = client.open("dates", init=text.encode())
        tokens, weights, stop = [], [], ""
        for event in session.run(TARGET_STEPS, options=dict(options)):
            if isinstance(event, pb.RunOutput):
                tokens.append(event.output.top[0].id)
                weights.append(from_proto(event.output.tensors[0]))
            else:
                stop = event.stop_reason
        session.close()
    return tokens, np.array(weights), stop


def test_onnx_graphs_decode_as_pytorch_does(translator_dir: Path, offline: OnnxTranslator) -> None:
    runs = translator_dir.parent / "runs"
    net, codec, _, _ = load_translator(runs / "weights.pt")
    pairs = dates.sample(dates.split_templates().heldout, 64, 11)
    texts = [text for text, _ in pairs]
    got, _ = offline.translate(texts)
    assert got == translate_with_torch(net, codec, texts)  # the full greedy decode, token for token
    chars, mask = codec.encode_sources(texts)
    with torch.no_grad():
        s0, annotations, keys = net.encode(torch.from_numpy(chars), torch.from_numpy(mask))
    manifest = offline.manifest
    made = dict(
        zip(
            manifest.init_outputs,
            offline.init.run(manifest.init_outputs, {"chars": chars, "chars_mask": mask}),
            strict=True,
        )
    )
    for name, reference in (("h", s0), ("annotations", annotations), ("keys", keys)):
        np.testing.assert_allclose(made[name], reference.numpy(), atol=PARITY_TOLERANCE, rtol=0)


def test_step_attention_sums_to_one_over_the_text_and_is_zero_on_padding(offline: OnnxTranslator) -> None:
    _, weights = offline.translate(TEXTS)  # [N, steps, L]
    for row, text in enumerate(TEXTS):
        np.testing.assert_allclose(weights[row].sum(axis=-1), 1.0, atol=1e-5)
        assert np.all(weights[row][:, len(text) :] == 0.0)


@pytest.mark.parametrize("text", TEXTS)
def test_a_served_translation_equals_the_offline_decode(
    translate_server: ServerThread, offline: OnnxTranslator, text: str
) -> None:
    tokens, weights = _offline_tokens(offline, text)
    served_tokens, served_weights, stop = _served(translate_server.target, text)
    assert served_tokens == tokens
    assert stop == ("end" if len(tokens) < TARGET_STEPS else "max_steps")
    np.testing.assert_allclose(
        served_weights.reshape(len(tokens), -1), weights.reshape(len(tokens), -1), atol=SERVED_TOLERANCE
    )


def test_concurrent_translations_each_equal_their_solo_decode(
    translate_server: ServerThread, offline: OnnxTranslator
) -> None:
    texts = TEXTS * 3
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        results = list(pool.map(lambda t: _served(translate_server.target, t)[0], texts))
    assert results == [_offline_tokens(offline, t)[0] for t in texts]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pb.InitPayload(data=b"\xff\xfe"), "not UTF-8"),
        (pb.InitPayload(data=("x" * (dates.MAX_INPUT_CHARS + 1)).encode()), f"reads at most {dates.MAX_INPUT_CHARS}"),
        (pb.InitPayload(data="Nov 27, 2026 ☃§".encode()), "2 character(s) outside"),
        (pb.InitPayload(tensors=[pb.Tensor(name="chars")]), "not tensors"),
    ],
)
def test_bad_text_is_refused_and_disturbs_no_one(
    translate_server: ServerThread, offline: OnnxTranslator, payload: pb.InitPayload, message: str
) -> None:
    with Client(translate_server.target) as client:
        bystander = client.open("dates", init=b"Nov 27, 2026")
        before = len(translate_server.server.store)
        error = _open_fails(translate_server.target, pb.OpenSession(model="dates", init=payload))
        assert error.code().name == "INVALID_ARGUMENT" and message in (error.details() or "")
        assert len(translate_server.server.store) == before
        events = list(bystander.run(TARGET_STEPS))
        bystander.close()
    assert [e.output.top[0].id for e in events if isinstance(e, pb.RunOutput)] == _offline_tokens(
        offline, "Nov 27, 2026"
    )[0]


def test_an_empty_text_is_refused(translate_server: ServerThread) -> None:
    # An empty text is an empty payload on the wire: the translator says the text is empty.
    error = _open_fails(translate_server.target, pb.OpenSession(model="dates", init=pb.InitPayload(data=b"")))
    assert error.code().name == "INVALID_ARGUMENT" and "the text is empty" in (error.details() or "")


def test_the_client_command_refuses_an_empty_text_before_calling(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["translate", "--model", "dates", "--text", "", "--target", "127.0.0.1:1"]  # nothing listens there
    assert command.run(lambda: commands.main(argv, environ={})) == command.EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == ["statestream: error: --text is empty: give the text to translate"]


def test_the_client_command_prints_the_translation_and_draws_the_matrix(
    translate_server: ServerThread, offline: OnnxTranslator, tmp_path: Path
) -> None:
    png = tmp_path / "attention.png"
    out = io.StringIO()
    argv = ["translate", "--model", "dates", "--text", "Nov 27, 2026", "--json", "--attention-png", str(png)]
    argv += ["--max-chars", str(TARGET_STEPS)]  # the tiny model may never choose <end>
    with contextlib.redirect_stdout(out):
        assert commands.main([*argv, "--target", translate_server.target], environ={}) == 0
    summary = json.loads(out.getvalue())
    tokens, _ = _offline_tokens(offline, "Nov 27, 2026")
    vocabulary = offline.manifest.vocabulary
    assert [c["char"] for c in summary["characters"]] == [vocabulary[t] for t in tokens]
    assert all(0 <= c["peak"] < len("Nov 27, 2026") for c in summary["characters"])
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > len("Nov 27, 2026") * 10


def test_eval_recomputes_the_manifest_scores(translator_dir: Path) -> None:
    from training.cli import eval_command

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert eval_command(["--model", str(translator_dir / "dates"), "--json"]) == 0
    report = json.loads(out.getvalue())
    scores = Manifest.load(translator_dir / "dates").scores
    assert scores["exact_match_heldout_templates"] == report["exact_match_heldout_templates"]
    assert scores["exact_match_seen_templates"] == report["exact_match_seen_templates"]
