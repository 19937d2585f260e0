"""What a user sees of the shipped models does not change under a refactor: answers byte for byte.

``data/answers_before_issue25.txt.gz`` holds every serialized ``SessionResponse`` (hex, one per
line) of the script below, recorded against the server as it was before issue 25 moved the
session protocol into the engine (commit e649e7c): char_lm steps, a chunk and two seeded
generations; the captioner greedy, beam 3 and sampled on three generated scenes; and each
forecaster's steps, a rollout and a chunk (350 answers). Answers from a real server on the shipped models must
equal it exactly. A change that is meant to change answers (a retrained model, a new field)
records the file again: ``python -m tests.test_answers_unchanged HOST:PORT | gzip > FILE``.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
from pathlib import Path

import grpc
import numpy as np

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as pb_grpc
from service.datasets.scenes import write_scenes
from tests.conftest import ShippedServer

RECORDED = Path(__file__).parent / "data" / "answers_before_issue25.txt.gz"
STREAMED = ("run_output", "token")  # answers that come before a request's final one
FORECASTERS = ("laser", "mackey_glass", "mackey_glass_gru", "mackey_glass_adaptive")


def _tensor(name: str, values: np.ndarray) -> pb.Tensor:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pb.Tensor(name=name, dtype=pb.DATA_TYPE_FLOAT32, shape=list(values.shape), data=values.tobytes())


async def _stream(stub: pb_grpc.SessionServiceStub, requests: list[pb.SessionRequest]) -> list[str]:
    """Every answer after the opening one, as hex of its deterministic serialization."""
    call = stub.Session()
    answers = []
    for request in requests:
        await call.write(request)
        while True:
            response = await call.read()
            answers.append(response.SerializeToString(deterministic=True).hex())
            if response.WhichOneof("response") not in STREAMED:
                break
    await call.done_writing()
    return answers[1:]


def _char_lm_script() -> list[pb.SessionRequest]:
    text = "To be, or not to b"
    options = pb.SessionOptions(top_k=5, return_tensors=["logits"])
    requests = [pb.SessionRequest(open=pb.OpenSession(model="char_lm", options=options))]
    requests += [pb.SessionRequest(step=pb.Step(seq=i + 1, text=c)) for i, c in enumerate(text)]
    requests.append(pb.SessionRequest(step=pb.Step(seq=len(text) + 1, text="e, that is")))
    sampled = pb.Generate(seq=len(text) + 2, prompt=" the", max_tokens=60, temperature=0.8, seed=7)
    greedy = pb.Generate(seq=len(text) + 3, prompt="", max_tokens=30, temperature=0.0, seed=1)
    return [*requests, pb.SessionRequest(generate=sampled), pb.SessionRequest(generate=greedy)]


def _forecaster_script(model: str, series: np.ndarray) -> list[pb.SessionRequest]:
    requests = [pb.SessionRequest(open=pb.OpenSession(model=model, options=pb.SessionOptions()))]
    for i in range(40):
        tensors = pb.TensorInput(tensors=[_tensor("observation", series[i : i + 1].reshape(1, 1))])
        requests.append(pb.SessionRequest(step=pb.Step(seq=i + 1, tensors=tensors)))
    requests.append(pb.SessionRequest(run=pb.Run(seq=41, max_steps=5)))
    chunk = pb.TensorInput(tensors=[_tensor("observation", series[50:60].reshape(10, 1))])
    return [*requests, pb.SessionRequest(step=pb.Step(seq=42, tensors=chunk))]


async def record(target: str, scenes: Path) -> list[str]:
    """The script's answers from the server at ``target``, with section lines as in the recording."""
    list(write_scenes(scenes, "test", 3, 0))  # the scenes `statestream scenes --count 3` writes
    series = np.sin(np.arange(300) * 0.07).astype(np.float32)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
        lines = ["char_lm", *await _stream(stub, _char_lm_script())]
        for png in sorted(scenes.glob("*.png")):
            for options in (
                {"beam": 1.0, "temperature": 0.0},
                {"beam": 3.0, "temperature": 0.0},
                {"beam": 1.0, "temperature": 0.7},
            ):
                opened = pb.SessionRequest(
                    open=pb.OpenSession(model="captioner", init=pb.InitPayload(data=png.read_bytes()))
                )
                decode = pb.SessionRequest(run=pb.Run(seq=1, max_steps=32, options=options, seed=3))
                lines += [f"captioner {png.name}{options}", *await _stream(stub, [opened, decode])]
        for model in FORECASTERS:
            lines += [f"forecaster {model}", *await _stream(stub, _forecaster_script(model, series))]
    return lines


def _section(line: str) -> str:
    """A recorded section line, without the folder its scenes were written to then."""
    return "captioner " + line.rsplit("/", 1)[-1] if line.startswith("captioner ") else line


def test_the_shipped_models_answer_byte_for_byte_as_before(shipped_server: ShippedServer, tmp_path: Path) -> None:
    expected = [_section(line) for line in gzip.decompress(RECORDED.read_bytes()).decode().splitlines()]
    got = asyncio.run(record(shipped_server.target, tmp_path / "scenes"))
    assert len(got) == len(expected) == 364  # 350 answers under 14 section lines
    differing = [(i, e[:40]) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert differing == [], f"{len(differing)} answers differ, first at lines {differing[:5]}"


if __name__ == "__main__":  # records the file again (see the docstring)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print("\n".join(asyncio.run(record(sys.argv[1], Path(folder)))))
