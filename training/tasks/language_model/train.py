"""Training a character language model: the shared truncated-BPTT loop over Tiny Shakespeare."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch

from service.datasets.shakespeare import TRAIN_DATA_DESCRIPTION, load_shakespeare
from training.loops import resolve_device, seed_everything
from training.loops import train as run_loop
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.language_model.net import CharLSTM
from training.tasks.language_model.recipe import CharLMRecipe


def train(recipe: CharLMRecipe, options: TrainOptions) -> dict[str, Any]:
    loop = options.applied_to(recipe.train)
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
