"""Accuracy against the fraction of the utterance heard: the streaming speaker model's running answer.

    python -m training.experiments.speaker_curve --stream models/speakers --whole models/speakers_bi --out docs/img

Both models are scored from their ONNX graphs on the 370 test utterances
(``training.tasks.sequence_classifier.train.evaluate``): the streaming model's answer after the first
``ceil(f * T)`` frames of each utterance for f = 10 %, 20 %, ... 100 %, and the bidirectional
model's single answer, which needs the whole utterance (a point at 100 %). Writes
``speaker_accuracy_by_fraction.png`` and prints the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.tasks.sequence_classifier.evaluate import FRACTIONS, evaluate

PNG_NAME = "speaker_accuracy_by_fraction.png"


def stream_curve(scores: dict[str, float]) -> list[float]:
    """The streaming model's accuracy at each of :data:`FRACTIONS`, read from its scores."""
    return [scores[f"test_accuracy_at_{round(100 * f)}pct"] for f in FRACTIONS[:-1]] + [
        scores["test_accuracy_final_frame"]
    ]


def draw(path: Path, curve: list[float], whole: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.0, 3.8))
    percent = [100 * f for f in FRACTIONS]
    ax.plot(percent, [100 * a for a in curve], marker="o", label="unidirectional GRU, streamed (running answer)")
    if whole is not None:
        ax.plot([100], [100 * whole], marker="*", markersize=14, ls="none", label="bidirectional GRU (whole utterance)")
    ax.axhline(100 / 9, color="grey", ls=":", lw=1, label="chance (1/9)")
    ax.set_xlabel("fraction of the utterance heard (%)")
    ax.set_ylabel("test accuracy (%), 370 utterances")
    ax.set_ylim(0, 100)
    ax.set_title("Japanese Vowels speaker identification", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments.speaker_curve", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--stream", type=Path, default=Path("models/speakers"), help="the streaming model's folder")
    parser.add_argument(
        "--whole", type=Path, default=Path("models/speakers_bi"), help="the bidirectional model's folder"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG")
    args = parser.parse_args(argv)
    curve = stream_curve(evaluate(args.stream))
    whole = float(evaluate(args.whole)["test_accuracy"]) if args.whole.exists() else None
    args.out.mkdir(parents=True, exist_ok=True)
    draw(args.out / PNG_NAME, curve, whole)
    summary = {"fractions": list(FRACTIONS), "stream_accuracy": curve, "whole_accuracy": whole}
    print(json.dumps(summary | {"png": str(args.out / PNG_NAME)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
