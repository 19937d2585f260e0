"""The translator's scores, computed by decoding with the exported graphs in ONNX Runtime.

``exact_match_heldout_templates`` is the issue's floor: the fraction of dates written in a
held-out template (a surface form never trained on) that the graphs decode, greedily, to
exactly the right ISO date. ``exact_match_seen_templates`` is the same over the training
templates with dates drawn afresh. Both sets are drawn with :data:`EVAL_SEED`, independent of
any recipe's seed, so every translator is scored on the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.contract import Manifest
from training.onnx_replay import open_session
from training.tasks.translator import dates
from training.tasks.translator.codec import START, TARGET_STEPS, Codec, DecoderStep, exact_match, greedy_decode

EVAL_SEED = 4242
HELDOUT_EXAMPLES = 5000
SEEN_EXAMPLES = 2000
BATCH = 500
#: Held-out mistakes listed in the scores' report (not in the manifest: they are not numbers).
SHOWN_MISTAKES = 5


def codec_of(manifest: Manifest) -> Codec:
    """The texts <-> ids mapping a translator's manifest records."""
    assert manifest.init is not None
    return Codec(
        source=tuple(manifest.decoding["source_vocabulary"]),
        target=tuple(manifest.vocabulary),
        max_length=manifest.init.inputs[0].shape[0],
    )


@dataclass
class OnnxTranslator:
    """A model folder's init and step graphs, decoding batches greedily."""

    manifest: Manifest
    init: Any
    step: Any

    @classmethod
    def from_folder(cls, folder: Path) -> OnnxTranslator:
        manifest = Manifest.load(folder)
        assert manifest.init is not None
        return cls(manifest, open_session(folder / manifest.init.graph), open_session(folder / manifest.step_graph))

    def decoder(self, chars: np.ndarray, mask: np.ndarray) -> tuple[DecoderStep, Any]:
        """The step graph as a :data:`DecoderStep`, and the init graph's state for ``chars``."""
        manifest = self.manifest
        assert manifest.init is not None
        names = manifest.init_outputs
        feed = dict(zip([t.name for t in manifest.init.inputs], (chars, mask), strict=True))
        made = dict(zip(names, self.init.run(names, feed), strict=True))
        context = {c.name: made[c.name] for c in manifest.context}
        (state_spec,) = manifest.state
        token = manifest.inputs[0].name
        outputs = [manifest.outputs[0].name, manifest.outputs[1].name, state_spec.output]

        def step(previous: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            logits, attention, state = self.step.run(
                outputs, {token: previous[:, None], state_spec.input: state} | context
            )
            return logits[:, 0], attention[:, 0], state

        return step, made[state_spec.input]

    def translate(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Greedy translations and the attention ``[N, TARGET_STEPS, L]`` used for each token."""
        codec = codec_of(self.manifest)
        chars, mask = codec.encode_sources(texts)
        step, state = self.decoder(chars, mask)
        tokens, weights = greedy_decode(
            step, state, batch=len(texts), start_id=codec.target.index(START), steps=TARGET_STEPS
        )
        return [codec.decode_target(row) for row in tokens], weights


def score(
    translator: OnnxTranslator, pairs: Sequence[tuple[str, str]], progress: bool, what: str
) -> tuple[float, list[list[str]]]:
    """Exact match over ``pairs`` in batches of :data:`BATCH`; also the first mistakes ``[text, got, want]``."""
    predicted: list[str] = []
    for start in tqdm(range(0, len(pairs), BATCH), disable=not progress, desc=what, unit="batch"):
        got, _ = translator.translate([text for text, _ in pairs[start : start + BATCH]])
        predicted += got
    wanted = [iso for _, iso in pairs]
    mistakes = [[text, got, want] for (text, want), got in zip(pairs, predicted, strict=True) if got != want]
    return exact_match(predicted, wanted), mistakes[:SHOWN_MISTAKES]


def evaluate_translator(folder: Path, progress: bool = False) -> dict[str, Any]:
    """The scores of a translator folder, from its ONNX graphs."""
    translator = OnnxTranslator.from_folder(Path(folder))
    split = dates.split_templates()
    heldout, heldout_mistakes = score(
        translator, dates.sample(split.heldout, HELDOUT_EXAMPLES, [EVAL_SEED, 2]), progress, "held-out templates"
    )
    seen, _ = score(translator, dates.sample(split.train, SEEN_EXAMPLES, [EVAL_SEED, 1]), progress, "seen templates")
    return {
        "model": translator.manifest.name,
        "exact_match_heldout_templates": heldout,
        "exact_match_seen_templates": seen,
        "heldout_examples": HELDOUT_EXAMPLES,
        "heldout_templates": len(split.heldout),
        "heldout_mistakes": heldout_mistakes,
    }


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    return evaluate_translator(folder, progress=progress)
