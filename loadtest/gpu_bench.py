"""ONNX Runtime CUDA against CPU for the served model's step: where does the GPU pay off?

Run on a machine with onnxruntime-gpu and a GPU (``python -m loadtest.gpu_bench --out DIR``).
For each batch size it measures steps/s of:

* ``cpu``: the CPU provider with the server's options (1 thread, no spinning, IOBinding);
* ``cuda-host``: the CUDA provider fed numpy arrays: state goes host → device → host every call
  (what the server's CPU slabs cost on a GPU);
* ``cuda-resident``: state stays on the device: two sets of state OrtValues bound in ping-pong
  (the output of one call is the input of the next), only the token ids go in and the logits
  come out over the bus. This is the ceiling of device-resident slabs;
* ``cuda-slab``: device-resident slabs as a server would hold them: a ``[capacity, *shape]``
  CUDA tensor per state, the batch's rows gathered into the bound input and the new state
  scattered back by index on the device (torch ``index_select`` / ``index_copy_``; needs torch).

It writes ``gpu_bench.md`` (a table) and ``gpu_bench.jsonl`` into ``--out``. TF32 is off for
the parity check (``--tf32`` turns it on); the max |diff| of CUDA's logits against the CPU's over
a few carried steps is reported with the table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 16, 256, 1024, 4096, 16384)


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


def _bound_runner(session: Any, binding: Any) -> Callable[[], None]:
    return lambda: session.run_with_iobinding(binding)


def _plain_runner(session: Any, names: list[str], feed: dict[str, np.ndarray]) -> Callable[[], None]:
    return lambda: session.run(names, feed)


def _ping_pong_runner(session: Any, bindings: list[Any]) -> Callable[[], None]:
    """Alternates two bindings whose state outputs are each other's state inputs."""
    turn = [0]

    def run() -> None:
        session.run_with_iobinding(bindings[turn[0]])
        turn[0] ^= 1

    return run


