"""The engine's keyed steps, driven directly (no gRPC): what the Open Inference Protocol's
request ids rely on. A key is applied once, as the next seq; its resend gets the first answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.engine import SessionEngine
from service.errors import InvalidArgument
from tests.conftest import OfflineLM
from tests.test_engine import CALLER, TOLERANCE, logits_of, open_request, run


def test_a_keyed_step_takes_the_next_seq_and_its_resent_key_is_not_applied_again(
    tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    async def scenario(engine: SessionEngine) -> tuple[list[bytes], bytes, bytes, int]:
        session = await engine.open(open_request(), CALLER)
        answers = [await engine.apply_step(session, pb.Step(text=ch), key=f"k{i}") for i, ch in enumerate("To")]
        resent = await engine.apply_step(session, pb.Step(text="x"), key="k1")  # what it carries is not read
        unkeyed = await engine.apply_step(session, pb.Step(text=" "), key="")  # no id: always the next seq
        answers.append(await engine.apply_step(session, pb.Step(text="b"), key="k3"))
        return answers, resent, unkeyed, session.last_seq

    answers, resent, unkeyed, last_seq = run(tiny_lm_dir, scenario)
    assert [pb.StepResult.FromString(a).seq for a in answers] == [1, 2, 4] and last_seq == 4
    duplicate = pb.StepResult.FromString(resent)
    assert duplicate.duplicate and duplicate.seq == 2
    np.testing.assert_array_equal(logits_of(resent), logits_of(answers[1]))
    np.testing.assert_allclose(
        np.concatenate([logits_of(a) for a in (answers[0], answers[1], unkeyed, answers[2])]),
        offline_lm.logits("To b"),
        atol=TOLERANCE,
        rtol=0,
    )


def test_a_refused_keyed_step_records_neither_its_seq_nor_its_key(tiny_lm_dir: Path) -> None:
    async def scenario(engine: SessionEngine) -> tuple[int, dict[str, int]]:
        session = await engine.open(open_request(), CALLER)
        await engine.apply_step(session, pb.Step(text="T"), key="a")
        with pytest.raises(InvalidArgument):
            await engine.apply_step(session, pb.Step(text="\u2603"), key="b")  # not in the vocabulary
        return session.last_seq, dict(session.keys)

    last_seq, keys = run(tiny_lm_dir, scenario)
    assert last_seq == 1 and keys == {"a": 1}
