"""``python -m loadtest.revisions --base REV``: the store row of two revisions, side by side.

A change to the durable path is judged against the revision before it, in the same minutes on
the same machine (its speed drifts by up to 2x within hours). REV is checked out into a
temporary git worktree; one Redis and three servers start: ``direct`` (this tree, no store),
``base`` (REV, a checkpoint every K steps) and ``tree`` (this tree, the same K). One cell of
each a round, in turn, every other round reversed; only the measured one has load. It prints
each round and the medians of the rounds' own ratios: each store row against ``direct``, and
``tree`` against ``base``. Both revisions serve the same model folder (this tree's).

    python -m loadtest.revisions --base HEAD~1 --checkpoint-every 1 --streams 256 --rounds 10
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from loadtest.cells import Cell, Plan, measure
from loadtest.flags import model_folder
from loadtest.scale import GRACE, redis_server, store_flags
from loadtest.servers import CHILD_FOLDER, ServerProcess, child_environment, serve_command, stopping_children_on_sigterm
from service import command
from service.command import Parser, float_in, int_in, nonempty_path
from service.contract import Manifest

#: The rows of a round, in the order of even rounds (odd rounds run them reversed).
ROWS = ("direct", "base", "tree")
#: Each printed ratio: (numerator row, denominator row).
RATIOS = (("base", "direct"), ("tree", "direct"), ("tree", "base"))


@dataclass(frozen=True)
class Comparison:
    """What to measure: a model, K, streams, and how long and how often."""

    models_dir: Path
    model: str
    every: int
    streams: int
    rounds: int
    plan: Plan


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise ValueError(said[-1] if said else f"git {args[0]} found nothing")
    return done.stdout.strip()


def resolve(revision: str) -> tuple[Path, str]:
    """The checkout this command runs in and ``revision``'s commit there; ValueError if either is not."""
    repository = Path(_git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    return repository, _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", cwd=repository)


@contextlib.contextmanager
def worktree(repository: Path, commit: str) -> Iterator[Path]:
    """``commit`` checked out in a temporary worktree of ``repository``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="statestream-base-") as folder:
        tree = Path(folder) / "tree"
        _git("worktree", "add", "--detach", str(tree), commit, cwd=repository)
        try:
            yield tree
        finally:
            _git("worktree", "remove", "--force", str(tree), cwd=repository)


def in_tree(tree: Path) -> dict[str, str | None]:
    """The environment that makes a child's ``python -m service...`` import ``tree``'s code.

    PYTHONSAFEPATH keeps the working directory off sys.path; PYTHONPATH puts ``tree`` ahead of
    the installed (editable) checkout.
    """
    return {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}


def imports_from(environ: dict[str, str | None]) -> Path:
    """Where a server child with ``environ`` finds the ``service`` package: a guard against measuring
    the wrong tree. The child is started as ``ServerProcess`` starts one (environment, folder)."""
    code = "import service, pathlib; print(pathlib.Path(service.__file__).resolve().parent.parent)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_environment(environ), cwd=CHILD_FOLDER,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(done.stdout.strip())


class Measured(NamedTuple):
    """One cell: its round (from 1), its row, and what the load measured."""

    round: int
    row: str
    steps_per_s: float
    cpu_us_per_step: float
    errors: int


def compare(comparison: Comparison, base: Path) -> list[Measured]:
    """Every row once a round, in turn; one result per cell, in the order measured."""
    manifest = Manifest.load(comparison.models_dir / comparison.model)
    results: list[Measured] = []
    with contextlib.ExitStack() as stack:
        url, _ = stack.enter_context(redis_server())
        store = store_flags(url, comparison.every)
        servers = {
            "direct": ServerProcess("direct", serve_command(comparison.models_dir, "batched", GRACE)),
            "base": ServerProcess(
                "base", serve_command(comparison.models_dir, "batched", store), environ=in_tree(base)
            ),
            "tree": ServerProcess("tree", serve_command(comparison.models_dir, "batched", store)),
        }
        for server in servers.values():
            stack.enter_context(server)
        for round_index in range(comparison.rounds):
            for row in ROWS if round_index % 2 == 0 else ROWS[::-1]:
                cell = Cell(row, row, "stream", comparison.streams)
                result = measure(cell, servers[row], comparison.plan, manifest)
                cpu_us = 1e6 * result.server_cpu_s / max(1, result.steps)
                results.append(Measured(round_index + 1, row, result.steps_per_s, cpu_us, result.errors))
    return results


def ratios(results: list[Measured]) -> dict[str, list[float]]:
    """Each RATIOS pair's steps/s ratio, round by round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.row] = r.steps_per_s
    return {
        f"{top}/{bottom}": [cells[top] / cells[bottom] for _, cells in sorted(by_round.items()) if cells[bottom] > 0]
        for top, bottom in RATIOS
    }


def table(results: list[Measured], every: int, streams: int) -> str:
    lines = [f"store K={every} at {streams} streams; medians of {max(r.round for r in results)} rounds", ""]
    lines += ["| row | steps/s | server CPU µs a step | errors |", "|---|---:|---:|---:|"]
    for row in ROWS:
        mine = [r for r in results if r.row == row]
        steps = statistics.median(r.steps_per_s for r in mine)
        cpu = statistics.median(r.cpu_us_per_step for r in mine)
        lines.append(f"| {row} | {steps:,.0f} | {cpu:.1f} | {sum(r.errors for r in mine)} |")
    lines.append("")
    for name, values in ratios(results).items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"{name}: median {statistics.median(values):.3f} (rounds: {rounds})")
    return "\n".join(lines)


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.revisions", description=__doc__.split("\n\n")[0])
    made.add_argument("--base", required=True, help="the git revision to compare this tree with (e.g. HEAD~1)")
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="lstm256")
    made.add_argument("--checkpoint-every", type=int_in(1, 1_000_000), default=1, help="K of both store rows")
    made.add_argument("--streams", type=int_in(1, 4096), default=256)
    made.add_argument("--rounds", type=int_in(1, 100), default=10)
    made.add_argument("--duration-s", type=float_in(0.01, 600), default=3.0, help="measuring window of a cell")
    made.add_argument("--warmup-s", type=float_in(0, 600), default=1.0, help="warm-up before each window")
    made.add_argument("--json", action="store_true", help="one JSON object per cell instead of the table")
    return made


@stopping_children_on_sigterm
def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    model_folder(made, args.models_dir, args.model)
    try:
        repository, commit = resolve(args.base)
    except ValueError as exc:
        made.error(f"--base {args.base}: not a revision of this checkout ({exc})")
    plan = Plan(warmup_s=args.warmup_s, duration_s=args.duration_s)
    comparison = Comparison(
        args.models_dir.resolve(), args.model, args.checkpoint_every, args.streams, args.rounds, plan
    )
    with worktree(repository, commit) as base:
        if imports_from(in_tree(base)) != base.resolve():
            made.error(f"a child would not import {args.base}'s code from {base}")
        results = compare(comparison, base)
    if args.json:
        for result in results:
            print(json.dumps(result._asdict()))
    else:
        print(table(results, args.checkpoint_every, args.streams))
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
