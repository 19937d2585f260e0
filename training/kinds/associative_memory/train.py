"""Associative memories: a classical Hopfield net, a dense Hopfield memory, an RBM; served as sweep graphs.

``statestream train RECIPE`` computes the memory (the Hebbian or Storkey weights of the stored
letters, the dense memory's pattern matrix: closed-form, a fraction of a second) or trains it
(the RBM: contrastive divergence on the bundled digits) and writes ``OUT/weights.pt``.
``statestream export --checkpoint OUT/weights.pt --out models/NAME`` writes the sweep graph
(``training.export_memory``: parity against PyTorch, golden trace, self-check) and then scores
the installed graph with :func:`evaluate`, recording the scores in the manifest. ``statestream
eval --model models/NAME`` recomputes them from the ONNX graph; every draw is seeded, so the
numbers are the same.

Scores, all from ONNX Runtime:

* letter memories: ``recall_from_25pct_noise`` (fraction of probes, each a stored letter with
  exactly 25 % of its 35 pixels flipped, that settle on exactly that letter within
  ``EVAL_SWEEPS`` asynchronous sweeps), ``bit_accuracy_from_25pct_noise`` and
  ``stored_fixed_points`` (fraction of stored letters that one sweep leaves unchanged);
* the RBM: ``pixel_accuracy_bottom_half`` (clamped Gibbs completion of the hidden bottom half of
  the held-out digits, mean of sweeps ``RBM_BURN_IN ..  RBM_SWEEPS`` above 0.5, as in
  docs/memory.md) against ``nearest_neighbour_baseline`` (the nearest training image on the
  visible half).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import describe_recipe_path

NETS = ("hopfield", "dense_hopfield", "rbm")
WEIGHTS_NAME = "weights.pt"
EVAL_NOISE = 0.25
EVAL_TRIALS = 20  # noisy probes per stored letter
EVAL_SWEEPS = 20
EVAL_SEED = 2024
RBM_SWEEPS = 200
RBM_BURN_IN = 50
DIGITS_DATA = "scikit-learn load_digits (bundled), pixel on when > 8 of 16, seeded 80/20 split (seed 0)"
LETTERS_DATA = "the project's 5x7 letter bitmaps (service/datasets/patterns.py), bipolar"


@dataclass(frozen=True)
class MemoryRecipe:
    """A shipped associative memory. Keys that do not apply to ``net`` must keep their defaults.

    ``letters``: which letter bitmaps a Hopfield net or dense memory stores. Hopfield: ``rule``
    (hebbian | storkey), ``update`` (async | sync). Dense memory: ``beta``. RBM: ``hidden``,
    ``k``, ``persistent``, ``epochs``, ``batch``, ``lr``, ``momentum``, ``weight_decay``
    (``training.rbm_training.RBMConfig``). ``seed`` seeds the RBM's training and the golden trace.
    """

    name: str
    kind: str
    net: str
    out: str
    description: str
    letters: str = ""
    rule: str = "storkey"
    update: str = "async"
    beta: float = 1.0
    hidden: int = 400
    k: int = 1
    persistent: bool = False
    epochs: int = 200
    batch: int = 20
    lr: float = 0.05
    momentum: float = 0.5
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if (self.net == "rbm") == bool(self.letters):
            raise ValueError("letters: the letters a Hopfield net or dense memory stores (and nothing for an rbm)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        owned = {
            "hopfield": {"rule", "update"},
            "dense_hopfield": {"beta"},
            "rbm": {"hidden", "k", "persistent", "epochs", "batch", "lr", "momentum", "weight_decay"},
        }
        foreign = sorted(
            key for net, keys in owned.items() if net != self.net for key in keys if getattr(self, key) != defaults[key]
        )
        if foreign:
            raise ValueError(f"key(s) {foreign} do not apply to a {self.net} net")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_net(recipe: MemoryRecipe) -> tuple[Any, dict[str, float]]:
    """The memory of ``recipe``, computed (Hopfield, dense) or trained (RBM); returns ``(net, facts)``."""
    from service.datasets.patterns import letter_patterns, load_digits_binary
    from training.nets.dense_hopfield import DenseHopfield
    from training.nets.hopfield import Hopfield
    from training.rbm_training import RBMConfig, train_rbm

    if recipe.net == "hopfield":
        return Hopfield.from_patterns(letter_patterns(recipe.letters), rule=recipe.rule, update=recipe.update), {}  # type: ignore[arg-type]
    if recipe.net == "dense_hopfield":
        return DenseHopfield(patterns=letter_patterns(recipe.letters), beta=recipe.beta), {}
    config = RBMConfig(
        hidden=recipe.hidden,
        k=recipe.k,
        persistent=recipe.persistent,
        epochs=recipe.epochs,
        batch=recipe.batch,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
    )
    rbm, history = train_rbm(load_digits_binary().train, config)
    return rbm, {"final_reconstruction_error": history.reconstruction_error[-1]}


def restore_net(recipe: MemoryRecipe, state: dict[str, Any]) -> Any:
    """The net of a weights file: an empty net of the recipe's shape with the saved tensors loaded."""
    from service.datasets.patterns import LETTER_SHAPE, letter_patterns
    from training.nets.boltzmann import RBM
    from training.nets.dense_hopfield import DenseHopfield
    from training.nets.hopfield import Hopfield

    net: Any
    if recipe.net == "hopfield":
        net = Hopfield(units=LETTER_SHAPE[0] * LETTER_SHAPE[1], update=recipe.update)  # type: ignore[arg-type]
    elif recipe.net == "dense_hopfield":
        net = DenseHopfield(patterns=letter_patterns(recipe.letters), beta=recipe.beta)
    else:
        net = RBM(visible=64, hidden=recipe.hidden)
    net.load_state_dict(state)
    net.eval()
    return net


