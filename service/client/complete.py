"""``statestream client complete``: complete a letter or a digit with an associative memory on the server.

    statestream client complete --model hopfield_letters --pattern A --noise 0.25 --seed 3 --json
    statestream client complete --model rbm_digits --pattern 3 --occlude bottom --png sweeps.png

The probe is built here from the project's own patterns: a letter names its 5x7 bitmap
(``service/datasets/patterns.py``), a digit the first held-out image of that digit in the
bundled handwritten digits (``service/datasets/digits.py``); both numpy only. ``--noise`` flips
exactly that fraction of the pixels (seeded by ``--seed``), ``--occlude`` hides a half, which is
then sent as unknown (mask 0). The server runs the sweeps (a Run) and streams each one; the command prints
them, and with ``--png`` draws the probe and every sweep as a strip of images with their
energies (matplotlib, from the ``train`` extra; without it the command says so and exits 2).

The value convention is read off the model's inputs: a net with a ``temperature`` input is a
Boltzmann machine (binary 0/1 units), one without is a Hopfield net or dense memory (bipolar).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.plots import check_drawing
from service.client.registry import command, served_model
from service.client.sdk import Client
from service.command import EXIT_USAGE, UINT32_MAX, CommandError, fraction, int_in, non_negative_float, seed
from service.tensors import from_proto

DEFAULT_MAX_STEPS = 50
DIGIT_SHAPE = (8, 8)


class ProbeError(ValueError):
    """A probe that cannot be built for this model (exit status 2, one line)."""


DESCRIPTION = "complete a noisy or occluded letter or digit with an associative memory, sweep by sweep"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``complete`` subcommand's own options (``service.client.commands`` adds the connection ones)."""
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--pattern", required=True, help="a letter A-Z (letter memories) or a digit 0-9 (digit RBM)")
    parser.add_argument("--noise", type=fraction, default=0.0, help="fraction of pixels flipped")
    parser.add_argument(
        "--occlude", default="none", choices=("none", "bottom", "top", "left", "right"), help="hide a half (unknown)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seeds the flipped pixels and the server's run")
    parser.add_argument("--max-steps", type=int_in(1, UINT32_MAX), default=DEFAULT_MAX_STEPS, help="most sweeps")
    parser.add_argument(
        "--t-start", type=non_negative_float, help="stochastic nets: first temperature (default: the model's, 1)"
    )
    parser.add_argument(
        "--t-end", type=non_negative_float, help="stochastic nets: last temperature (default: the model's, 1)"
    )
    parser.add_argument(
        "--sweeps",
        type=int_in(1, UINT32_MAX),
        help="stochastic nets: length of the annealing schedule (default: --max-steps)",
    )
    parser.add_argument("--png", type=Path, help="draw the probe and each sweep with its energy (needs matplotlib)")


