"""The date translator: a character encoder-decoder with attention, "Nov 27, 2026" -> "2026-11-27".

``statestream train dates`` trains it on generated surface forms (``training.translation``);
``statestream export`` writes the init graph (the encoder) and the step graph (one decoder
step), checked against PyTorch (``training.export_attention``); ``statestream eval`` decodes
the held-out templates greedily with ONNX Runtime (``training.evaluate_translation``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import describe_recipe_path
from training.translation import ModelConfig, TrainConfig


@dataclass(frozen=True)
class TranslatorRecipe:
    """A shipped translator: its name, the network's size and the training run."""

    name: str
    kind: str
    description: str
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train(recipe: TranslatorRecipe, options: TrainOptions) -> dict[str, Any]:
    import torch

    from service.datasets.dates import DATA_DESCRIPTION
    from training.loops import seed_everything
    from training.translation import Codec, build_model, train_translator

    if options.resume:
        raise ValueError(f"{recipe.name}: a translator run is short and is not resumable; run it again")
    if options.device not in ("auto", "cpu"):
        raise ValueError(f"{recipe.name}: the translator trains on the CPU (--device {options.device} asked)")
    loop = recipe.train
    if options.steps is not None:
        loop = replace(loop, steps=options.steps)
    if options.out is not None:
        loop = replace(loop, out=options.out)
    recipe = replace(recipe, train=loop)
    torch.set_num_threads(1)  # the recorded time is one core's; results do not depend on it
    codec = Codec.for_dates()
    seed_everything(loop.seed)  # the initial weights depend on the seed too
    model = build_model(codec, recipe.model)
    metadata = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "source_vocabulary": list(codec.source),
        "data": DATA_DESCRIPTION,
    }
    params = sum(p.numel() for p in model.parameters())
    print(f"training {recipe.name}: {params:,} parameters on cpu (torch {torch.__version__}), out {loop.out}")
    run = train_translator(
        model,
        codec,
        loop,
        metadata=metadata,
        max_minutes=options.max_minutes,
        progress=options.progress,
        title=f"{recipe.name}: {options.recipe_file.name}",
    )
    return dataclasses.asdict(run)


def export(options: ExportOptions) -> str:
    from training.export_translator import export_translator

    return export_translator(options.checkpoint, options.out)


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    from training.evaluate_translation import evaluate_translator

    return evaluate_translator(folder, progress=progress)


KIND = TrainingKind("translator", TranslatorRecipe, train, export, evaluate)
