"""A pretend /proc for the bench's noise guard: the load average a test chooses, a fixed ``cpu`` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import machine

#: /proc/stat as Linux writes it (two CPUs; ticks chosen by hand): total 9560, steal 30.
STAT = """cpu  1000 0 500 8000 10 0 20 30 0 0
cpu0 500 0 250 4000 5 0 10 15 0 0
cpu1 500 0 250 4000 5 0 10 15 0 0
intr 12345 0 0
ctxt 67890
"""


def write_proc(folder: Path, load_1m: float, stat: str = STAT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loadavg").write_text(f"{load_1m:.2f} 0.50 0.25 2/345 6789\n")
    (folder / "stat").write_text(stat)
    return folder


def pretend_machine(monkeypatch: pytest.MonkeyPatch, folder: Path, *, busy: bool) -> None:
    """The guard reads a machine whose 1-min load is twice its cores (busy) or 0 (quiet)."""
    load_1m = 2.0 * machine.machine_cores() if busy else 0.0
    monkeypatch.setattr(machine, "PROC", write_proc(folder, load_1m))
