"""The captioner's scores, computed from its ONNX graphs: exact match, corpus BLEU-4, attention pointing.

* **exact match**: the fraction of scenes whose greedy caption is the reference, word for word;
* **BLEU-4**: corpus BLEU of the greedy captions against the references, computed by sacrebleu
  (its default 13a tokenisation, one reference per scene), reported in [0, 1];
* **pointing**: over every digit word the decoder emits, the fraction where the attention peak
  (the grid location with the largest weight, at its centre on the canvas) lies inside the box
  of the digit the word names: the k-th digit word of a caption names the scene's k-th digit
  (the grammar names digits in reading order). A digit word past the scene's last digit counts
  as a miss.

Decoding here is ONNX Runtime only (the served graphs), greedy, a batch of scenes per call: the
same numbers ``statestream eval`` recomputes and the manifest records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.contract import Manifest
from service.datasets.scenes import CANVAS, MAX_CAPTION_TOKENS, Scene, is_digit_word, scenes
from training.onnx_replay import open_session

EVAL_BATCH = 256
EVAL_SCENES = 1000
EVAL_SEED = 7


@dataclass(frozen=True)
class Decoded:
    """One greedy caption: its words (without <END>) and the attention weights of each, ``[len, L]``."""

    words: list[str]
    attention: np.ndarray


def grid_centre(location: int, locations: int) -> tuple[float, float]:
    """The canvas (row, column) of a square annotation grid's location (row-major)."""
    side = math.isqrt(locations)
    cell = CANVAS / side
    row, column = divmod(location, side)
    return (row + 0.5) * cell, (column + 0.5) * cell


def pointing_hits(scene: Scene, decoded: Decoded) -> tuple[int, int]:
    """(hits, digit words) of one caption: see the module's definition of pointing."""
    hits = total = 0
    digit_index = 0
    for word, weights in zip(decoded.words, decoded.attention, strict=True):
        if not is_digit_word(word):
            continue
        total += 1
        if digit_index < len(scene.boxes):
            row, column = grid_centre(int(np.argmax(weights)), len(weights))
            hits += scene.boxes[digit_index].contains(row, column)
        digit_index += 1
    return hits, total


def greedy_captions(folder: Path, images: np.ndarray, max_tokens: int, progress: bool = False) -> list[Decoded]:
    """Greedy decoding of ``images [N, H, W]`` with the model folder's graphs, ``EVAL_BATCH`` at a time."""
    manifest = Manifest.load(folder)
    assert manifest.init is not None
    init = open_session(folder / manifest.init.graph)
    step = open_session(folder / manifest.step_graph)
    vocabulary = manifest.vocabulary
    start, end = vocabulary.index(manifest.decoding["start_token"]), vocabulary.index(manifest.decoding["end_token"])
    token = manifest.inputs[0].name
    outputs = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    decoded: list[Decoded] = []
    for first in tqdm(range(0, len(images), EVAL_BATCH), desc="captions", disable=not progress, leave=False):
        batch = images[first : first + EVAL_BATCH].astype(np.float32)
        made = dict(
            zip(
                manifest.init_outputs,
                init.run(manifest.init_outputs, {manifest.init.inputs[0].name: batch}),
                strict=True,
            )
        )
        state = {s.input: made[s.input] for s in manifest.state}
        context = {c.name: made[c.name] for c in manifest.context}
        words = np.full((len(batch), 1), start, np.int64)
        ids, maps = [], []
        finished = np.zeros(len(batch), bool)
        for _ in range(max_tokens):
            results = dict(zip(outputs, step.run(outputs, {token: words} | state | context), strict=True))
            state = {s.input: results[s.output] for s in manifest.state}
            words = results["logits"][:, 0].argmax(axis=-1)[:, None].astype(np.int64)
            ids.append(words[:, 0])
            maps.append(results["attention"][:, 0])
            finished |= words[:, 0] == end
            if finished.all():
                break
        all_ids, all_maps = np.stack(ids, 1), np.stack(maps, 1)
        for row in range(len(batch)):
            stop = np.flatnonzero(all_ids[row] == end)
            length = int(stop[0]) if stop.size else all_ids.shape[1]
            decoded.append(Decoded([vocabulary[i] for i in all_ids[row, :length]], all_maps[row, :length]))
    return decoded


@dataclass(frozen=True)
class CaptionScores:
    scenes: int
    exact_match: float
    bleu4: float
    pointing: float
    digit_words: int


def score_captions(scenes: Sequence[Scene], decoded: Sequence[Decoded]) -> CaptionScores:
    import sacrebleu

    hypotheses = [" ".join(d.words) for d in decoded]
    references = [s.caption for s in scenes]
    exact = float(np.mean([h == r for h, r in zip(hypotheses, references, strict=True)]))
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100.0
    hits = total = 0
    for scene, caption in zip(scenes, decoded, strict=True):
        h, t = pointing_hits(scene, caption)
        hits += h
        total += t
    return CaptionScores(len(scenes), exact, bleu, hits / total if total else 0.0, total)


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Greedy captions of the test and composition splits from the ONNX graphs, scored."""
    manifest = Manifest.load(folder)
    result: dict[str, Any] = {"model": manifest.name}
    for split in ("test", "composition"):
        chosen = scenes(split, EVAL_SCENES, seed=EVAL_SEED)
        decoded = greedy_captions(Path(folder), np.stack([s.image for s in chosen]), MAX_CAPTION_TOKENS, progress)
        score = score_captions(chosen, decoded)
        prefix = "" if split == "test" else "composition_"
        result |= {
            f"{prefix}exact_match": score.exact_match,
            f"{prefix}bleu4": score.bleu4,
            f"{prefix}pointing": score.pointing,
        }
    return result
