"""``statestream client step``: stream tensors to a raw sequence model, one time step per message.

    statestream client step --model lstm256 --steps 5 --seed 1
    statestream client step --model lstm256 --input inputs.npz --json
    statestream client step --model gru --tensor x=@steps.npy

A ``sequence_model`` takes tensors and answers tensors, nothing decoded. The inputs are a file
(``.npy`` of ``[T, *shape]`` for a model with one input, or ``.npz`` with one such array per
input name, or ``--tensor NAME=@FILE.npy`` once per input) or, without either, ``--steps`` draws of a standard normal (seeded). Each step's
outputs are printed as they come: all their values with ``--json``, the first few otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.registry import command, served_model
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, positive_int, seed
from service.tensors import from_proto

DESCRIPTION = "stream tensors to a raw sequence model (a file's rows, or seeded random ones); print each step's outputs"
SHOWN_VALUES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, as 'statestream client models' lists it")
    parser.add_argument("--input", type=Path, help="a .npy [T, *shape] (one input) or .npz (an array per input name)")
    parser.add_argument(
        "--tensor",
        action="append",
        default=[],
        metavar="NAME=@FILE.npy",
        help="an input's [T, *shape] steps from a .npy file; once per input (instead of --input)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=10, help="random steps to stream when no --input is given"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seeds the random steps")


@command("step", DESCRIPTION, add_arguments, tasks=("sequence_model",))
def step(client: Client, args: argparse.Namespace) -> int:
    info = served_model(client, args)
    if args.input is not None and args.tensor:
        raise CommandError("give --input or --tensor, not both", EXIT_USAGE)
    if args.tensor:
        names = [text.partition("=@")[0] for text in args.tensor]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # dict() would keep the last one silently
            raise CommandError(f"--tensor {', '.join(twice)} given more than once: one file per input", EXIT_USAGE)
        inputs = _checked(dict(_read_tensor(text) for text in args.tensor), "--tensor", info)
    elif args.input is not None:
        inputs = _read_inputs(args.input, info)
    else:
        inputs = _random_inputs(info, args.steps, args.seed)
    steps = len(next(iter(inputs.values())))
    session = client.open(args.model, return_tensors=[t.name for t in info.outputs])
    try:
        for t in range(steps):
            result = session.step(tensors={name: values[t][None] for name, values in inputs.items()})
            outputs = {tensor.name: from_proto(tensor) for tensor in result.outputs[0].tensors}
            _show(result.seq, outputs, as_json=args.json)
    finally:  # a refused step (StepFailed) is reported by the client's one error path
        session.close()
    return 0


def _dtype(spec: pb.TensorInfo) -> np.dtype[np.generic]:
    return np.dtype(pb.DataType.Name(spec.dtype).removeprefix("DATA_TYPE_").lower())


def _random_inputs(info: pb.ModelInfo, steps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal((steps, *s.shape)).astype(_dtype(s)) for s in info.inputs}


def _load(path: Path, flag: str) -> np.ndarray | Any:
    try:
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise CommandError(f"{flag} {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except EOFError:  # numpy's word for an empty file
        raise CommandError(f"{flag} {path}: the file is empty", EXIT_USAGE) from None
    except ValueError:
        raise CommandError(f"{flag} {path}: not a .npy or .npz file of numbers", EXIT_USAGE) from None


def _read_tensor(text: str) -> tuple[str, np.ndarray]:
    """``NAME=@FILE.npy`` → the input's name and its steps."""
    name, sep, path = text.partition("=@")
    if not sep or not name or not path:
        raise CommandError(f"--tensor {text!r}: write NAME=@FILE.npy, e.g. x=@steps.npy", EXIT_USAGE)
    loaded = _load(Path(path), "--tensor")
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise CommandError(f"--tensor {text}: give a .npy file (one array); an .npz goes to --input", EXIT_USAGE)
    return name, loaded


def _read_inputs(path: Path, info: pb.ModelInfo) -> dict[str, np.ndarray]:
    """The file's arrays by input name, each ``[T, *shape]`` in the input's dtype; one line naming what is wrong."""
    loaded = _load(path, "--input")
    if isinstance(loaded, np.ndarray):
        if len(info.inputs) != 1:
            raise CommandError(f"--input {path}: {_needed(info)}", EXIT_USAGE)
        arrays = {info.inputs[0].name: loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    return _checked(arrays, f"--input {path}", info)


def _checked(arrays: dict[str, np.ndarray], given: str, info: pb.ModelInfo) -> dict[str, np.ndarray]:
    """One array per model input, each ``[T, *shape]`` with one T, in the input's dtype; else one line."""
    if sorted(arrays) != sorted(s.name for s in info.inputs):
        raise CommandError(f"{given} holds {sorted(arrays)}: {_needed(info)}", EXIT_USAGE)
    for spec in info.inputs:
        shape = arrays[spec.name].shape
        if shape[1:] != tuple(spec.shape) or not shape[0]:
            raise CommandError(f"{given}: {spec.name!r} is {list(shape)}, not {_steps_of(spec)}", EXIT_USAGE)
    if len({len(a) for a in arrays.values()}) != 1:
        raise CommandError(f"{given}: the inputs have different numbers of steps", EXIT_USAGE)
    return {s.name: arrays[s.name].astype(_dtype(s)) for s in info.inputs}


def _steps_of(spec: pb.TensorInfo) -> str:
    """``[T, 64]``: the shape of T steps of an input."""
    return "[" + ", ".join(["T", *map(str, spec.shape)]) + "]"


def _needed(info: pb.ModelInfo) -> str:
    """What the model's inputs need from a file."""
    shapes = ", ".join(f"{s.name} {_steps_of(s)}" for s in info.inputs)
    return f"the model takes {shapes}: a .npy for one input, a .npz of arrays named by input for several"


def _show(seq: int, outputs: dict[str, np.ndarray], *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps({"seq": seq, "outputs": {name: value.tolist() for name, value in outputs.items()}}), flush=True
        )
        return
    parts = []
    for name, value in outputs.items():
        flat = value.reshape(-1)
        shown = " ".join(f"{v:.4g}" for v in flat[:SHOWN_VALUES]) + (" ..." if flat.size > SHOWN_VALUES else "")
        parts.append(f"{name}{list(value.shape)}: {shown}")
    print(f"{seq:>4} " + "  ".join(parts), flush=True)
