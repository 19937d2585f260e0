"""Where should session state live? The server's batch path, per provider and state memory.

``python -m loadtest.gpu_bench --out DIR`` measures, for each batch size, steps/s of one batch
the way the scheduler runs it (gather the batch's rows from the slabs into the bound call, one
ORT call, scatter the new state back), with no gRPC and no Python scheduling around it. Rows:
``cpu`` and ``cpu-device`` (host slabs, or device slabs on ORT's CPU memory), ``cuda-host`` and
``cuda-slab`` (what ``--state-memory host`` and ``auto`` run on a GPU) and ``cuda-resident``
(state bound in ping-pong: the ceiling); CUDA rows need onnxruntime-gpu and a GPU. Each path is
first proved against the CPU with host slabs (max |diff| over 20 carried steps of 8 sessions,
TF32 off). It writes ``gpu_bench.md`` and ``gpu_bench.jsonl`` into ``--out``;
docs/benchmarks.md explains the rows and holds the results.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.flags import CountList, model_at
from service import command
from service.command import Parser, check_folder_to_write, float_in, int_in, nonempty_path

BATCHES = (1, 16, 256, 1024, 4096, 16384)
VARIANTS = ("cpu", "cpu-device", "cuda-host", "cuda-slab", "cuda-resident")
#: The task of the model the rows run: one token id in, logits out.
TASK = "language_model"


def _timed(fn: Callable[[], Any], duration_s: float, batch: int) -> tuple[float, float]:
    """(steps/s, median ms per call) of calling ``fn`` back to back for about ``duration_s``."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > duration_s and len(times) >= 3:
            break
    return batch * len(times) / sum(times), float(np.median(times) * 1e3)


def _server_batch(model: Any, memory: str, batch: int, ids: np.ndarray) -> Callable[[], None]:
    """One batch of ``batch`` sessions spread over a slab of 2 × batch rows, as the scheduler runs it."""
    from service.runtime import build_calls, build_slabs
    from service.settings import Settings

    settings = Settings(state_memory=memory, max_batch=batch, initial_capacity=2 * batch)
    slabs, calls = build_slabs(model, settings), build_calls(model, settings)
    for _ in range(2 * batch):
        slabs.allocate()
    rows = np.random.default_rng(1).permutation(2 * batch)[:batch].astype(np.intp)
    call = calls.get(batch, 1)
    call.inputs[model.manifest.inputs[0].name][...] = ids

    def run() -> None:
        slabs.gather(rows, call.state)
        call.run()
        slabs.scatter(rows, call.new_state)

    return run


