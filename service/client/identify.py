"""``statestream client identify``: who is speaking? Speaker identification with a sequence classifier.

    statestream client identify --model speakers --index 0 --json
    statestream client identify --model speakers_bi --file utterance.txt
    statestream client identify --model speakers --index 7 --png running.png

The utterance is a case of the bundled Japanese Vowels test set (``--index``, numpy only) or a
text file of frames (``--file``: one frame per line, its 12 coefficients separated by spaces or
commas). A streaming model (its input is one ``frame``) gets the frames one Step each, as they
would arrive from a microphone, and the command prints the running answer after each; with
``--png`` it draws each speaker's probability against the frames seen (matplotlib). A
whole-sequence model (its inputs are ``frames`` and ``length``) gets the utterance in one Step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.plots import check_drawing
from service.client.registry import command, served_model
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, int_in
from service.tensors import from_proto

DESCRIPTION = "identify the speaker of an utterance (Japanese Vowels), frame by frame or whole"
#: Utterances in the bundled Japanese Vowels test set (``--index`` picks one).
TEST_CASES = 370


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``identify`` subcommand's own options (``service.client.commands`` adds the connection ones)."""
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--index", type=int_in(0, TEST_CASES - 1), help=f"a case of the bundled test set (0-{TEST_CASES - 1})"
    )
    source.add_argument("--file", type=Path, help="a text file of frames: one per line, coefficients by space or comma")
    parser.add_argument("--png", type=Path, help="draw the running probabilities of each speaker (needs matplotlib)")


def _numbers(path: Path, number: int, words: list[str]) -> list[float]:
    """Line ``number`` of ``--file`` as numbers; the first word that is not one is named in the error."""
    values = []
    for word in words:
        try:
            values.append(float(word))
        except ValueError:
            raise CommandError(f"--file {path}: line {number}: {word!r} is not a number", EXIT_USAGE) from None
    return values


def read_utterance(args: argparse.Namespace) -> tuple[np.ndarray, int | None]:
    """``(frames [T, F] float32, the true speaker index or None)`` from ``--index`` or ``--file``."""
    if args.file is not None:
        try:
            text = args.file.read_text()
        except OSError as exc:
            raise CommandError(f"cannot read --file {args.file}: {exc.strerror}", EXIT_USAGE) from exc
        except UnicodeDecodeError as exc:
            raise CommandError(f"--file {args.file}: not a text file (not UTF-8)", EXIT_USAGE) from exc
        lines = [(number, line.replace(",", " ").split()) for number, line in enumerate(text.splitlines(), 1)]
        rows = [_numbers(args.file, number, words) for number, words in lines if words]
        try:
            frames = np.array(rows, dtype=np.float32)
        except ValueError as exc:
            raise CommandError(
                f"--file {args.file}: every line must be the same number of numbers", EXIT_USAGE
            ) from exc
        if frames.ndim != 2 or len(frames) == 0:
            raise CommandError(f"--file {args.file}: no frames", EXIT_USAGE)
        return frames, None
    from service.datasets.vowels import load_vowels

    test = load_vowels("test")
    return test.utterances[args.index], int(test.labels[args.index])


@command("identify", DESCRIPTION, add_arguments, tasks=("sequence_classifier",))
def identify(client: Client, args: argparse.Namespace) -> int:
    if args.png is not None:
        check_drawing("--png", args.png)
    info = served_model(client, args)
    frames, truth = read_utterance(args)
    whole = any(t.name == "frames" for t in info.inputs)
    width = next((t.shape[-1] for t in info.inputs if t.name in ("frame", "frames") and t.shape), 0)
    if args.file is not None and width > 0 and frames.shape[1] != width:  # else the server's shape refusal, exit 3
        raise CommandError(
            f"--file {args.file}: {frames.shape[1]} numbers a line; model {args.model!r} takes {width} a frame",
            EXIT_USAGE,
        )
    session = client.open(args.model)
    try:
        if whole:
            answers = list(session.step(tensors={"frames": frames}).outputs)
        else:
            name = info.inputs[0].name
            answers = [session.step(tensors={name: frame[None]}).outputs[0] for frame in frames]
    finally:  # a refused step (StepFailed) is reported by the client's one error path
        session.close()
    probabilities = np.stack([_probabilities(a) for a in answers])
    labels = [a.label for a in answers]
    summary: dict[str, Any] = {
        "model": args.model,
        "frames": len(frames),
        "mode": "whole" if whole else "stream",
        "label": labels[-1],
        "probability": round(float(probabilities[-1].max()), 4),
        "probabilities": [round(float(p), 4) for p in probabilities[-1]],
    }
    if truth is not None:
        correct = int(np.argmax(probabilities[-1])) == truth
        summary |= {"index": args.index, "truth": speaker(truth), "correct": correct}
    if not whole:
        summary["running"] = [
            {"frame": i + 1, "label": label, "probability": round(float(p.max()), 4)}
            for i, (label, p) in enumerate(zip(labels, probabilities, strict=True))
        ]
        first = _settled_at(labels)
        summary["settled_after_frames"] = first
    if args.png is not None:
        draw_running(args.png, probabilities, truth, title=f"{args.model}: {labels[-1]}")
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary))
        return 0
    for entry in summary.get("running", []):
        print(f"frame {entry['frame']:>2}/{len(frames)}: {entry['label']} ({entry['probability']:.2f})")
    verdict = "" if truth is None else f"; truth {speaker(truth)}, {'right' if summary['correct'] else 'wrong'}"
    print(f"{summary['label']} ({summary['probability']:.2f}) after {len(frames)} frames{verdict}")
    return 0


def speaker(index: int) -> str:
    """The name of the speaker of class ``index``, as the model labels its answers ("speaker 1" for 0)."""
    return f"speaker {index + 1}"


def _probabilities(output: pb.StepOutput) -> np.ndarray:
    return next(from_proto(t) for t in output.tensors if t.name == "probabilities")


def _settled_at(labels: list[str]) -> int:
    """The number of frames after which the running answer no longer changes."""
    settled = len(labels)
    while settled > 1 and labels[settled - 2] == labels[-1]:
        settled -= 1
    return settled


def draw_running(path: Path, probabilities: np.ndarray, truth: int | None, *, title: str) -> None:
    """Each class's probability against the frames seen (a bar chart for one whole-sequence answer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.4, 3.6))
    classes = probabilities.shape[1]
    if len(probabilities) == 1:
        colours = ["tab:green" if c == truth else "tab:blue" for c in range(classes)]
        ax.bar(np.arange(1, classes + 1), probabilities[0], color=colours)
        ax.set_xlabel("speaker")
    else:
        frames = np.arange(1, len(probabilities) + 1)
        for c in range(classes):
            ax.plot(frames, probabilities[:, c], lw=2.5 if c == truth else 1.0, label=speaker(c))
        ax.set_xlabel("frames seen")
        ax.legend(fontsize=7, ncol=3)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title + ("" if truth is None else f" (truth: {speaker(truth)}, thick)"), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