def train(recipe: MemoryRecipe, options: TrainOptions) -> dict[str, Any]:
    import torch

    from training.checkpoints import write_weights

    if options.steps is not None:  # the only iterative memory: --steps sets the RBM's epochs
        if recipe.net != "rbm":
            raise ValueError(f"{recipe.name}: a {recipe.net} memory is computed in closed form; --steps does not apply")
        recipe = replace(recipe, epochs=options.steps)
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    net, facts = build_net(recipe)
    elapsed = time.perf_counter() - started
    metadata = {"recipe": recipe.to_dict(), "recipe_file": describe_recipe_path(options.recipe_file)}
    training = {"time_s": round(elapsed, 2), "torch": str(torch.__version__), "device": "cpu", **facts}
    write_weights(out / WEIGHTS_NAME, net, metadata, training)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_NAME), **training}


def export(options: ExportOptions) -> str:
    from service.datasets.patterns import LETTER_SHAPE, Digits, flip_bits, letter_patterns, load_digits_binary
    from training.checkpoints import load_weights
    from training.export import record_scores
    from training.export_memory import export_memory

    weights = load_weights(options.checkpoint)
    recipe = MemoryRecipe(**weights.metadata["recipe"])
    net = restore_net(recipe, weights.model)
    decoding: dict[str, Any]
    if recipe.net == "rbm":
        shape, data = Digits.SHAPE, DIGITS_DATA
        decoding = {}
        golden_start = load_digits_binary().test[0]
    else:
        shape, data = LETTER_SHAPE, LETTERS_DATA
        stored = letter_patterns(recipe.letters)
        decoding = {"pattern_names": list(recipe.letters), "patterns": stored.tolist()}
        golden_start = flip_bits(stored[:1], EVAL_NOISE, seed=recipe.seed)[0]
    recipe_file = str(weights.metadata.get("recipe_file", ""))
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
        "data": data,
        **weights.training,
    }
    started = time.perf_counter()
    report = export_memory(
        net,
        options.out,
        name=recipe.name,
        description=recipe.description,
        shape=shape,
        golden_start=golden_start,
        decoding=decoding,
        training=training,
        seed=recipe.seed,
    )
    # The scores describe the installed graph: computed from it, then written into its manifest.
    scores = record_scores(options.out, evaluate(options.out))
    elapsed = time.perf_counter() - started
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return (
        f"wrote {report.folder}: parity max |diff| {report.parity_max_abs_diff:.2e}; {shown} "
        f"(ONNX, export and scoring {elapsed:.1f} s)"
    )


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Recall and accuracy from the ONNX graph; a memory is scored in seconds, so ``progress`` draws no bar."""
    from service.contract import Manifest
    from training.evaluate import open_session, ort_step_fn

    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(Path(folder) / manifest.step_graph))
    scores = letter_scores(step, manifest) if manifest.decoding["values"] == "bipolar" else rbm_scores(step, manifest)
    return {"model": manifest.name, **scores}


def _feed(
    manifest: Any, values: np.ndarray, known: np.ndarray, sweeps: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Inputs ``[B, sweeps, ...]`` that hold ``known`` units at ``values`` (and load the rest on sweep 0)."""
    batch, units = values.shape
    feed = {
        "clamp_mask": np.broadcast_to(known.astype(np.float32), (batch, sweeps, units)).copy(),
        "clamp_values": np.broadcast_to(values[:, None, :], (batch, sweeps, units)).astype(np.float32),
    }
    noise_units = int(manifest.decoding["noise_units"])
    if noise_units:
        feed["noise"] = rng.random((batch, sweeps, noise_units), dtype=np.float32)
    if manifest.decoding["stochastic"]:
        feed["temperature"] = np.ones((batch, sweeps), np.float32)
    return feed