def target_image(name: str, units: int, binary: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """The clean pattern ``--pattern`` names, in the model's values, and its image shape."""
    from service.datasets.patterns import LETTER_SHAPE, LETTERS, to_bipolar

    if len(name) == 1 and name.upper() in LETTERS:
        if units != LETTER_SHAPE[0] * LETTER_SHAPE[1]:
            raise ProbeError(f"a letter has {LETTER_SHAPE[0] * LETTER_SHAPE[1]} pixels, the model has {units} units")
        bits = LETTERS[name.upper()].reshape(-1).astype(np.float32)
        return (bits if binary else to_bipolar(bits)), LETTER_SHAPE
    if name.isdigit() and len(name) == 1:
        if units != DIGIT_SHAPE[0] * DIGIT_SHAPE[1]:
            raise ProbeError(f"a digit has {DIGIT_SHAPE[0] * DIGIT_SHAPE[1]} pixels, the model has {units} units")
        from service.datasets.patterns import load_digits_binary

        digits = load_digits_binary()
        image = digits.test[np.flatnonzero(digits.test_labels == int(name))[0]]
        return (image if binary else to_bipolar(image)), DIGIT_SHAPE
    raise ProbeError(f"--pattern takes a letter A-Z or a digit 0-9, got {name!r}")


def build_probe(
    target: np.ndarray, shape: tuple[int, int], *, noise: float, occlude: str, seed: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(pattern, mask)``: ``target`` with ``noise`` of its pixels flipped and ``occlude``'s half unknown."""
    from service.datasets.patterns import flip_bits, occlusion_mask, to_binary, to_bipolar

    flipped = flip_bits((target if not binary else to_bipolar(target))[None], noise, seed=seed)[0]
    pattern = to_binary(flipped) if binary else flipped
    known = occlusion_mask(shape, occlude)
    if occlude == "none":
        if binary:  # a binary net starts from zeros and takes only the known units of a probe
            raise ProbeError("a Boltzmann machine completes hidden pixels: give --occlude")
        return pattern, np.zeros_like(pattern)  # nothing held: the whole noisy letter is the start
    return pattern * known, known  # unknown units: 0 (bipolar "unset"; binary: the sweeps draw them)


def _options(args: argparse.Namespace) -> dict[str, float]:
    given = {"t_start": args.t_start, "t_end": args.t_end, "sweeps": args.sweeps}
    return {name: float(value) for name, value in given.items() if value is not None}


@command("complete", DESCRIPTION, add_arguments, tasks=("associative_memory",))
def complete(client: Client, args: argparse.Namespace) -> int:
    if args.png is not None:
        check_drawing("--png", args.png)
    info = served_model(client, args)
    clamp = next((t for t in info.inputs if t.name == "clamp_values"), None)
    if clamp is None:
        raise CommandError(f"{args.model!r} takes no clamp_values: not a memory this command can probe", EXIT_USAGE)
    units = int(np.prod(list(clamp.shape)))
    binary = any(t.name == "temperature" for t in info.inputs)
    try:
        target, shape = target_image(args.pattern, units, binary)
        pattern, mask = build_probe(
            target, shape, noise=args.noise, occlude=args.occlude, seed=args.seed, binary=binary
        )
    except ProbeError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    session = client.open(args.model)
    sweeps: list[dict[str, Any]] = []
    states: list[np.ndarray] = []
    done = pb.RunDone()
    try:
        events = session.run(
            args.max_steps,
            tensors={"pattern": pattern[None], "mask": mask[None]},
            options=_options(args),
            seed=args.seed,
        )
        for event in events:
            if isinstance(event, pb.RunOutput):
                tensors = {t.name: from_proto(t) for t in event.output.tensors}
                states.append(tensors["pattern"])
                sweeps.append(
                    {
                        "index": event.index,
                        "energy": round(float(tensors["energy"]), 4),
                        "changed": int(tensors["changed"]),
                        "label": event.output.label,
                    }
                )
            else:
                done = event
    finally:  # a refused run (StepFailed) is reported by the client's one error path
        session.close()
    final = states[-1]
    read = (final > 0.5) if binary else (final > 0)
    truth = target > 0.5 if binary else target > 0
    unknown = mask == 0
    summary = {
        "model": args.model,
        "pattern": args.pattern,
        "seed": done.seed,
        "stop_reason": done.stop_reason,
        "steps": done.steps,
        "sweeps": sweeps,
        "pixel_accuracy": round(float((read == truth).mean()), 4),
        "unknown_pixel_accuracy": round(float((read == truth)[unknown].mean()), 4) if unknown.any() else None,
        "recalled": bool((read == truth).all()),
        "final": read.astype(int).tolist(),
    }
    if args.png is not None:
        draw_strip(args.png, pattern, mask, states, sweeps, shape, binary)
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary))
    else:
        print(_ascii(pattern, shape, binary, mask) + "\n")
        for sweep in sweeps:
            print(
                f"sweep {sweep['index']:>3}: energy {sweep['energy']:>10.4f}  changed {sweep['changed']:>3}  {sweep['label']}"
            )
        print("\n" + _ascii(final, shape, binary, np.ones_like(mask)))
        print(
            f"{done.stop_reason} after {done.steps} sweeps (seed {done.seed}); pixel accuracy {summary['pixel_accuracy']}"
        )
    return 0


def _ascii(values: np.ndarray, shape: tuple[int, int], binary: bool, mask: np.ndarray) -> str:
    on = values > (0.5 if binary else 0)
    unset = (mask == 0) & (values == 0) & (not binary)
    cells = np.where(unset, "?", np.where(on, "#", "."))
    return "\n".join("".join(row) for row in cells.reshape(shape))


def draw_strip(
    path: Path,
    probe: np.ndarray,
    mask: np.ndarray,
    states: list[np.ndarray],
    sweeps: list[dict[str, Any]],
    shape: tuple[int, int],
    binary: bool,
) -> None:
    """The probe then each sweep's pattern, left to right, titled with its energy (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [probe, *states]
    titles = ["probe", *(f"{s['index'] + 1}: E={s['energy']:.2f}" for s in sweeps)]
    figure, axes = plt.subplots(1, len(shown), figsize=(1.4 * len(shown), 2.2), squeeze=False)
    low = 0.0 if binary else -1.0
    for ax, image, title in zip(axes[0], shown, titles, strict=True):
        ax.imshow(np.asarray(image).reshape(shape), cmap="gray_r", vmin=low, vmax=1.0)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
