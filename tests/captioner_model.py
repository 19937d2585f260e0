"""A tiny captioner for the tests, and the offline decodes a served caption must equal.

The net is untrained (seeded weights): serving is checked against the same graphs decoded
offline, which needs no skill. The bias of ``<END>`` is raised so that decodes end (an
untrained net would otherwise rarely choose it) after a few words.

``offline_beam`` runs the graphs with ONNX Runtime one hypothesis per call, carrying each
hypothesis's state arrays itself (no slabs, rows, scheduler or streaming): what the server's
beam on borrowed rows must reproduce. Its ranking rules are ``service.drivers.beams``',
which ``test_captioner.py`` checks against an exhaustive search.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.contract import Manifest
from service.datasets.scenes import END, VOCABULARY
from service.drivers.beams import BeamSearch, log_softmax
from training.onnx_replay import open_session
from training.tasks.captioner.export import install
from training.tasks.captioner.recipe import CaptionerModel, CaptionerRecipe
from training.tasks.captioner.train import build_net

NAME = "captioner_tiny"
END_BIAS = 1.0


def build(folder: Path) -> Path:
    """Writes the tiny captioner's model folder (parity-checked, not scored)."""
    torch.manual_seed(0)
    model = CaptionerModel(channels=4, embed=8, hidden=16, attention=8, coordinates=True)
    net = build_net(model)
    with torch.no_grad():
        net.decoder.out.bias[VOCABULARY.index(END)] += END_BIAS
    recipe = CaptionerRecipe(
        name=NAME, task="captioner", out="", description="a tiny untrained captioner for tests", model=model
    )
    install(net, recipe, folder, {}, score=False)
    return folder


def offline_beam(folder: Path, image: np.ndarray, width: int, max_steps: int) -> tuple[list[int], np.ndarray]:
    """The beam's answer for ``image``: its token ids (without <END>) and their attention maps."""
    manifest = Manifest.load(folder)
    assert manifest.init is not None
    init = open_session(folder / manifest.init.graph)
    step = open_session(folder / manifest.step_graph)
    made = dict(zip(manifest.init_outputs, init.run(manifest.init_outputs, {"image": image[None]}), strict=True))
    context = {"annotations": made["annotations"], "mask": made["mask"]}
    vocabulary = manifest.vocabulary
    search = BeamSearch(width, vocabulary.index(manifest.decoding["end_token"]))
    states = [{"h": made["h"], "c": made["c"]}]
    tokens = [vocabulary.index(manifest.decoding["start_token"])]
    names = ["logits", "attention", "h_out", "c_out"]
    for _ in range(max_steps):
        results = [
            dict(zip(names, step.run(names, {"word": np.array([[t]], np.int64)} | s | context), strict=True))
            for t, s in zip(tokens, states, strict=True)
        ]
        logprobs = log_softmax(np.concatenate([r["logits"][:, 0] for r in results]))
        parents = search.advance(logprobs, [r["attention"][0, 0] for r in results])
        if search.done:
            break
        states = [{"h": results[p]["h_out"], "c": results[p]["c_out"]} for p in parents]
        tokens = [h.tokens[-1] for h in search.live]
    best = search.best()
    length = len(best.tokens) - (1 if best.tokens and best.tokens[-1] == search.end_id else 0)
    return best.tokens[:length], np.asarray(best.extras[:length])
