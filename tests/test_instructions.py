"""loadtest.instructions counts what a step executes under callgrind (the real valgrind).

A tiny Python child stands in for the harness (which takes minutes under valgrind): a loop of
N iterations on the main thread, and optionally W on a second thread. Two runs at different N
give the instructions of an iteration, start-up cancelled; the main thread's count leaves the
other thread's work out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loadtest import instructions
from loadtest.instructions import count, main_thread_count, per_step
from service.command import CommandError

#: The main thread runs N iterations of ``work`` after a second thread ran W; an iteration sums BODY numbers.
CHILD = """
import sys, threading
n, w, body = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def work(k):
    total = 0
    for i in range(k):
        total += sum(range(1_000, 1_000 + body))  # above the small ints Python keeps: each one made
worker = threading.Thread(target=work, args=(w,))
worker.start()
worker.join()
work(n)
"""


def child(iterations: int, on_thread: int = 0, body: int = 1) -> int:
    return count([sys.executable, "-c", CHILD, str(iterations), str(on_thread), str(body)])


@pytest.fixture(scope="module")
def one_body() -> float:
    """Instructions of one iteration that sums one number (two runs, 20,000 iterations apart)."""
    return per_step("", child(1_000), child(21_000), 20_000).loop


def test_an_iteration_costs_the_same_whatever_the_runs_and_its_count_grows_with_its_work(one_body: float) -> None:
    assert one_body > 50  # a Python loop iteration is tens of instructions, at least
    again = per_step("", child(2_000), child(12_000), 10_000).loop
    assert again == pytest.approx(one_body, rel=0.05)  # start-up cancels: another pair of runs agrees
    by_body = [per_step("", child(1_000, body=b), child(4_000, body=b), 3_000).loop for b in (100, 200, 300)]
    assert by_body[0] > one_body
    assert by_body[2] - by_body[1] == pytest.approx(by_body[1] - by_body[0], rel=0.05)  # 100 more numbers, alike


def test_the_loop_thread_is_counted_apart_from_the_others(one_body: float) -> None:
    alone, beside, after = child(1_000), child(1_000, on_thread=20_000), child(21_000)
    assert beside == pytest.approx(alone, rel=0.01)  # 20,000 iterations on another thread: not counted
    assert after - alone > 0.9 * 20_000 * one_body  # the same 20,000 on the main thread: counted


def test_a_child_that_fails_under_valgrind_is_one_error_naming_it() -> None:
    with pytest.raises(CommandError, match=r"failed under valgrind: .*ZeroDivisionError"):
        count([sys.executable, "-c", "1 / 0"])


def test_a_folder_without_the_main_threads_count_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "callgrind.out.7-02").write_text("events: Ir\nsummary: 5\n")
    with pytest.raises(CommandError, match="no count for one main thread"):
        main_thread_count(tmp_path)
    (tmp_path / "callgrind.out.7-01").write_text("events: Ir\n")
    with pytest.raises(CommandError, match="holds no instruction count"):
        main_thread_count(tmp_path)
    (tmp_path / "callgrind.out.7-01").write_text("events: Ir\nsummary: 3\n")
    assert main_thread_count(tmp_path) == 3


def test_the_harness_runs_one_round_of_one_variant_at_the_given_steps() -> None:
    argv = instructions.harness("K=16", 40, ["--streams", "8"])
    assert argv[1:] == [
        "-m",
        "loadtest.durable_hotpath",
        "--variants",
        "K=16",
        "--rounds",
        "1",
        "--steps",
        "40",
        "--streams",
        "8",
    ]