def letter_scores(step: Any, manifest: Any) -> dict[str, float]:
    from service.datasets.patterns import flip_bits
    from training.export_memory import chained_sweeps

    stored = np.asarray(manifest.decoding["patterns"], np.float32)
    units = stored.shape[1]
    rng = np.random.default_rng(EVAL_SEED)
    free = np.zeros(units, np.float32)
    targets = np.repeat(stored, EVAL_TRIALS, axis=0)
    probes = flip_bits(targets, EVAL_NOISE, seed=EVAL_SEED)
    final = chained_sweeps(step, manifest, _feed(manifest, probes, free, EVAL_SWEEPS, rng))["pattern_out"][:, -1]
    agree = np.sign(final) == targets
    once = chained_sweeps(step, manifest, _feed(manifest, stored, free, 1, rng))
    return {
        "recall_from_25pct_noise": float(agree.all(axis=1).mean()),
        "bit_accuracy_from_25pct_noise": float(agree.mean()),
        "stored_fixed_points": float((once["changed"][:, 0] == 0).mean()),
    }


def rbm_scores(step: Any, manifest: Any) -> dict[str, float]:
    from service.datasets.patterns import load_digits_binary, nearest_on_known, occlusion_mask
    from training.export_memory import chained_sweeps

    digits = load_digits_binary()
    known = occlusion_mask(digits.SHAPE, "bottom")
    hidden = known == 0
    rng = np.random.default_rng(EVAL_SEED)
    states = chained_sweeps(step, manifest, _feed(manifest, digits.test * known, known, RBM_SWEEPS, rng))
    guess = states["pattern_out"][:, RBM_BURN_IN:].mean(axis=1) > 0.5
    nearest = nearest_on_known(digits.train, digits.test, known)
    truth = digits.test[:, hidden]
    return {
        "pixel_accuracy_bottom_half": float((guess[:, hidden] == truth).mean()),
        "nearest_neighbour_baseline": float((nearest[:, hidden] == truth).mean()),
    }


KIND = TrainingKind("associative_memory", MemoryRecipe, train, export, evaluate)
