"""The captioner: Show, Attend and Tell on scenes of handwritten digits, served as init + step graphs.

``statestream train captioner`` generates the seeded training scenes (``service.datasets.scenes``),
trains ``training.nets.captioner.Captioner`` with teacher forcing (cross-entropy per word plus
the doubly stochastic regulariser; with ``attention = "hard"`` the REINFORCE-style gradient of
Xu et al. eq. 12, with a moving-average baseline and an entropy bonus), keeps the weights with
the best validation exact match (greedy, PyTorch), and writes ``OUT/weights.pt`` and a loss
curve. ``statestream export`` writes the init graph (image -> h0, c0, annotations, mask) and the
step graph (word, h, c, annotations, mask -> logits, attention, h', c'), checks both against
PyTorch (``training.export_attention``), then scores the installed graphs with
:func:`evaluate` (``training.evaluate_captions``) on the test and composition splits.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import describe_recipe_path

WEIGHTS_NAME = "weights.pt"
ATTENTION_KINDS = ("soft", "hard")
EVAL_SCENES = 1000
EVAL_SEED = 7
PARITY_SESSIONS = 8
#: Classes of :func:`location_labels`: background, then ten digits small and ten large.
LOCATION_CLASSES = 21


@dataclass(frozen=True)
class CaptionerModel:
    """``channels``: widths of the three conv blocks; ``heads``: attention heads (hard attention takes 1);
    ``coordinates``: append each location's (row, column) to its annotation (``ConvEncoder``)."""

    channels: int = 32
    embed: int = 32
    hidden: int = 128
    attention: int = 64
    heads: int = 1
    coordinates: bool = False


@dataclass(frozen=True)
class CaptionerTrain:
    """``doubly_stochastic``: lambda of the regulariser. Hard attention: ``reinforce`` (lambda_r),
    ``entropy`` (lambda_e) and ``baseline_decay`` of the moving-average baseline. ``locations``:
    weight of the auxiliary loss that names, at every annotation, the digit and size whose box
    holds it (:func:`location_labels`); its linear head is trained alongside and discarded."""

    scenes: int = 20000
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    clip_norm: float = 5.0
    doubly_stochastic: float = 1.0
    attention: str = "soft"
    reinforce: float = 1.0
    entropy: float = 0.01
    baseline_decay: float = 0.9
    locations: float = 0.0
    eval_every: int = 250
    val_scenes: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")


