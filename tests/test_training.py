"""The training side: data, recipes, the truncated-BPTT loop, checkpoints and resume.

Everything runs on CPU with a tiny LSTM (hidden 32) on slices of Tiny Shakespeare, so the
file takes seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.datasets import CharCorpus, as_streams, load_shakespeare
from training.checkpoints import BEST_WEIGHTS_FILE, CHECKPOINT_FILE, LOSS_CURVE_FILE, WEIGHTS_FILE, load_weights
from training.cli import train_command
from training.loop_config import LoopConfig
from training.loops import (
    StreamChunks,
    TrainResult,
    seed_everything,
    stream_loss,
    train,
)
from training.recipes import RecipeError, load_recipe, recipe_path
from training.tasks.language_model.net import CharLSTM
from training.tasks.language_model.recipe import CharLMRecipe

TRAIN_CHARS = 40_000
VAL_CHARS = 8_000


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return load_shakespeare()


def tiny_net(vocab_size: int, seed: int = 7) -> CharLSTM:
    seed_everything(seed)
    return CharLSTM(vocab_size=vocab_size, embed=16, hidden=32, layers=2, dropout=0.1)


def tiny_config(out: Path, **changes: object) -> LoopConfig:
    config = LoopConfig(
        batch=8,
        bptt=32,
        steps=60,
        lr=1e-2,
        warmup_steps=4,
        min_lr_ratio=0.1,
        clip_norm=1.0,
        seed=7,
        eval_every=20,
        checkpoint_every=10,
        out=str(out),
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def run_tiny(corpus: CharCorpus, config: LoopConfig, **kwargs: object) -> tuple[CharLSTM, TrainResult]:
    net = tiny_net(len(corpus.vocab))
    result = train(
        net,
        corpus.train_ids[:TRAIN_CHARS],
        corpus.val_ids[:VAL_CHARS],
        config,
        progress=False,
        metadata={"model": "tiny"},
        **kwargs,  # type: ignore[arg-type]
    )
    return net, result


@pytest.fixture(scope="module")
def trained(corpus: CharCorpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[CharLSTM, TrainResult]:
    return run_tiny(corpus, tiny_config(tmp_path_factory.mktemp("run")))


def test_corpus_has_65_characters_and_a_90_10_split(corpus: CharCorpus) -> None:
    text = Path("service/datasets/corpora/tinyshakespeare.txt").read_text()
    assert len(corpus.vocab) == len(set(text)) == 65
    assert list(corpus.vocab.chars) == sorted(set(text))
    assert len(corpus.train_ids) + len(corpus.val_ids) == len(text)
    assert len(corpus.train_ids) == int(0.9 * len(text))
    assert corpus.val_text == text[len(corpus.train_ids) :]
    assert corpus.vocab.decode(corpus.vocab.encode("ROMEO:\nBut soft!")) == "ROMEO:\nBut soft!"


def test_unknown_character_is_refused(corpus: CharCorpus) -> None:
    with pytest.raises(KeyError, match="not in the vocabulary"):
        corpus.vocab.encode("naïve")


def test_tbptt_chunks_continue_each_stream_where_the_last_chunk_ended(corpus: CharCorpus) -> None:
    data = StreamChunks(torch.as_tensor(corpus.train_ids[:TRAIN_CHARS]), batch=8, bptt=32, seed=3)
    x0, y0, start0 = data.chunk(0)
    x1, _y1, start1 = data.chunk(1)
    assert start0 and not start1  # only an epoch's first chunk resets the state
    assert torch.equal(x0[:, 1:], y0[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(x1[:, 0], y0[:, -1])  # the next chunk starts where this one's targets ended
    rows = as_streams(corpus.train_ids[:TRAIN_CHARS], 8)
    for row in range(8):  # each batch row is one contiguous stretch of the corpus
        assert np.array_equal(x0[row].numpy(), rows[row][data.offset(0) : data.offset(0) + 32])


def test_training_lowers_the_loss(corpus: CharCorpus, trained: tuple[CharLSTM, TrainResult]) -> None:
    net, result = trained
    untrained = tiny_net(len(corpus.vocab))
    before, _ = stream_loss(untrained, corpus.val_ids[:VAL_CHARS])
    after, _ = stream_loss(net, corpus.val_ids[:VAL_CHARS])
    # An untrained net is near uniform (ln 65 = 4.17 nats); even learning only the character
    # frequencies brings it below 3.4, so a 0.5-nat drop is a margin any working loop clears.
    assert before > 3.9
    assert after < before - 0.5
    assert math.isclose(result.val_loss, after, rel_tol=1e-6)
    assert result.steps == 60 and not result.stopped_early


def test_loss_curve_png_and_weights_are_written(trained: tuple[CharLSTM, TrainResult]) -> None:
    out = Path(trained[1].out)
    assert (out / LOSS_CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in (WEIGHTS_FILE, BEST_WEIGHTS_FILE, CHECKPOINT_FILE):
        assert (out / name).stat().st_size > 0
    weights = load_weights(out / WEIGHTS_FILE)
    assert weights.training["steps"] == 60
    assert weights.metadata == {"model": "tiny"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60


def test_resume_continues_to_the_bit_identical_result(corpus: CharCorpus, tmp_path: Path) -> None:
    whole_net, whole = run_tiny(corpus, tiny_config(tmp_path / "whole", steps=40))
    _, first_part = run_tiny(corpus, tiny_config(tmp_path / "split", steps=40), stop_at_step=25)
    assert first_part.stopped_early and first_part.steps == 25
    resumed_net, resumed = run_tiny(corpus, tiny_config(tmp_path / "split", steps=40), resume=True)

    assert resumed.steps == whole.steps == 40
    for name, tensor in whole_net.state_dict().items():
        assert torch.equal(tensor, resumed_net.state_dict()[name]), name
    whole_history = torch.load(tmp_path / "whole" / CHECKPOINT_FILE, weights_only=True)["history"]
    resumed_history = torch.load(tmp_path / "split" / CHECKPOINT_FILE, weights_only=True)["history"]
    assert resumed_history["train"] == whole_history["train"]  # every step's loss, bit for bit
    assert resumed.val_loss == whole.val_loss


def test_resume_refuses_a_checkpoint_of_a_different_run(corpus: CharCorpus, tmp_path: Path) -> None:
    run_tiny(corpus, tiny_config(tmp_path, steps=10))
    with pytest.raises(ValueError, match="'lr'"):
        run_tiny(corpus, tiny_config(tmp_path, steps=20, lr=5e-3), resume=True)


def test_time_guard_stops_with_a_checkpoint(corpus: CharCorpus, tmp_path: Path) -> None:
    _, result = run_tiny(corpus, tiny_config(tmp_path), max_minutes=0.0)
    assert result.stopped_early and result.steps == 1
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["step"] == 1


def test_shipped_recipe_loads() -> None:
    recipe = load_recipe(recipe_path("char_lm"))
    assert isinstance(recipe, CharLMRecipe)
    assert recipe.name == "char_lm"


@pytest.mark.parametrize(("table", "key"), [(None, "colour"), ("model", "hiden"), ("train", "learning_rate")])
def test_unknown_recipe_key_is_refused_by_name(tmp_path: Path, table: str | None, key: str) -> None:
    text = recipe_path("char_lm").read_text()  # valid, so the added key is the only problem
    text = f"{key} = 1\n{text}" if table is None else text.replace(f"[{table}]\n", f"[{table}]\n{key} = 1\n")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(RecipeError, match=f"unknown key '{key}'"):
        load_recipe(tmp_path / "bad.toml")


def test_wrongly_typed_recipe_value_is_refused(tmp_path: Path) -> None:
    text = recipe_path("char_lm").read_text().replace("layers = 2", 'layers = "two"')
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(RecipeError, match="layers must be an integer"):
        load_recipe(tmp_path / "bad.toml")


def test_cli_train_writes_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = recipe_path("char_lm").read_text()
    for old, new in (("hidden = 512", "hidden = 32"), ("embed = 64", "embed = 16"), ("batch = 64", "batch = 8")):
        recipe = recipe.replace(old, new)
    (tmp_path / "tiny.toml").write_text(recipe)
    argv = [
        "char_lm",
        "--recipe",
        str(tmp_path / "tiny.toml"),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert train_command(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["device"] == "cpu"
    weights = load_weights(tmp_path / "run" / WEIGHTS_FILE)
    assert weights.metadata["model"]["hidden"] == 32
    assert weights.metadata["recipe_file"] == str(tmp_path / "tiny.toml")
