"""``python -m loadtest.revisions``: two revisions' store rows side by side, each serving its own code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loadtest import revisions
from loadtest.cells import Plan
from tests.conftest import SHIPPED_MODELS

REPOSITORY = Path(__file__).resolve().parent.parent


def test_a_child_in_the_base_worktree_imports_the_base_revisions_code() -> None:
    repository, commit = revisions.resolve("HEAD")
    assert repository == REPOSITORY
    with revisions.worktree(repository, commit) as base:
        assert (base / "service" / "__init__.py").is_file()
        assert revisions.imports_from(revisions.in_tree(base)) == base.resolve()
        assert revisions.imports_from({}) == REPOSITORY, "without it, the installed checkout"
    assert not base.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert str(base) not in listed.stdout, "the worktree is removed from git's list too"


def test_every_row_is_measured_each_round_in_turn_and_the_ratios_follow() -> None:
    comparison = revisions.Comparison(SHIPPED_MODELS, "lstm256", 1, 4, 2, Plan(warmup_s=0.1, duration_s=0.3))
    repository, commit = revisions.resolve("HEAD")
    with revisions.worktree(repository, commit) as base:
        results = revisions.compare(comparison, base)
    assert [(r.round, r.row) for r in results] == [
        (1, "direct"), (1, "base"), (1, "tree"), (2, "tree"), (2, "base"), (2, "direct")
    ]  # fmt: skip
    assert all(r.errors == 0 and r.steps_per_s > 0 for r in results)
    ratios = revisions.ratios(results)
    assert set(ratios) == {"base/direct", "tree/direct", "tree/base"} and all(len(v) == 2 for v in ratios.values())
    steps = {(r.round, r.row): r.steps_per_s for r in results}
    assert ratios["tree/base"][1] == pytest.approx(steps[(2, "tree")] / steps[(2, "base")])
    assert "| tree |" in revisions.table(results, 1, 4)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--base", "no-such-revision-here"], "--base no-such-revision-here: not a revision of this checkout"),
        (["--base", "HEAD", "--model", "nothing"], "no model folder 'nothing'"),
        (["--base", "HEAD", "--streams", "0"], "--streams"),
        (["--base", "HEAD", "--checkpoint-every", "x"], "--checkpoint-every"),
        (["--base", "HEAD", "--duration-s", "0"], "--duration-s"),
        ([], "the following arguments are required: --base"),
    ],
)
def test_the_comparison_refuses_what_it_cannot_run(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        revisions.main([*argv, "--models-dir", str(SHIPPED_MODELS)])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
