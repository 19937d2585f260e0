"""Command-line entry points of the training side: train, export, eval.

The server's ``statestream`` CLI dispatches its ``train``, ``export`` and ``eval`` verbs to
:func:`train_command`, :func:`export_command` and :func:`eval_command` with the arguments after
the verb; ``python -m training.cli VERB ...`` does the same without the server installed::

    python -m training.cli train char_lm [--recipe PATH] [--resume] [--steps N] [--device cpu|cuda]
    python -m training.cli train path/to/recipe.toml
    python -m training.cli export --checkpoint runs/char_lm/weights.pt --out models/char_lm
    python -m training.cli eval --model models/char_lm --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.kinds import ExportOptions, TrainOptions, UnknownKind, kind_of
from training.recipes import RecipeError, load_recipe, recipe_path


def _recipe_file(name_or_path: str) -> Path:
    """A recipe given as a path to a TOML file, or by the name of a shipped one (training/recipes/NAME.toml)."""
    path = Path(name_or_path)
    return path if path.suffix == ".toml" or path.exists() else recipe_path(name_or_path)


def _error(message: object) -> int:
    print(f"statestream: error: {message}", file=sys.stderr)
    return 2


def train_command(argv: list[str]) -> int:
    """``train RECIPE``: run a recipe of any kind (or resume it), writing to the recipe's ``out``."""
    parser = argparse.ArgumentParser(prog="statestream train", description=train_command.__doc__)
    parser.add_argument("recipe", help="a shipped recipe's name (training/recipes/NAME.toml, e.g. char_lm) or a path")
    parser.add_argument("--recipe", dest="recipe_file", type=Path, help="recipe TOML overriding RECIPE's file")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--out", help="override the recipe's output folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    path = args.recipe_file or _recipe_file(args.recipe)
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        return _error(exc)
    options = TrainOptions(
        recipe_file=path,
        steps=args.steps,
        out=args.out,
        device=args.device,
        resume=args.resume,
        max_minutes=args.max_minutes,
        progress=not args.quiet,
    )
    print(json.dumps(kind_of(recipe.kind).train(recipe, options)))
    return 0


def export_command(argv: list[str]) -> int:
    """``export [RECIPE] --checkpoint W --out DIR``: a checkpoint of any kind -> a model folder, after its parity checks."""
    parser = argparse.ArgumentParser(prog="statestream export", description=export_command.__doc__)
    parser.add_argument("recipe", nargs="?", help="the recipe it was trained with, when the checkpoint does not say")
    parser.add_argument("--checkpoint", type=Path, required=True, help="weights.pt, best.pt or checkpoint.pt")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/char_lm")
    parser.add_argument("--loss-curve", type=Path, help="PNG to ship (default: loss_curve.png beside the checkpoint)")
    parser.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"))
    args = parser.parse_args(argv)

    from training.checkpoints import load_weights
    from training.export import ParityError

    try:
        kind_name = load_weights(args.checkpoint).metadata.get("recipe", {}).get("kind")
        if not kind_name:
            if args.recipe is None:
                return _error(f"{args.checkpoint} does not say its kind: name the recipe it was trained with")
            kind_name = load_recipe(_recipe_file(args.recipe)).kind
        kind = kind_of(kind_name)
        options = ExportOptions(args.checkpoint, args.out, args.loss_curve, args.exporter)
        print(kind.export(options))
    except (RecipeError, UnknownKind, FileNotFoundError) as exc:
        return _error(exc)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def eval_command(argv: list[str]) -> int:
    """``eval --model FOLDER``: a model folder's scores, recomputed from its ONNX graphs by its kind's scorer."""
    parser = argparse.ArgumentParser(prog="statestream eval", description=eval_command.__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model folder, e.g. models/char_lm")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from service.contract import ContractError, Manifest

    try:
        manifest = Manifest.load(args.model)
        score = kind_of(manifest.task).evaluate(args.model)
    except (ContractError, UnknownKind) as exc:
        return _error(exc)
    if args.json:
        print(json.dumps(score))
    elif "val_loss_nats_per_char" in score:
        print(
            f"{score['model']}: {score['val_loss_nats_per_char']:.4f} nats/char over {score['chars']:,} held-out characters"
        )
    else:
        print(f"{manifest.name}: " + ", ".join(f"{k} {v}" for k, v in score.items() if k != "model"))
    return 0


COMMANDS = {"train": train_command, "export": export_command, "eval": eval_command}


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cli {train,export,eval} ...``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
