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

from service.api import statestream_pb2 as pb
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, non_negative_float, positive_int
from service.tensors import from_proto

DESCRIPTION = "caption an image (PNG or JPEG) on the server, streaming each word with its attention map"
DEFAULT_MAX_WORDS = 32
#: Scale of the attention overlay's panels: the model's images are small.
PANEL_SCALE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--image", type=Path, required=True, help="a greyscale PNG or JPEG of the model's size")
    parser.add_argument("--beam", type=positive_int, default=1, help="beam width (1: greedy or sampled)")
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0: greedy; > 0: sample (with --beam 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling (--temperature > 0)")
    parser.add_argument("--max-words", type=positive_int, default=DEFAULT_MAX_WORDS, help="most words decoded")
    parser.add_argument("--attention-png", type=Path, help="write the image with one attention overlay per word")


def caption(client: Client, args: argparse.Namespace) -> int:
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        raise CommandError(f"--image {args.image}: {exc.strerror or exc}", EXIT_USAGE) from None
    info = client.get_model(args.model)
    if info.task != "captioner":
        raise CommandError(f"{args.model!r} is not a captioner (its task is {info.task!r})", EXIT_USAGE)
    session = client.open(args.model, init=data)
    words: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    done = pb.RunDone()
    try:
        options = {"beam": float(args.beam), "temperature": float(args.temperature)}
        for event in session.run(args.max_words, options=options, seed=args.seed):
            if isinstance(event, pb.RunOutput):
                attention = from_proto(event.output.tensors[0])
                maps.append(attention)
                top = event.output.top[0]
                word = {"index": event.index, "word": event.output.label, "prob": round(top.prob, 4)}
                word["peak"] = int(np.argmax(attention))
                words.append(word)
                if not args.json:
                    print(f"{event.index:>3}  {word['word']:<8} p={word['prob']:.3f}  attention peak at {word['peak']}")
            else:
                done = event
    finally:
        session.close()
    text = " ".join(w["word"] for w in words)
    summary = {"model": args.model, "caption": text, "words": words, "stop_reason": done.stop_reason, "beam": args.beam}
    if args.attention_png is not None:
        draw_attention(args.attention_png, data, [w["word"] for w in words], maps)
        summary["attention_png"] = str(args.attention_png)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{text}  ({done.stop_reason})")
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
