"""``statestream import MODEL.onnx --spec SPEC.toml --out FOLDER``: the importer on the command line.

The importer needs ``onnx`` (a serving dependency) and ONNX Runtime (the ``cpu`` or ``gpu``
extra, as serving does); without them the command says which extra to install. A refused
import is one line naming the check that failed, and nothing is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from service.command import EXIT_USAGE, CommandError, Parser, nearest_existing, nonempty_path
from service.contract import ContractError


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses, before the graph is run, a --task no driver serves, an empty --name and an --out it cannot write.

    The first two had written a folder that 'serve' and 'check' then refused; an --out that
    cannot be made was a traceback, and one that is not a model folder was refused, only after
    the import's checks had run.
    """
    from service.contract import holds_something_else
    from service.tasks import known_tasks

    if args.task not in known_tasks():
        raise CommandError(
            f"--task {args.task!r}: no driver serves it", EXIT_USAGE, hint=f"known tasks: {', '.join(known_tasks())}"
        )
    if args.name is not None and not args.name.strip():
        raise CommandError("--name is empty", EXIT_USAGE, hint="leave it out to name the model after its --out folder")
    out: Path = args.out
    if holds_something_else(out):
        raise CommandError(f"--out {out} exists and is not a model folder; refusing to replace it", EXIT_USAGE)
    existing = nearest_existing(out.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: cannot make a folder in {existing}", EXIT_USAGE)


def main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="statestream import",
        description="Wrap a stateful ONNX graph from elsewhere into a model folder that 'statestream serve' loads.\n"
        "The spec (TOML) names its state tensors and their batch axis, its constants and its carried input\n"
        "(docs/your-model.md). The golden trace comes from the original graph; nothing is written unless\n"
        "the wrapped graph reproduces it and several sessions batched equal each run alone.",
    )
    parser.add_argument("graph", type=nonempty_path, metavar="MODEL.onnx", help="the ONNX graph to import")
    parser.add_argument("--spec", type=nonempty_path, required=True, help="the import spec (TOML)")
    parser.add_argument(
        "--out", type=nonempty_path, required=True, help="the model folder to write (replaced if it is one)"
    )
    parser.add_argument("--name", default=None, help="the model's name (default: the --out folder's name)")
    parser.add_argument("--task", default="sequence_model", help="the task whose driver serves it")
    args = parser.parse_args(list(argv))
    try:
        from service.importer.folder import import_onnx
        from service.importer.spec import ImportSpec
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"statestream import needs {exc.name!r}, which is not installed",
            EXIT_USAGE,
            hint="pip install 'statestream[cpu]' (or [gpu]): the importer runs the graph with ONNX Runtime",
        ) from exc
    if not args.graph.is_file():
        what = "is a folder" if args.graph.is_dir() else "no such file"
        raise CommandError(f"{args.graph}: {what}", EXIT_USAGE, hint="give the path of an .onnx graph")
    check_arguments(args)
    try:
        report = import_onnx(args.graph, ImportSpec.load(args.spec), args.out, name=args.name, task=args.task)
    except ContractError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    manifest = report.manifest
    print(
        f"imported {args.graph.name} as model {manifest.name!r} (task {manifest.task}) into {report.folder}: "
        f"golden trace of {len(next(iter(manifest.golden.inputs.values())))} steps reproduced "
        f"(max |diff| {report.golden_error:.2g}), batch of sessions = each alone (max |diff| {report.batch_error:.2g})"
    )
    return 0