def _ping_pong(ort: Any, model: Any, batch: int, ids: np.ndarray) -> Callable[[], None]:
    """Alternates two bindings whose state outputs are each other's state inputs."""
    manifest, session = model.manifest, model.session
    sets = [
        {
            s.input: ort.OrtValue.ortvalue_from_shape_and_type([batch, *s.shape], s.np_dtype, "cuda", 0)
            for s in manifest.state
        }
        for _ in range(2)
    ]
    first = manifest.outputs[0]
    logits = np.zeros((batch, 1, *first.shape), first.np_dtype)
    bindings = []
    for i in range(2):
        binding = session.io_binding()
        binding.bind_cpu_input(manifest.inputs[0].name, ids)
        for s in manifest.state:
            binding.bind_ortvalue_input(s.input, sets[i][s.input])
            binding.bind_ortvalue_output(s.output, sets[1 - i][s.input])
        binding.bind_output(first.name, "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
        bindings.append(binding)
    turn = [0]

    def run() -> None:
        session.run_with_iobinding(bindings[turn[0]])
        turn[0] ^= 1

    return run


def _served_parity(reference: tuple[Any, str], candidate: tuple[Any, str], steps: int = 20, sessions: int = 8) -> float:
    """Max |diff| of logits and final state between two (model, state memory) pairs over carried steps.

    Both run the server's batch path on the same token ids: ``sessions`` sessions on every other
    row of slabs that start at 2 rows (so they grow on the way), one batch per step. Proves a
    provider and a state memory against the CPU with host slabs before their speed is trusted.
    """
    from service.runtime import build_calls, build_slabs
    from service.settings import Settings

    results = []
    for model, memory in (reference, candidate):
        settings = Settings(state_memory=memory, max_batch=sessions, initial_capacity=2)
        slabs, calls = build_slabs(model, settings), build_calls(model, settings)
        rows = np.array([slabs.allocate() for _ in range(2 * sessions)], dtype=np.intp)[::2]
        token = model.manifest.inputs[0]
        rng = np.random.default_rng(0)
        call = calls.get(sessions, 1)
        logits = []
        for _ in range(steps):
            call.inputs[token.name][...] = rng.integers(0, len(model.manifest.vocabulary), size=(sessions, 1))
            slabs.gather(rows, call.state)
            call.run()
            slabs.scatter(rows, call.new_state)
            logits.append(call.outputs["logits"].copy())
        state = np.concatenate([np.ravel(v) for row in rows for v in slabs.read_row(int(row)).values()])
        results.append((np.stack(logits), state))
    (logits_a, state_a), (logits_b, state_b) = results
    return float(max(np.max(np.abs(logits_a - logits_b)), np.max(np.abs(state_a - state_b))))


#: The largest batch a row may time.
MAX_BATCH = 65_536


def parser() -> Parser:
    parser = Parser(prog="python -m loadtest.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=nonempty_path, default=Path("models/char_lm"), help="a language model's folder")
    parser.add_argument("--out", type=nonempty_path, default=Path("."), help="folder to write the results into")
    parser.add_argument("--duration-s", type=float_in(0.001, 3600), default=1.0, help="timing window per row")
    batches = int_in(1, MAX_BATCH)
    parser.add_argument(
        "--batches",
        type=CountList(batches),
        default=BATCHES,
        help=f"comma-separated batch sizes (default {','.join(map(str, BATCHES))})",
    )
    parser.add_argument("--cpu-max-batch", type=batches, default=1024, help="skip CPU rows above this batch")
    parser.add_argument("--cpu-only", action="store_true", help="measure the CPU rows only")
    return parser


def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    model_at(made, args.model, f"--model {args.model}", tasks=(TASK,))  # the rows feed it token ids and read its logits
    check_folder_to_write(args.out)  # before the rows are timed, not after

    with contextlib.suppress(ImportError):  # torch first: onnxruntime-gpu then finds its CUDA libraries
        import torch  # noqa: F401
    import onnxruntime as ort

    from service.providers import CUDA
    from service.registry import LoadedModel
    from service.settings import Settings
    from service.tasks import driver_class

    cpu = LoadedModel.from_folder(args.model, Settings(provider="cpu"), driver_class)
    gpu = not args.cpu_only and CUDA in ort.get_available_providers()
    cuda = LoadedModel.from_folder(args.model, Settings(provider="cuda"), driver_class) if gpu else None
    rows: list[dict[str, Any]] = []

    def record(variant: str, batch: int, runner: Callable[[], None]) -> None:
        rate = _timed(runner, args.duration_s, batch)
        rows.append({"variant": variant, "batch": batch, "steps_per_s": round(rate[0]), "ms_per_call": rate[1]})
        print(json.dumps(rows[-1]), flush=True)

    rng = np.random.default_rng(0)
    token = cpu.manifest.inputs[0]
    for batch in args.batches:
        ids = rng.integers(0, len(cpu.manifest.vocabulary), size=(batch, 1)).astype(token.np_dtype)
        if batch <= args.cpu_max_batch:
            record("cpu", batch, _server_batch(cpu, "host", batch, ids))
            record("cpu-device", batch, _server_batch(cpu, "device", batch, ids))
        if cuda is not None:
            record("cuda-host", batch, _server_batch(cuda, "host", batch, ids))
            record("cuda-slab", batch, _server_batch(cuda, "auto", batch, ids))
            record("cuda-resident", batch, _ping_pong(ort, cuda, batch, ids))

    header = f"onnxruntime {ort.__version__}; providers: {cuda.session.get_providers() if cuda else ['CPU only']}"
    header += f"; max |diff| over 20 carried steps against cpu/host slabs: cpu/device slabs {_served_parity((cpu, 'host'), (cpu, 'device')):.2e}"
    if cuda is not None:
        header += f", cuda/device slabs {_served_parity((cpu, 'host'), (cuda, 'auto')):.2e} (TF32 off)"
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    lines = [header, "", "| batch | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for batch in sorted({r["batch"] for r in rows}):
        cells = []
        for variant in variants:
            hit = next((r for r in rows if r["batch"] == batch and r["variant"] == variant), None)
            cells.append(f"{hit['steps_per_s']:,} ({hit['ms_per_call']:.3f} ms)" if hit else "")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
