"""The character language model: CharLSTM on Tiny Shakespeare, truncated BPTT, next-character loss."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import CharLMRecipe, describe_recipe_path


def train(recipe: CharLMRecipe, options: TrainOptions) -> dict[str, Any]:
    import torch

    from service.datasets.shakespeare import TRAIN_DATA_DESCRIPTION, load_shakespeare
    from training.loops import resolve_device, seed_everything
    from training.loops import train as run_loop
    from training.nets import CharLSTM

    loop = recipe.train
    if options.steps is not None:
        loop = replace(loop, steps=options.steps)
    if options.out is not None:
        loop = replace(loop, out=options.out)
    recipe = replace(recipe, train=loop)
    device = resolve_device(options.device)
    corpus = load_shakespeare()
    model_args = {"vocab_size": len(corpus.vocab), **asdict(recipe.model)}
    seed_everything(recipe.train.seed)  # the initial weights depend on the seed too
    model = CharLSTM(**model_args)
    metadata = {
        "model": model_args,
        "vocabulary": "".join(corpus.vocab.chars),
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "data": TRAIN_DATA_DESCRIPTION,
    }
    params = sum(p.numel() for p in model.parameters())
    print(
        f"training {recipe.name}: {params:,} parameters on {device} (torch {torch.__version__}), out {recipe.train.out}"
    )
    result = run_loop(
        model,
        corpus.train_ids,
        corpus.val_ids,
        recipe.train,
        device=device,
        metadata=metadata,
        resume=options.resume,
        max_minutes=options.max_minutes,
        progress=options.progress,
        title=f"{recipe.name}: {options.recipe_file.name}",
    )
    return asdict(result)


def export(options: ExportOptions) -> str:
    from training.export import export_char_lm

    report = export_char_lm(options.checkpoint, options.out, loss_curve=options.loss_curve, exporter=options.exporter)
    return (
        f"wrote {report.folder} ({report.exporter} exporter): parity max |diff| "
        f"{report.parity.max_diff:.2e} over {report.parity.steps} steps; "
        f"val loss {report.val_loss_nats_per_char:.4f} nats/char (ONNX)"
    )


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    from training.evaluate import evaluate_language_model

    return asdict(evaluate_language_model(folder, progress=progress))


KIND = TrainingKind("language_model", CharLMRecipe, train, export, evaluate)
