"""The bench's noise guard: was the machine quiet enough for a run's targets to mean anything?

A ratio measured while other work runs on the same cores says more about that work than about
the servers, so every ``statestream bench`` mode reads the machine before and after its run: the
load average (/proc/loadavg) and the CPU time stolen by the hypervisor (the ``steal`` column of
/proc/stat's ``cpu`` line, as a share of all CPU time between the two readings). When the 1-min
load before the run is above half the machine's cores, every target of the run is marked
"not judged: machine busy" instead of met or missed. The parsers take the files' text, so they
are tested on fixed strings; ``PROC`` is where the files are read from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.cells import Target

PROC = Path("/proc")
#: Why a target is not judged when the machine was busy before the run.
BUSY = "machine busy"


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time so far, all CPUs together, in clock ticks (/proc/stat's ``cpu`` line)."""

    total: int  # every state: user, nice, system, idle, iowait, irq, softirq, steal
    steal: int  # time a virtual CPU waited while the hypervisor ran something else


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages from /proc/loadavg's text."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"not a /proc/loadavg line: {text!r}")
    return float(fields[0]), float(fields[1]), float(fields[2])


def parse_cpu_times(stat: str) -> CpuTimes | None:
    """The all-CPU ``cpu`` line of /proc/stat's text; None where it has no steal column (kernels < 2.6.11).

    Columns: user nice system idle iowait irq softirq steal guest guest_nice. Guest time is
    already counted in user and nice (proc(5)), so the total stops at steal.
    """
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(field) for field in fields[1:9]]
            return CpuTimes(sum(ticks), ticks[7]) if len(ticks) == 8 else None
    raise ValueError("no 'cpu' line in /proc/stat's text")


@dataclass(frozen=True)
class Reading:
    """The machine at one moment: its load averages and CPU times (None where /proc has none)."""

    load: tuple[float, float, float]
    cpu: CpuTimes | None

    def to_json(self) -> dict[str, float]:
        return {"load_1m": self.load[0], "load_5m": self.load[1], "load_15m": self.load[2]}

    def describe(self) -> str:
        return "load {:.2f} / {:.2f} / {:.2f} (1, 5, 15 min)".format(*self.load)


def read_machine() -> Reading:
    """The machine now, from ``PROC``; without /proc (not Linux), the OS's load and no CPU times."""
    try:
        load = parse_loadavg((PROC / "loadavg").read_text())
        cpu = parse_cpu_times((PROC / "stat").read_text())
    except FileNotFoundError:
        return Reading(os.getloadavg(), None)
    return Reading(load, cpu)


def steal_share(before: CpuTimes | None, after: CpuTimes | None) -> float:
    """Stolen CPU time as a share of all CPU time between two readings (NaN where unknown)."""
    if before is None or after is None or after.total <= before.total:
        return math.nan
    return (after.steal - before.steal) / (after.total - before.total)


def is_busy(reading: Reading, cores: int) -> bool:
    """Busy: a 1-min load above half the machine's cores."""
    return reading.load[0] > cores / 2


def machine_cores() -> int:
    """The machine's CPUs: the load average counts runnable tasks of the whole machine, not ours."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class RunWindow:
    """A run between two readings of the machine, and whether its targets may be judged."""

    cores: int
    before: Reading
    after: Reading

    @property
    def busy_above(self) -> float:
        """The 1-min load before the run above which the machine is busy: half its cores."""
        return self.cores / 2

    @property
    def busy(self) -> bool:
        return is_busy(self.before, self.cores)

    @property
    def steal_share(self) -> float:
        return steal_share(self.before.cpu, self.after.cpu)

    def judge(self, targets: list[Target]) -> list[Target]:
        """The targets as this run may report them: none judged on a busy machine."""
        if not self.busy:
            return targets
        return [replace(target, not_judged=target.not_judged or BUSY) for target in targets]

    def describe(self) -> str:
        steal = "unknown" if math.isnan(self.steal_share) else f"{100 * self.steal_share:.1f} %"
        verdict = (
            f"busy (1-min load {self.before.load[0]:.2f} > {self.busy_above:g}): targets not judged"
            if self.busy
            else f"quiet (1-min load {self.before.load[0]:.2f} <= {self.busy_above:g}): targets judged"
        )
        return (
            f"machine: {self.cores} cores; busy when the 1-min load before the run is above half of them\n"
            f"  before the run: {self.before.describe()}\n"
            f"  after the run:  {self.after.describe()}; steal {steal} of CPU time during the run\n"
            f"  {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        steal = self.steal_share
        return {
            "kind": "machine",
            "cores": self.cores,
            "busy_above_load_1m": self.busy_above,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "steal_share": None if math.isnan(steal) else round(steal, 4),
            "busy": self.busy,
            "targets_judged": not self.busy,
        }


class NoiseGuard:
    """Reads the machine when made (and logs it) and again at ``finish``: one per bench run."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.cores = machine_cores()
        self.before = read_machine()
        log(
            f"machine before the run: {self.before.describe()} on {self.cores} cores"
            + (": busy, the targets will not be judged" if is_busy(self.before, self.cores) else "")
        )

    def finish(self) -> RunWindow:
        return RunWindow(self.cores, self.before, read_machine())
