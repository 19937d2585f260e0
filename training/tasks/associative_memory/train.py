"""Building an associative memory: Hebbian or Storkey weights and the dense memory's patterns in closed
form (a fraction of a second), or the RBM trained by contrastive divergence on the bundled digits."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from service.datasets.patterns import letter_patterns, load_digits_binary
from training.checkpoints import WEIGHTS_FILE, write_weights
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.associative_memory.dense_hopfield import DenseHopfield
from training.tasks.associative_memory.hopfield import Hopfield
from training.tasks.associative_memory.rbm_training import RBMConfig, train_rbm
from training.tasks.associative_memory.recipe import MemoryRecipe


def build_net(recipe: MemoryRecipe) -> tuple[Any, dict[str, float]]:
    """The memory of ``recipe``, computed (Hopfield, dense) or trained (RBM); returns ``(net, facts)``."""
    if recipe.net == "hopfield":
        return Hopfield.from_patterns(letter_patterns(recipe.letters), rule=recipe.rule, update=recipe.update), {}  # type: ignore[arg-type]
    if recipe.net == "dense_hopfield":
        return DenseHopfield(patterns=letter_patterns(recipe.letters), beta=recipe.beta), {}
    config = RBMConfig(
        hidden=recipe.hidden,
        k=recipe.k,
        persistent=recipe.persistent,
        epochs=recipe.epochs,
        batch=recipe.batch,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
    )
    rbm, history = train_rbm(load_digits_binary().train, config)
    return rbm, {"final_reconstruction_error": history.reconstruction_error[-1]}


def train(recipe: MemoryRecipe, options: TrainOptions) -> dict[str, Any]:

    if options.steps is not None:  # the only iterative memory: --steps sets the RBM's epochs
        if recipe.net != "rbm":
            raise ValueError(f"{recipe.name}: a {recipe.net} memory is computed in closed form; --steps does not apply")
        recipe = replace(recipe, epochs=options.steps)
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    net, facts = build_net(recipe)
    elapsed = time.perf_counter() - started
    metadata = {"recipe": recipe.to_dict(), "recipe_file": describe_recipe_path(options.recipe_file)}
    training = {"time_s": round(elapsed, 2), "torch": str(torch.__version__), "device": "cpu", **facts}
    write_weights(out / WEIGHTS_FILE, net, metadata, training)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_FILE), **training}
