"""``statestream client caption``: caption an image on the server, word by word, with attention maps.

    statestream client caption --model captioner --image scene.png --json --attention-png out.png
    statestream client caption --model captioner --image scene.png --beam 5

The image's bytes are sent as they are (the server decodes PNG or JPEG with Pillow and says what
is wrong with one it cannot take); the server streams each word with the attention weights it
used, and the command prints them as they come. ``--attention-png`` draws the image once per
word with that word's attention over it (Pillow: the weights, upsampled from the grid, tint the
image red).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.client.attention_decode import DecodedToken, add_decoding_arguments, decode
from service.client.plots import check_drawing
from service.client.registry import command
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError

DESCRIPTION = "caption an image (PNG or JPEG) on the server, streaming each word with its attention map"
DEFAULT_MAX_WORDS = 32
#: Scale of the attention overlay's panels: the model's images are small.
PANEL_SCALE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--image", type=Path, required=True, help="a greyscale PNG or JPEG of the model's size")
    add_decoding_arguments(parser, limit_flag="--max-words", limit=DEFAULT_MAX_WORDS, limit_help="most words decoded")
    parser.add_argument("--attention-png", type=Path, help="write the image with one attention overlay per word")


@command("caption", DESCRIPTION, add_arguments, tasks=("captioner",))
def caption(client: Client, args: argparse.Namespace) -> int:
    if args.attention_png is not None:
        check_drawing("--attention-png", args.attention_png, matplotlib=False)
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        raise CommandError(f"--image {args.image}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not data:  # sent as it is, the server would say the model needs an init payload
        raise CommandError(f"--image {args.image}: the file is empty", EXIT_USAGE)

    def show(token: DecodedToken) -> None:
        if not args.json:
            print(f"{token.index:>3}  {token.label:<8} p={token.prob:.3f}  attention peak at {token.peak}")

    decoded = decode(client, args, payload=data, max_tokens=args.max_words, on_token=show)
    words: list[dict[str, Any]] = [
        {"index": t.index, "word": t.label, "prob": t.prob, "peak": t.peak} for t in decoded.tokens
    ]
    maps = [t.attention for t in decoded.tokens]
    text = " ".join(w["word"] for w in words)
    summary = {
        "model": args.model,
        "caption": text,
        "words": words,
        "stop_reason": decoded.stop_reason,
        "beam": args.beam,
    }
    if args.attention_png is not None:
        draw_attention(args.attention_png, data, [w["word"] for w in words], maps)
        summary["attention_png"] = str(args.attention_png)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{text}  ({decoded.stop_reason})")
    return 0


def draw_attention(path: Path, image_bytes: bytes, words: list[str], maps: list[np.ndarray]) -> None:
    """The image, then one panel per word: the image tinted by that word's attention, the word below."""
    from PIL import Image, ImageDraw

    grey = Image.open(io.BytesIO(image_bytes)).convert("L")
    width, height = grey.size
    size = (width * PANEL_SCALE, height * PANEL_SCALE)
    base = np.asarray(grey.resize(size, Image.Resampling.NEAREST), dtype=np.float32) / 255.0
    caption_band = 14
    panels = [("", None), *zip(words, maps, strict=True)]
    sheet = Image.new("RGB", (size[0] * len(panels), size[1] + caption_band), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (word, weights) in enumerate(panels):
        rgb = np.stack([base] * 3, axis=-1)
        if weights is not None:
            side = math.isqrt(len(weights))
            grid = Image.fromarray(
                (weights / max(float(weights.max()), 1e-9)).reshape(side, side).astype(np.float32), mode="F"
            )
            heat = np.asarray(grid.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
            rgb = rgb * (1 - 0.6 * heat[..., None]) + 0.6 * heat[..., None] * np.array([1.0, 0.0, 0.0])
        panel = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")
        sheet.paste(panel, (index * size[0], 0))
        draw.text((index * size[0] + 4, size[1] + 1), word or "image", fill="black")
    sheet.save(path)
