"""Command-line entry points of the training side: train, export, eval, for every task.

The server's ``statestream`` CLI dispatches its ``train``, ``export`` and ``eval`` verbs to
:func:`train_command`, :func:`export_command` and :func:`eval_command` with the arguments after
the verb; ``python -m training.cli VERB ...`` does the same without the server installed::

    python -m training.cli train char_lm [--recipe PATH] [--resume] [--steps N] [--device cpu|cuda]
    python -m training.cli train path/to/recipe.toml
    python -m training.cli export --checkpoint runs/char_lm/weights.pt --out models/char_lm
    python -m training.cli eval --model models/char_lm --json
    python -m training.cli eval --model models/silero_vad --record

A recipe's ``task`` (``training.tasks``) picks the network, the data, the exporter and the scorer;
these commands know nothing else of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from service.command import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    MAX_DURATION_S,
    CommandError,
    Parser,
    check_file_to_read,
    check_folder_to_write,
    check_model_folder_to_write,
    float_in,
    nonempty_path,
    positive_int,
)
from training.recipes import RecipeError, load_recipe, recipe_path, recorded_recipe
from training.scores import write_scores
from training.tasks import ExportOptions, TrainOptions, UnknownTask, known_tasks, task_of


def show_progress(*, quiet: bool, as_json: bool, stream: TextIO | None = None) -> bool:
    """Whether train and eval draw a progress bar: not when asked to be quiet or to print JSON, and
    only to a terminal (a bar's carriage returns make a log file or a CI transcript unreadable)."""
    stream = sys.stderr if stream is None else stream
    return not quiet and not as_json and stream.isatty()


def _recipe_file(name_or_path: str) -> Path:
    """A recipe given as a path to a TOML file, or by the name of a shipped one (training/recipes/NAME.toml)."""
    if not name_or_path.strip():  # Path("") is ".", the current folder
        raise CommandError("the recipe is empty: give a recipe's name or its .toml file", EXIT_USAGE)
    path = Path(name_or_path)
    return path if path.suffix == ".toml" or path.exists() else recipe_path(name_or_path)


def _load_recipe(path: Path) -> object:
    try:
        return load_recipe(path)
    except RecipeError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc


def train_command(argv: list[str]) -> int:
    """``train RECIPE``: run a recipe of any task (or resume it), writing to the recipe's ``out``."""
    parser = Parser(
        prog="statestream train",
        description="Train a model from its recipe (or resume the run), writing checkpoints, weights, the\n"
        "loss curve and a summary to the recipe's output folder. The recipe's task picks the network,\n"
        f"the data and the loop (tasks: {', '.join(known_tasks())}).",
    )
    parser.add_argument(
        "recipe", help="a shipped recipe's name (training/recipes/NAME.toml, e.g. char_lm) or a recipe TOML's path"
    )
    parser.add_argument(
        "--recipe", dest="recipe_file", type=nonempty_path, help="recipe TOML to read instead of RECIPE's"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--steps", type=positive_int, help="override the recipe's step count")
    parser.add_argument("--out", help="override the recipe's output folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if available")
    parser.add_argument(
        "--max-minutes",
        type=float_in(0, MAX_DURATION_S / 60),
        help="stop (with a checkpoint) after this much wall time",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)"
    )
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.strip():  # "" would train into the current folder
        raise CommandError("--out is empty", EXIT_USAGE, hint="leave it out to write where the recipe says")
    if args.out is not None:
        check_folder_to_write(Path(args.out))

    path = args.recipe_file or _recipe_file(args.recipe)
    recipe = _load_recipe(path)
    options = TrainOptions(
        recipe_file=path,
        steps=args.steps,
        out=args.out,
        device=args.device,
        resume=args.resume,
        max_minutes=args.max_minutes,
        progress=show_progress(quiet=args.quiet, as_json=False),
    )
    print(json.dumps(task_of(recipe.task).train(recipe, options)))  # type: ignore[attr-defined]
    return 0


def export_command(argv: list[str]) -> int:
    """``export [RECIPE] --checkpoint W --out DIR``: a checkpoint of any task -> a model folder, after its checks."""
    parser = Parser(
        prog="statestream export",
        description="Export a trained checkpoint to a model folder (manifest.json + ONNX graphs), after\n"
        "checking that ONNX Runtime gives the PyTorch model's outputs. The checkpoint's recipe says its task.",
    )
    parser.add_argument(
        "recipe", nargs="?", help="the recipe it was trained with, for a checkpoint that does not name its task"
    )
    parser.add_argument("--checkpoint", type=nonempty_path, required=True, help="weights.pt, best.pt or checkpoint.pt")
    parser.add_argument("--out", type=nonempty_path, required=True, help="model folder to write, e.g. models/char_lm")
    parser.add_argument(
        "--loss-curve", type=nonempty_path, help="PNG to ship (default: loss_curve.png beside the checkpoint)"
    )
    parser.add_argument(
        "--exporter",
        default="auto",
        choices=("auto", "torchscript", "dynamo"),
        help="torch's ONNX exporter; auto tries torchscript, then dynamo",
    )
    args = parser.parse_args(argv)
    check_file_to_read(args.checkpoint, "--checkpoint")
    if args.loss_curve is not None:  # else the export would ship no curve, and say nothing
        check_file_to_read(args.loss_curve, "--loss-curve")
    check_model_folder_to_write(args.out)  # else refused after the export's work, by a traceback

    from training.checkpoints import load_weights
    from training.onnx_export import ParityError

    try:
        weights = load_weights(args.checkpoint)
    except ValueError as exc:
        raise CommandError(
            f"--checkpoint {exc}", EXIT_USAGE, hint="give the weights.pt, best.pt or checkpoint.pt of a run"
        ) from exc
    task_name = recorded_recipe(weights.metadata.get("recipe", {})).get("task")
    if not task_name:
        if args.recipe is None:
            raise CommandError(
                f"{args.checkpoint} does not say its task: name the recipe it was trained with", EXIT_USAGE
            )
        task_name = _load_recipe(_recipe_file(args.recipe)).task  # type: ignore[attr-defined]
    try:
        task = task_of(task_name)
        print(task.export(ExportOptions(args.checkpoint, args.out, args.loss_curve, args.exporter)))
    except UnknownTask as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except ParityError as exc:
        raise CommandError(str(exc), EXIT_INTERNAL) from exc
    return 0


def eval_command(argv: list[str]) -> int:
    """``eval --model FOLDER [--record]``: a model folder's scores, recomputed from its ONNX graphs by its
    task's scorer (and written into its manifest with ``--record``)."""
    parser = Parser(
        prog="statestream eval",
        description="A model folder's scores, recomputed from its ONNX graphs (the artefact that is served)\n"
        "by the scorer of its task (a language model: validation loss on the held-out 10% of Tiny Shakespeare).",
    )
    parser.add_argument("--model", type=nonempty_path, required=True, help="model folder, e.g. models/char_lm")
    parser.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the scores into the folder's manifest.json as its scores (an imported model's are recorded so)",
    )
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        raise CommandError(f"--model {args.model}: not a model folder (no manifest.json)", EXIT_USAGE)

    from service.contract import ContractError, Manifest

    try:
        manifest = Manifest.load(args.model)
        task = task_of(manifest.task, include_imported=True)
        score = task.evaluate(args.model, show_progress(quiet=args.quiet, as_json=args.json))
    except (ContractError, UnknownTask) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    if args.record:
        write_scores(args.model, score, manifest)
    if args.json:
        print(json.dumps(score))
    elif "val_loss_nats_per_char" in score:
        print(
            f"{score['model']}: {score['val_loss_nats_per_char']:.4f} nats/char over {score['chars']:,} held-out characters"
        )
    else:
        print(f"{manifest.name}: " + ", ".join(f"{key} {value}" for key, value in score.items() if key != "model"))
    if args.record and not args.json:
        print(f"recorded as the scores in {args.model / 'manifest.json'}")
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
