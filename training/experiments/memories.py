"""Measurements of the associative memories, each a PNG under ``--out`` and a JSON summary on stdout.

    python -m training.experiments.memories capacity --out docs/img
    python -m training.experiments.memories dense --out docs/img
    python -m training.experiments.memories rbm --out docs/img
    python -m training.experiments.memories anneal --out docs/img

Every run is seeded; the numbers in docs/memory.md come from these commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.datasets.maxcut import brute_force_max_cut, random_graph
from service.datasets.patterns import flip_bits, load_digits_binary, nearest_on_known, occlusion_mask, random_bipolar
from training.tasks.associative_memory.boltzmann import BoltzmannMachine
from training.tasks.associative_memory.dense_hopfield import DenseHopfield
from training.tasks.associative_memory.hopfield import Hopfield, Rule
from training.tasks.associative_memory.rbm_training import RBMConfig, complete_images, train_rbm

#: A stored pattern counts as recalled when the state the asynchronous dynamics settle in, started
#: from the pattern itself, differs from it in at most this fraction of units.
RECALL_MAX_BIT_ERRORS = 0.01
#: alpha_c(N) is the load at which the recalled fraction falls below this level.
RECALL_LEVEL = 0.9
MAX_SWEEPS = 30


def settle(net: Hopfield, start: torch.Tensor, *, seed: int, max_sweeps: int = MAX_SWEEPS) -> torch.Tensor:
    """Asynchronous sweeps (fresh seeded order keys each sweep) until no unit changes, or ``max_sweeps``."""
    gen = torch.Generator().manual_seed(seed)
    free = torch.zeros_like(start)
    s = start
    with torch.no_grad():
        for _ in range(max_sweeps):
            s, _, changed = net.sweep(s, free, free, torch.rand(s.shape, generator=gen))
            if not bool(changed.any()):
                break
    return s


def recall_fraction(units: int, load: float, rule: Rule, *, patterns_per_point: int, seed: int) -> float:
    """Fraction of stored random patterns recalled (see :data:`RECALL_MAX_BIT_ERRORS`) at load ``P / N``."""
    count = max(1, round(load * units))
    trials = max(1, round(patterns_per_point / count))
    recalled = []
    for trial in range(trials):
        xi = random_bipolar(count, units, seed=seed * 100_003 + trial)
        net = Hopfield.from_patterns(xi, rule=rule)
        final = settle(net, torch.from_numpy(xi), seed=trial).numpy()
        recalled.append((final != xi).mean(axis=1) <= RECALL_MAX_BIT_ERRORS)
    return float(np.concatenate(recalled).mean())


def crossing(loads: Sequence[float], fractions: Sequence[float], level: float) -> float:
    """The first load where ``fractions`` falls below ``level``, linearly interpolated (nan if never)."""
    for i in range(1, len(loads)):
        if fractions[i - 1] >= level > fractions[i]:
            a0, a1, f0, f1 = loads[i - 1], loads[i], fractions[i - 1], fractions[i]
            return float(a0 + (f0 - level) * (a1 - a0) / (f0 - f1))
    return float("nan")


def capacity(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """Recall against load alpha = P/N for N = 100, 200, 400, Hebbian and Storkey."""
    sizes = (100, 200) if quick else (100, 200, 400)
    loads = [round(a, 3) for a in np.arange(0.04, 0.37, 0.02)]
    per_point = 100 if quick else 300
    curves: dict[str, dict[int, list[float]]] = {"hebbian": {}, "storkey": {}}
    for rule in ("hebbian", "storkey"):
        for n in sizes:
            fractions: list[float] = []
            for load in loads:
                fractions.append(recall_fraction(n, load, rule, patterns_per_point=per_point, seed=n))
                if fractions[-1] == 0.0:  # past the collapse: the rest of the curve is zero
                    fractions += [0.0] * (len(loads) - len(fractions))
                    break
            curves[rule][n] = fractions
    alpha_c = {rule: {n: crossing(loads, f, RECALL_LEVEL) for n, f in c.items()} for rule, c in curves.items()}
    half = {rule: {n: crossing(loads, f, 0.5) for n, f in c.items()} for rule, c in curves.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rule, style in (("hebbian", "-"), ("storkey", "--")):
        for n in sizes:
            ax.plot(loads, curves[rule][n], style, marker="o", ms=3, label=f"{rule}, N={n}")
    ax.axvline(0.138, color="grey", lw=0.8)
    ax.text(0.14, 0.05, "0.138", color="grey")
    ax.axhline(RECALL_LEVEL, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("load α = P / N")
    ax.set_ylabel(f"fraction recalled (≤ {RECALL_MAX_BIT_ERRORS:.0%} bit errors)")
    ax.set_title("Hopfield capacity: random patterns, asynchronous updates")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "hopfield_capacity.png", dpi=110)
    plt.close(fig)
    return {
        "criterion": (
            f"recalled: settled state (async, <= {MAX_SWEEPS} sweeps) from the stored pattern has "
            f"<= {RECALL_MAX_BIT_ERRORS:.0%} bit errors; alpha_c: load where the recalled fraction drops below "
            f"{RECALL_LEVEL}"
        ),
        "loads": loads,
        "recalled": curves,
        "alpha_c": alpha_c,
        "alpha_half": half,
        "storkey_gain_at_200": alpha_c["storkey"][200] / alpha_c["hebbian"][200],
        "png": "hopfield_capacity.png",
    }


def dense(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """Bit accuracy after one update from 20% flipped bits at N = 64: dense memory vs the classical net."""
    units, flips, beta = 64, 0.2, 1.0
    loads = [0.05, 0.1, 0.14, 0.2, 0.5, 1, 2, 5, 10, 20]
    probes_per_load = 200 if quick else 1000
    dense_acc, sync_acc, async_acc = [], [], []
    for load in loads:
        count = round(load * units)
        xi = random_bipolar(count, units, seed=count)
        pick = np.random.default_rng(1).integers(0, count, probes_per_load)
        target = xi[pick]
        probe = torch.from_numpy(flip_bits(target, flips, seed=2))
        zero = torch.zeros_like(probe)
        with torch.no_grad():
            memory = DenseHopfield(patterns=xi, beta=beta)
            new, _, _ = memory.sweep(zero, zero, probe, None)
            dense_acc.append(float((torch.sign(new).numpy() == target).mean()))
            classical = Hopfield.from_patterns(xi, rule="hebbian", update="sync")
            new, _, _ = classical.sweep(zero, zero, probe, None)
            sync_acc.append(float((new.numpy() == target).mean()))
            settled = settle(Hopfield.from_patterns(xi, rule="hebbian"), probe, seed=3)
            async_acc.append(float((settled.numpy() == target).mean()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogx(loads, dense_acc, "o-", label=f"dense memory, one update (β={beta})")
    ax.semilogx(loads, sync_acc, "s--", label="classical Hebbian, one synchronous update")
    ax.semilogx(loads, async_acc, "^:", label="classical Hebbian, async until fixed point")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("stored patterns per unit, P / N  (N = 64)")
    ax.set_ylabel("bit accuracy from 20% flipped bits")
    ax.set_title("Dense (modern) Hopfield memory vs the classical net")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dense_vs_classical.png", dpi=110)
    plt.close(fig)
    at_10n = dense_acc[loads.index(10)]
    return {
        "units": units,
        "flipped_fraction": flips,
        "beta": beta,
        "probes_per_load": probes_per_load,
        "loads": loads,
        "dense_bit_accuracy": dense_acc,
        "hebbian_sync_one_update_bit_accuracy": sync_acc,
        "hebbian_async_settled_bit_accuracy": async_acc,
        "dense_bit_accuracy_at_10N": at_10n,
        "png": "dense_vs_classical.png",
    }


def rbm(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """RBM on binarised digits (CD-k and PCD): completing held-out digits whose bottom half is hidden."""
    digits = load_digits_binary()
    known = occlusion_mask(digits.SHAPE, "bottom")
    hidden = known == 0
    truth = digits.test[:, hidden]
    nearest = nearest_on_known(digits.train, digits.test, known)
    baseline = float((nearest[:, hidden] == truth).mean())
    epochs = 20 if quick else 200
    configs = {
        "cd1": RBMConfig(hidden=400, k=1, epochs=epochs, lr=0.05),
        "pcd": RBMConfig(hidden=300, k=10, persistent=True, epochs=epochs, lr=0.01, batch=50),
    }
    results: dict[str, Any] = {}
    histories = {}
    completions = {}
    for name, config in configs.items():
        t0 = time.perf_counter()
        net, history = train_rbm(digits.train, config)
        train_s = time.perf_counter() - t0
        marginal = complete_images(net, digits.test, known, sweeps=200, burn_in=50, seed=1)
        guess = (marginal > 0.5).astype(np.float32)
        results[name] = {
            "config": vars(config),
            "train_s": round(train_s, 1),
            "final_reconstruction_error": history.reconstruction_error[-1],
            "hidden_pixel_accuracy": float((guess[:, hidden] == truth).mean()),
        }
        histories[name] = history.reconstruction_error
        completions[name] = guess

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 3, 1)
    for name, curve in histories.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction error")
    ax.legend()
    rows = [("truth", digits.test), ("occluded", digits.test * known), ("nearest", nearest)]
    rows += [(name, np.where(known > 0, digits.test, g)) for name, g in completions.items()]
    shown = 8
    for r, (label, images) in enumerate(rows):
        for c in range(shown):
            axis = fig.add_subplot(len(rows), 3 * shown, r * 3 * shown + shown + c + 1 + shown // 2)
            axis.imshow(images[c].reshape(digits.SHAPE), cmap="gray_r", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=7)
    fig.suptitle("RBM completion of held-out digits, bottom half hidden")
    fig.savefig(out / "rbm_digits.png", dpi=110)
    plt.close(fig)
    return {
        "metric": "pixel accuracy on the hidden bottom half (32 px) of the held-out digits",
        "test_images": len(digits.test),
        "nearest_training_image_baseline": baseline,
        "all_off_baseline": float((truth == 0).mean()),
        "rbm": results,
        "png": "rbm_digits.png",
    }


def anneal(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """Simulated annealing of a Boltzmann machine on max-cut vs greedy descent, against the brute-force optimum."""
    graph = random_graph(18, edge_probability=0.5, max_weight=5, seed=7)
    t0 = time.perf_counter()
    optimum, optimal_cuts = brute_force_max_cut(graph)
    brute_s = time.perf_counter() - t0
    w, b = graph.boltzmann_couplings()
    net = BoltzmannMachine.from_energy(weight=torch.from_numpy(w), bias=torch.from_numpy(b))
    runs = 100 if quick else 500
    schedules = {"greedy (T=0)": [1e-4] * 30}
    for sweeps in (10, 30, 100, 300):
        if quick and sweeps > 100:
            continue
        schedules[f"anneal {sweeps} sweeps"] = list(np.geomspace(10.0, 0.05, sweeps))
    summary: dict[str, Any] = {}
    finals = {}
    for label, temperatures in schedules.items():
        gen = torch.Generator().manual_seed(11)
        free = torch.zeros(runs, net.units)
        start = torch.bernoulli(torch.full((runs, net.units), 0.5), generator=gen)
        s = start  # a random cut; binary units have no "unset" value, so the state starts as the pattern itself
        with torch.no_grad():
            for t in temperatures:
                s, _, _ = net.sweep(s, free, free, torch.rand(runs, net.units, generator=gen), torch.full((runs,), t))
        cuts = graph.cut_value(s.numpy())
        finals[label] = cuts
        summary[label] = {
            "sweeps": len(temperatures),
            "found_optimum": float(np.isclose(cuts, optimum).mean()),
            "mean_cut_over_optimum": float(cuts.mean() / optimum),
        }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(finals)
    ax.bar(range(len(labels)), [summary[k]["found_optimum"] for k in labels])
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(f"fraction of {runs} runs reaching the max cut")
    ax.set_title(f"Max-cut, {graph.nodes} nodes: simulated annealing of a Boltzmann machine")
    fig.tight_layout()
    fig.savefig(out / "annealing_maxcut.png", dpi=110)
    plt.close(fig)
    return {
        "problem": f"max-cut, {graph.nodes} nodes, p=0.5, integer weights 1..5, seed 7",
        "optimum": optimum,
        "optimal_cuts": optimal_cuts,
        "brute_force_s": round(brute_s, 2),
        "runs": runs,
        "schedule": "T from 10 to 0.05, geometric, one Gibbs sweep per temperature",
        "results": summary,
        "png": "annealing_maxcut.png",
    }


EXPERIMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "capacity": capacity,
    "dense": dense,
    "rbm": rbm,
    "anneal": anneal,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments.memories", description=__doc__.splitlines()[0]
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests), not the reported one")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = EXPERIMENTS[args.experiment](args.out, quick=args.quick)
    summary["run_s"] = round(time.perf_counter() - start, 1)
    json.dump(summary, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
