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

from service.client.attention_decode import DecodedToken, add_decoding_arguments, decode
from service.client.plots import check_drawing
from service.client.registry import command
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError

DESCRIPTION = "translate a text on the server (e.g. a date to ISO 8601), streaming each character with its attention"
DEFAULT_MAX_CHARS = 32
CELL_PX = 18  # side of one cell of the attention PNG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--text", required=True, help="the text to translate, e.g. 'Nov 27, 2026'")
    add_decoding_arguments(
        parser, limit_flag="--max-chars", limit=DEFAULT_MAX_CHARS, limit_help="most characters decoded"
    )
    parser.add_argument("--attention-png", type=Path, help="write the attention matrix (output x input characters)")


@command("translate", DESCRIPTION, add_arguments, tasks=("translator",))
def translate(client: Client, args: argparse.Namespace) -> int:
    if not args.text:  # as predict's: the server would refuse it too, but as its own (exit 3)
        raise CommandError("--text is empty: give the text to translate", EXIT_USAGE)
    if args.attention_png is not None:
        check_drawing("--attention-png", args.attention_png, matplotlib=False)
    text = args.text

    def show(token: DecodedToken) -> None:
        peak = int(np.argmax(token.attention[: len(text)]))  # the padding past the text has weight 0
        if not args.json:
            print(f"{token.index:>3}  {token.label!r:<5} p={token.prob:.3f}  looked at {peak} {text[peak]!r}")

    payload = text.encode("utf-8")
    decoded = decode(client, args, payload=payload, max_tokens=args.max_chars, on_token=show)
    rows = [t.attention[: len(text)] for t in decoded.tokens]
    characters: list[dict[str, Any]] = []
    for token, weights in zip(decoded.tokens, rows, strict=True):
        peak = int(np.argmax(weights))
        char = {"index": token.index, "char": token.label, "prob": token.prob, "peak": peak, "peak_char": text[peak]}
        characters.append(char)
    translation = "".join(c["char"] for c in characters)
    summary: dict[str, Any] = {
        "model": args.model,
        "text": args.text,
        "translation": translation,
        "characters": characters,
        "stop_reason": decoded.stop_reason,
        "beam": args.beam,
    }
    if args.attention_png is not None:
        draw_attention(args.attention_png, args.text, translation, rows)
        summary["attention_png"] = str(args.attention_png)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"{translation}  ({decoded.stop_reason})")
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
