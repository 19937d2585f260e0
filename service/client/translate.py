"""``statestream client translate``: translate a text on the server, character by character, with attention.

    statestream client translate --model dates --text "Nov 27, 2026" --json
    statestream client translate --model dates --text "27. November 2026" --beam 3 --attention-png dates.png

The text opens a session (its UTF-8 bytes are the init payload; the server checks them); a Run
streams each output character with the attention over the input's characters it used, and the
command prints them as they come. ``--attention-png`` draws the attention matrix (Pillow): one
row per output character, one column per input character, darker where the weight is larger.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, non_negative_float, positive_int
from service.tensors import from_proto

DESCRIPTION = "translate a text on the server (e.g. a date to ISO 8601), streaming each character with its attention"
DEFAULT_MAX_CHARS = 32
CELL_PX = 18  # side of one cell of the attention PNG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--text", required=True, help="the text to translate, e.g. 'Nov 27, 2026'")
    parser.add_argument("--beam", type=positive_int, default=1, help="beam width (1: greedy or sampled)")
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0: greedy; > 0: sample (with --beam 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling (--temperature > 0)")
    parser.add_argument("--max-chars", type=positive_int, default=DEFAULT_MAX_CHARS, help="most characters decoded")
    parser.add_argument("--attention-png", type=Path, help="write the attention matrix (output x input characters)")


def translate(client: Client, args: argparse.Namespace) -> int:
    info = client.get_model(args.model)
    if info.task != "translator":
        raise CommandError(f"{args.model!r} is not a translator (its task is {info.task!r})", EXIT_USAGE)
    session = client.open(args.model, init=args.text.encode("utf-8"))
    characters: list[dict[str, Any]] = []
    rows: list[np.ndarray] = []
    done = pb.RunDone()
    try:
        options = {"beam": float(args.beam), "temperature": float(args.temperature)}
        for event in session.run(args.max_chars, options=options, seed=args.seed):
            if isinstance(event, pb.RunDone):
                done = event
                continue
            weights = from_proto(event.output.tensors[0])[: len(args.text)]
            rows.append(weights)
            peak = int(np.argmax(weights))
            char = {"index": event.index, "char": event.output.label, "prob": round(event.output.top[0].prob, 4)}
            char |= {"peak": peak, "peak_char": args.text[peak]}
            characters.append(char)
            if not args.json:
                print(
                    f"{event.index:>3}  {char['char']!r:<5} p={char['prob']:.3f}  looked at {peak} {args.text[peak]!r}"
                )
    finally:
        session.close()
    translation = "".join(c["char"] for c in characters)
    summary: dict[str, Any] = {
        "model": args.model,
        "text": args.text,
        "translation": translation,
        "characters": characters,
        "stop_reason": done.stop_reason,
        "beam": args.beam,
    }
    if args.attention_png is not None:
        draw_attention(args.attention_png, args.text, translation, rows)
        summary["attention_png"] = str(args.attention_png)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"{translation}  ({done.stop_reason})")
    return 0


def draw_attention(path: Path, text: str, translation: str, rows: list[np.ndarray]) -> None:
    """The matrix of weights, input characters across the top, output characters down the left."""
    from PIL import Image, ImageDraw

    margin = CELL_PX
    matrix = np.stack(rows) if rows else np.zeros((0, len(text)), np.float32)
    sheet = Image.new("L", (margin + CELL_PX * len(text), margin + CELL_PX * len(rows)), 255)
    draw = ImageDraw.Draw(sheet)
    for column, ch in enumerate(text):
        draw.text((margin + column * CELL_PX + 5, 3), ch, fill=0)
    for row, ch in enumerate(translation):
        draw.text((5, margin + row * CELL_PX + 3), ch, fill=0)
        for column, weight in enumerate(matrix[row]):
            left, top = margin + column * CELL_PX, margin + row * CELL_PX
            shade = round(255 * (1.0 - float(weight)))
            draw.rectangle((left, top, left + CELL_PX - 2, top + CELL_PX - 2), fill=shade)
    sheet.save(path)
