"""Command-line entry points of the training side: train, export, eval.

The server's ``statestream`` CLI dispatches its ``train``, ``export`` and ``eval`` verbs to
:func:`train_command`, :func:`export_command` and :func:`eval_command` with the arguments after
the verb; ``python -m training.cli VERB ...`` does the same without the server installed::

    python -m training.cli train char_lm [--recipe PATH] [--resume] [--steps N] [--device cpu|cuda]
    python -m training.cli export char_lm --checkpoint runs/char_lm/weights.pt --out models/char_lm
    python -m training.cli eval --model models/char_lm --json
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TextIO

from service.command import EXIT_INTERNAL, EXIT_USAGE, CommandError, Parser, positive_int
from training.recipes import RecipeError, describe_recipe_path, load_recipe, recipe_path

#: Models that have a recipe and an exporter.
MODELS = ("char_lm",)


def show_progress(*, quiet: bool, as_json: bool, stream: TextIO | None = None) -> bool:
    """Whether train and eval draw a progress bar: not when asked to be quiet or to print JSON, and
    only to a terminal (a bar's carriage returns make a log file or a CI transcript unreadable)."""
    stream = sys.stderr if stream is None else stream
    return not quiet and not as_json and stream.isatty()


def train_command(argv: list[str]) -> int:
    """``train MODEL``: run the model's recipe (or resume it), writing to the recipe's ``out``."""
    parser = Parser(
        prog="statestream train",
        description="Train a model from its recipe (or resume the run), writing checkpoints, weights, the\n"
        "loss curve and a summary to the recipe's output folder.",
    )
    parser.add_argument("model", choices=MODELS, help="the model to train")
    parser.add_argument("--recipe", type=Path, help="recipe TOML (default: training/recipes/MODEL.toml)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--steps", type=positive_int, help="override the recipe's step count")
    parser.add_argument("--out", help="override the recipe's output folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if available")
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)"
    )
    args = parser.parse_args(argv)

    import torch

    from training.data.shakespeare import TRAIN_DATA_DESCRIPTION, load_shakespeare
    from training.loops import resolve_device, seed_everything, train
    from training.nets import CharLSTM

    path = args.recipe or recipe_path(args.model)
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    overrides = {k: v for k, v in (("steps", args.steps), ("out", args.out)) if v is not None}
    recipe = replace(recipe, train=replace(recipe.train, **overrides))
    device = resolve_device(args.device)

    corpus = load_shakespeare()
    model_args = {"vocab_size": len(corpus.vocab), **asdict(recipe.model)}
    seed_everything(recipe.train.seed)  # the initial weights depend on the seed too
    model = CharLSTM(**model_args)
    metadata = {
        "model": model_args,
        "vocabulary": "".join(corpus.vocab.chars),
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(path),
        "data": TRAIN_DATA_DESCRIPTION,
    }
    params = sum(p.numel() for p in model.parameters())
    print(
        f"training {args.model}: {params:,} parameters on {device} (torch {torch.__version__}), out {recipe.train.out}"
    )
    result = train(
        model,
        corpus.train_ids,
        corpus.val_ids,
        recipe.train,
        device=device,
        metadata=metadata,
        resume=args.resume,
        max_minutes=args.max_minutes,
        progress=show_progress(quiet=args.quiet, as_json=False),
        title=f"{args.model}: {path.name}",
    )
    print(json.dumps(asdict(result)))
    return 0


def export_command(argv: list[str]) -> int:
    """``export MODEL``: checkpoint -> model folder (step.onnx + manifest.json), after the parity check."""
    parser = Parser(
        prog="statestream export",
        description="Export a trained checkpoint to a model folder (step.onnx + manifest.json), after\n"
        "checking that ONNX Runtime gives the PyTorch model's outputs.",
    )
    parser.add_argument("model", choices=MODELS, help="the model the checkpoint holds")
    parser.add_argument("--checkpoint", type=Path, required=True, help="weights.pt, best.pt or checkpoint.pt")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/char_lm")
    parser.add_argument("--loss-curve", type=Path, help="PNG to ship (default: loss_curve.png beside the checkpoint)")
    parser.add_argument(
        "--exporter",
        default="auto",
        choices=("auto", "torchscript", "dynamo"),
        help="torch's ONNX exporter; auto tries torchscript, then dynamo",
    )
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        raise CommandError(f"--checkpoint {args.checkpoint}: no such file", EXIT_USAGE)

    from training.export import ParityError, export_char_lm

    try:
        report = export_char_lm(args.checkpoint, args.out, loss_curve=args.loss_curve, exporter=args.exporter)
    except ParityError as exc:
        raise CommandError(str(exc), EXIT_INTERNAL) from exc
    print(
        f"wrote {report.folder} ({report.exporter} exporter): parity max |diff| "
        f"{report.parity.max_diff:.2e} over {report.parity.steps} steps; "
        f"val loss {report.val_loss_nats_per_char:.4f} nats/char (ONNX)"
    )
    return 0


def eval_command(argv: list[str]) -> int:
    """``eval --model FOLDER``: validation loss of a language model folder, computed from its ONNX graph."""
    parser = Parser(
        prog="statestream eval",
        description="Validation loss of a language-model folder, computed from its ONNX graph (the\n"
        "artefact that is served) over the held-out 10% of Tiny Shakespeare.",
    )
    parser.add_argument("--model", type=Path, required=True, help="model folder, e.g. models/char_lm")
    parser.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)"
    )
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        raise CommandError(f"--model {args.model}: not a model folder (no manifest.json)", EXIT_USAGE)

    from service.contract import ContractError
    from training.evaluate import evaluate_language_model

    try:
        score = evaluate_language_model(args.model, progress=show_progress(quiet=args.quiet, as_json=args.json))
    except ContractError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    if args.json:
        print(json.dumps(asdict(score)))
    else:
        print(f"{score.model}: {score.val_loss_nats_per_char:.4f} nats/char over {score.chars:,} held-out characters")
    return 0


COMMANDS = {"train": train_command, "export": export_command, "eval": eval_command}


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cli {train,export,eval} ...``."""
    from service.command import debug_requested, run

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return EXIT_USAGE
    return run(lambda: COMMANDS[argv[0]](argv[1:]), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