def _slab_runner(
    torch: Any,
    session: Any,
    binding: Any,
    slabs: dict[str, Any],
    gathered: dict[str, Any],
    new: dict[str, Any],
    rows: Any,
) -> Callable[[], None]:
    """Gather rows of device slabs into the bound input, run, scatter the new state back by index."""

    def run() -> None:
        for name, slab in slabs.items():
            torch.index_select(slab, 0, rows, out=gathered[name])
        torch.cuda.synchronize()  # ORT runs on its own stream: the gather must be done
        session.run_with_iobinding(binding)
        for name, slab in slabs.items():
            slab.index_copy_(0, rows, new[name])

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/char_lm"))
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--duration-s", type=float, default=1.0)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--cpu-max-batch", type=int, default=1024, help="skip CPU rows above this batch")
    parser.add_argument("--tf32", action="store_true")
    args = parser.parse_args(argv)

    torch: Any
    try:  # torch first: its CUDA libraries are then found by onnxruntime-gpu
        import torch
    except ImportError:
        torch = None
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    from service.contract import Manifest
    from service.registry import session_options
    from service.settings import Settings

    manifest = Manifest.load(args.model)
    graph = str(args.model / manifest.step_graph)
    cpu = ort.InferenceSession(graph, session_options(Settings()), providers=["CPUExecutionProvider"])
    cuda_options: dict[str, Any] = {"use_tf32": "1" if args.tf32 else "0"}
    cuda = ort.InferenceSession(
        graph, session_options(Settings()), providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    )
    providers = cuda.get_providers()
    token = manifest.inputs[0]
    out_names = [t.name for t in manifest.outputs] + [s.output for s in manifest.state]
    rows: list[dict[str, Any]] = []

    def record(variant: str, batch: int, rate: tuple[float, float]) -> None:
        rows.append({"variant": variant, "batch": batch, "steps_per_s": round(rate[0]), "ms_per_call": rate[1]})
        print(json.dumps(rows[-1]), flush=True)

    # Parity: 20 carried steps at batch 4, CUDA against CPU.
    rng = np.random.default_rng(0)
    state_c = {s.input: np.zeros((4, *s.shape), s.np_dtype) for s in manifest.state}
    state_g = dict(state_c)
    worst = 0.0
    for _ in range(20):
        ids = rng.integers(0, len(manifest.vocabulary), size=(4, 1)).astype(token.np_dtype)
        rc = dict(zip(out_names, cpu.run(out_names, {token.name: ids, **state_c}), strict=True))
        rg = dict(zip(out_names, cuda.run(out_names, {token.name: ids, **state_g}), strict=True))
        worst = max(worst, float(np.max(np.abs(rc["logits"] - rg["logits"]))))
        state_c = {s.input: rc[s.output] for s in manifest.state}
        state_g = {s.input: rg[s.output] for s in manifest.state}

    for batch in (int(b) for b in args.batches.split(",")):
        ids = rng.integers(0, len(manifest.vocabulary), size=(batch, 1)).astype(token.np_dtype)
        state = {s.input: np.zeros((batch, *s.shape), s.np_dtype) for s in manifest.state}
        feed = {token.name: ids, **state}
        if batch <= args.cpu_max_batch:
            binding = cpu.io_binding()
            outs = {n: np.zeros((batch, 1, *t.shape), t.np_dtype) for n, t in ((t.name, t) for t in manifest.outputs)}
            outs.update({s.output: np.zeros((batch, *s.shape), s.np_dtype) for s in manifest.state})
            for name, array in feed.items():
                binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            for name, array in outs.items():
                binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            record("cpu", batch, _timed(_bound_runner(cpu, binding), args.duration_s, batch))
        record("cuda-host", batch, _timed(_plain_runner(cuda, out_names, feed), args.duration_s, batch))

        # Device-resident state in ping-pong: outputs of one call are the inputs of the next.
        sets = [
            {
                s.input: ort.OrtValue.ortvalue_from_shape_and_type([batch, *s.shape], s.np_dtype, "cuda", 0)
                for s in manifest.state
            }
            for _ in range(2)
        ]
        logits = np.zeros((batch, 1, *manifest.outputs[0].shape), manifest.outputs[0].np_dtype)
        bindings = []
        for i in range(2):
            b = cuda.io_binding()
            b.bind_cpu_input(token.name, ids)
            for s in manifest.state:
                b.bind_ortvalue_input(s.input, sets[i][s.input])
                b.bind_ortvalue_output(s.output, sets[1 - i][s.input])
            b.bind_output(manifest.outputs[0].name, "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
            bindings.append(b)
        record("cuda-resident", batch, _timed(_ping_pong_runner(cuda, bindings), args.duration_s, batch))

        if torch is not None and torch.cuda.is_available():
            capacity = max(2 * batch, 1024)
            slabs = {s.input: torch.zeros((capacity, *s.shape), device="cuda") for s in manifest.state}
            gathered = {s.input: torch.zeros((batch, *s.shape), device="cuda") for s in manifest.state}
            new = {s.input: torch.zeros((batch, *s.shape), device="cuda") for s in manifest.state}
            b = cuda.io_binding()
            b.bind_cpu_input(token.name, ids)
            for s in manifest.state:
                g, n = gathered[s.input], new[s.input]
                b.bind_input(s.input, "cuda", 0, np.float32, list(g.shape), g.data_ptr())
                b.bind_output(s.output, "cuda", 0, np.float32, list(n.shape), n.data_ptr())
            b.bind_output(manifest.outputs[0].name, "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
            rows_idx = torch.randperm(capacity, device="cuda")[:batch]
            runner = _slab_runner(torch, cuda, b, slabs, gathered, new, rows_idx)
            record("cuda-slab", batch, _timed(runner, args.duration_s, batch))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        f"providers: {providers}; TF32 {'on' if args.tf32 else 'off'}; CUDA vs CPU logits max |diff| over 20 "
        f"carried steps: {worst:.2e}",
        f"torch: {getattr(torch, '__version__', 'absent')}; onnxruntime: {ort.__version__}",
        "",
        "| batch | " + " | ".join(v for v in ("cpu", "cuda-host", "cuda-resident", "cuda-slab")) + " |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch in sorted({r["batch"] for r in rows}):
        cells = []
        for variant in ("cpu", "cuda-host", "cuda-resident", "cuda-slab"):
            hit = next((r for r in rows if r["batch"] == batch and r["variant"] == variant), None)
            cells.append(f"{hit['steps_per_s']:,} ({hit['ms_per_call']:.3f} ms)" if hit else "")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