@dataclass(frozen=True)
class CaptionerRecipe:
    name: str
    kind: str
    out: str
    description: str
    model: CaptionerModel = dataclasses.field(default_factory=CaptionerModel)
    train: CaptionerTrain = dataclasses.field(default_factory=CaptionerTrain)

    def __post_init__(self) -> None:
        if self.train.attention == "hard" and self.model.heads != 1:
            raise ValueError("hard attention samples one location: it takes heads = 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_net(model: CaptionerModel) -> Any:
    from service.datasets.scenes import CANVAS, VOCABULARY
    from training.nets.captioner import Captioner

    c = model.channels
    return Captioner(
        vocab_size=len(VOCABULARY),
        channels=(c, 2 * c, 2 * c),
        embed=model.embed,
        hidden=model.hidden,
        attention=model.attention,
        heads=model.heads,
        coordinates=model.coordinates,
        canvas=CANVAS,
    )


def teacher_forcing(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs ``[<START>, w_1 .. w_{T-1}]`` and targets ``[w_1 .. w_T]`` (<END>, then <PAD>)."""
    from service.datasets.scenes import START, VOCABULARY, caption_batch

    targets = caption_batch(captions)
    inputs = np.concatenate([np.full((len(captions), 1), VOCABULARY.index(START)), targets[:, :-1]], axis=1)
    return inputs, targets


def location_labels(chosen: list[Any], locations: int) -> np.ndarray:
    """``[N, L]`` class of every annotation: 0 where no digit's box holds the location's centre,
    else ``1 + digit`` for a small digit and ``11 + digit`` for a large one.

    The scenes know where every digit is, so the encoder can be told what each of its locations
    shows. Captions alone teach that only through the attention, which early in training is
    spread over the whole grid; this target reaches every location at once. It supervises the
    encoder's features, never the attention: where the decoder looks is still learned from the
    captions alone, so the pointing metric still measures what the attention learned.
    """
    from service.datasets.scenes import SIZES
    from training.evaluate_captions import grid_centre

    labels = np.zeros((len(chosen), locations), np.int64)
    centres = [grid_centre(i, locations) for i in range(locations)]
    for n, scene in enumerate(chosen):
        for digit, box in zip(scene.digits, scene.boxes, strict=True):
            offset = 11 if box.size == SIZES["large"] else 1
            for i, (row, column) in enumerate(centres):
                if box.contains(row, column):
                    labels[n, i] = offset + digit
    return labels


def greedy_torch(net: Any, images: np.ndarray, max_tokens: int) -> list[str]:
    """Greedy captions in PyTorch, for validation during training."""
    import torch

    from service.datasets.scenes import END, START, VOCABULARY

    end = VOCABULARY.index(END)
    with torch.no_grad():
        h, c, annotations, mask = net.init_graph(torch.from_numpy(images))
        word = torch.full((len(images),), VOCABULARY.index(START), dtype=torch.long)
        ids = []
        for _ in range(max_tokens):
            logits, _, h, c, _ = net.decoder.step(word, h, c, annotations, mask)
            word = logits.argmax(-1)
            ids.append(word)
        table = torch.stack(ids, 1).tolist()
    captions = []
    for row in table:
        row = row[: row.index(end)] if end in row else row
        captions.append(" ".join(VOCABULARY[i] for i in row))
    return captions


def train(recipe: CaptionerRecipe, options: TrainOptions) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from service.datasets.scenes import DATA_DESCRIPTION, MAX_CAPTION_TOKENS, PAD, VOCABULARY, scenes
    from training.checkpoints import write_weights
    from training.loops import History, save_loss_curve, seed_everything
    from training.nets.captioner import doubly_stochastic_penalty

    config = recipe.train
    if options.steps is not None:
        config = replace(config, steps=options.steps)
    out = Path(options.out or recipe.out)
    recipe = replace(recipe, train=config, out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    seed_everything(config.seed)
    net = build_net(recipe.model)
    started = time.perf_counter()
    train_set = scenes("train", config.scenes, seed=config.seed)
    val_set = scenes("validation", config.val_scenes, seed=config.seed)
    images = torch.from_numpy(np.stack([s.image for s in train_set]))
    inputs, targets = (torch.from_numpy(a) for a in teacher_forcing([s.caption for s in train_set]))
    val_images = np.stack([s.image for s in val_set])
    parameters = list(net.parameters())
    if config.locations:
        locate = torch.nn.Linear(net.init_graph.encoder.features, LOCATION_CLASSES)  # auxiliary, not exported
        location_targets = torch.from_numpy(location_labels(train_set, net.init_graph.encoder.where.shape[1]))
        parameters += list(locate.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    order = torch.Generator().manual_seed(config.seed)
    sampler = torch.Generator().manual_seed(config.seed + 1) if config.attention == "hard" else None
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=VOCABULARY.index(PAD), reduction="none")
    history, best, best_state = History(), -1.0, None
    baseline = 0.0
    deadline = started + 60 * options.max_minutes if options.max_minutes else math.inf
    steps = 0
    for step in tqdm(range(config.steps), desc=recipe.name, disable=not options.progress):
        net.train()
        batch = torch.randint(len(images), (config.batch,), generator=order)
        h, c, annotations, mask = net.init_graph(images[batch])
        logits, alphas, logprobs = net.decoder(inputs[batch], h, c, annotations, mask, sample=sampler)
        real = (targets[batch] != VOCABULARY.index(PAD)).float()
        per_word = loss_fn(logits.transpose(1, 2), targets[batch])  # [B, T]
        nll = (per_word * real).sum() / real.sum()
        loss = nll + config.doubly_stochastic * doubly_stochastic_penalty(alphas, real)
        if config.locations:
            loss = loss + config.locations * torch.nn.functional.cross_entropy(
                locate(annotations).flatten(0, 1), location_targets[batch].flatten()
            )
        if sampler is not None:
            # REINFORCE: the log-likelihood of the caption given the sampled locations rewards them.
            reward = -(per_word * real).sum(dim=1).detach()
            baseline = config.baseline_decay * baseline + (1 - config.baseline_decay) * float(reward.mean())
            chosen = (logprobs * real).sum(dim=1)
            entropy = -(alphas * torch.log(alphas.clamp_min(1e-12))).sum(-1)
            loss = (
                loss
                - config.reinforce * ((reward - baseline) * chosen).mean()
                - config.entropy * (entropy * real).sum() / real.sum()
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_norm)
        optimizer.step()
        schedule.step()
        history.train.append(float(nll.detach()))
        steps = step + 1
        if steps % config.eval_every == 0 or steps == config.steps or time.perf_counter() > deadline:
            net.eval()
            captions = greedy_torch(net, val_images, MAX_CAPTION_TOKENS)
            exact = float(np.mean([c == s.caption for c, s in zip(captions, val_set, strict=True)]))
            history.val.append((steps, 1.0 - exact))
            if exact > best:
                best, best_state = exact, {k: v.clone() for k, v in net.state_dict().items()}
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - started
    assert best_state is not None
    net.load_state_dict(best_state)
    metadata = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "data": DATA_DESCRIPTION,
    }
    facts = {
        "steps": steps,
        "time_s": round(elapsed, 1),
        "device": "cpu (1 thread)",
        "torch": str(torch.__version__),
        "final_train_loss": history.final_train_loss(),
        "best_val_exact_match": best,
    }
    write_weights(out / WEIGHTS_NAME, net, metadata, facts)
    save_loss_curve(history, out / "loss_curve.png", f"{recipe.name}: train NLL, validation 1 - exact match")
    return {"name": recipe.name, "weights": str(out / WEIGHTS_NAME), **facts}


def restore(checkpoint: Path) -> tuple[CaptionerRecipe, Any, dict[str, Any]]:
    from training.checkpoints import load_weights
    from training.recipes import from_table

    weights = load_weights(checkpoint)
    recipe = from_table(CaptionerRecipe, weights.metadata["recipe"], where=str(checkpoint))
    net = build_net(recipe.model)
    net.load_state_dict(weights.model)
    net.eval()
    return recipe, net, {**weights.metadata, "training": weights.training}


def manifest_of(recipe: CaptionerRecipe, net: Any, training: dict[str, Any]) -> Any:
    from service.contract import ContextSpec, GoldenTrace, InitSpec, Manifest, StateSpec, TensorSpec
    from service.datasets.scenes import CANVAS, END, START, VOCABULARY
    from training.export_attention import INIT_FILE, STEP_FILE

    hidden = recipe.model.hidden
    features = net.decoder.attend.key_size
    locations = (CANVAS // 8) ** 2
    empty = GoldenTrace({}, {})
    return Manifest(
        name=recipe.name,
        version="1",
        task="captioner",
        description=recipe.description,
        step_graph=STEP_FILE,
        inputs=(TensorSpec("word", "int64", (), "the previous word's id (decoding.vocabulary); <START> first"),),
        outputs=(
            TensorSpec("logits", "float32", (len(VOCABULARY),), "unnormalised log-probabilities of the next word"),
            TensorSpec("attention", "float32", (locations,), "weights over the annotation grid (row-major), sum 1"),
        ),
        state=(
            StateSpec("h", "h_out", "float32", (hidden,), "init", "LSTM hidden state"),
            StateSpec("c", "c_out", "float32", (hidden,), "init", "LSTM cell state"),
        ),
        golden=GoldenTrace({"word": [0]}, {}),
        context=(
            ContextSpec("annotations", "float32", (locations, features), "the CNN's grid of annotation vectors"),
            ContextSpec("mask", "float32", (locations,), "1 at every location (an image has no padding)"),
        ),
        init=InitSpec(INIT_FILE, (TensorSpec("image", "float32", (CANVAS, CANVAS), "grey levels in [0, 1]"),), empty),
        decoding={
            "vocabulary": list(VOCABULARY),
            "start_token": START,
            "end_token": END,
            "separator": " ",
            "image": {"height": CANVAS, "width": CANVAS},
        },
        training=training,
    )


def install(
    net: Any,
    recipe: CaptionerRecipe,
    out: Path,
    training: dict[str, Any],
    *,
    score: bool = True,
    loss_curve: Path | None = None,
) -> tuple[Any, dict[str, float]]:
    """Exports ``net`` to the model folder ``out`` after its parity checks (and scores it from the
    staged graphs when ``score``); returns the parity report and the scores."""
    from service.datasets.scenes import START, VOCABULARY, scenes
    from training.export import staged_folder
    from training.export_attention import check_parity, export_graphs, record_golden

    manifest = manifest_of(recipe, net, training)
    parity_scenes = scenes("validation", PARITY_SESSIONS, seed=EVAL_SEED)
    payload = {"image": np.stack([s.image for s in parity_scenes])}
    tokens, _ = teacher_forcing([s.caption for s in parity_scenes])
    golden_tokens = [VOCABULARY.index(w) for w in [START, *parity_scenes[0].caption.split()]]
    init_trace, step_trace = record_golden(
        net.init_graph, net.step_graph, manifest, {"image": payload["image"][:1]}, golden_tokens, 1e-4
    )
    assert manifest.init is not None
    manifest = replace(manifest, golden=step_trace, init=replace(manifest.init, golden=init_trace))
    scores: dict[str, float] = {}
    with staged_folder(out) as staging:
        export_graphs(net.init_graph, net.step_graph, manifest, staging, payload)
        parity = check_parity(net.init_graph, net.step_graph, manifest, staging, payload, tokens)
        manifest = replace(
            manifest, training=manifest.training | {"exporter": "torchscript", "parity_max_abs_diff": parity.max_diff}
        )
        manifest.save(staging)
        if score:
            scores = {k: v for k, v in evaluate(staging).items() if k != "model"}
            manifest = replace(manifest, scores=scores)
            manifest.save(staging)
        if loss_curve is not None and loss_curve.exists():
            shutil.copyfile(loss_curve, staging / loss_curve.name)
    return parity, scores


def export(options: ExportOptions) -> str:
    from training.checkpoints import LOSS_CURVE_FILE

    started = time.perf_counter()
    recipe, net, meta = restore(options.checkpoint)
    recipe_file = str(meta.get("recipe_file", ""))
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
        "data": meta.get("data", ""),
        **meta["training"],
    }
    curve = options.loss_curve or options.checkpoint.parent / LOSS_CURVE_FILE
    parity, scores = install(net, recipe, Path(options.out), training, loss_curve=curve)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return (
        f"wrote {options.out}: parity max |diff| {parity.max_diff:.2e} (init and {parity.steps} decoder steps of "
        f"{parity.sessions} sessions); {shown} (ONNX; export and scoring {time.perf_counter() - started:.1f} s)"
    )


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Greedy captions of the test and composition splits from the ONNX graphs, scored."""
    from service.contract import Manifest
    from service.datasets.scenes import MAX_CAPTION_TOKENS, scenes
    from training.evaluate_captions import greedy_captions, score_captions

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


KIND = TrainingKind("captioner", CaptionerRecipe, train, export, evaluate)
