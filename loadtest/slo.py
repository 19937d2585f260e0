"""Headless Locust run against a server it starts itself, checked against latency SLOs.

    python -m loadtest.slo --users 12 --run-time 30s
    python -m loadtest.slo --users 8 --run-time 5s --slo step=50 --slo generate_32=500 --json

It starts ``statestream serve`` on 127.0.0.1 (stopped by its PID at the end), runs the users of
``loadtest/locustfile.py`` headless for a bounded time, reads Locust's CSV statistics and prints
one row per request name: count, failures, requests/s, p50 and p99 (ms), and the SLO verdict.
It exits 1 when any request failed or any p99 exceeds its SLO. The defaults are generous for a
shared 2-core machine where the load generator competes with the server for the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.servers import ServerProcess, serve_command

ROOT = Path(__file__).resolve().parent.parent
#: p99 latency objectives in milliseconds, per request name.
DEFAULT_SLO_MS = {
    "step": 100.0,
    "chunk16": 150.0,
    "generate_first_token": 200.0,
    "generate_32": 1000.0,
    "multiplex64": 250.0,
    "complete": 300.0,  # a noisy letter swept to a fixed point (a few one-sweep model calls)
}


@dataclass
class Row:
    name: str
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    slo_p99_ms: float | None
    ok: bool


def parse_slo(items: list[str]) -> dict[str, float]:
    slo = dict(DEFAULT_SLO_MS)
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"--slo takes NAME=MS, got {item!r}")
        slo[name] = float(value)
    return slo


def read_stats(path: Path, slo: dict[str, float]) -> list[Row]:
    rows = []
    with path.open() as handle:
        for record in csv.DictReader(handle):
            if record["Name"] == "Aggregated":
                continue
            p99 = float(record["99%"] or 0)
            failures = int(record["Failure Count"])
            limit = slo.get(record["Name"])
            rows.append(
                Row(
                    name=record["Name"],
                    requests=int(record["Request Count"]),
                    failures=failures,
                    requests_per_s=float(record["Requests/s"]),
                    p50_ms=float(record["50%"] or 0),
                    p99_ms=p99,
                    slo_p99_ms=limit,
                    ok=failures == 0 and (limit is None or p99 <= limit),
                )
            )
    return rows


def run(users: int, run_time: str, models_dir: Path, slo: dict[str, float]) -> list[Row]:
    with (
        ServerProcess("statestream", serve_command(models_dir, "batched")) as server,
        tempfile.TemporaryDirectory() as work,
    ):
        prefix = Path(work) / "locust"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtest" / "locustfile.py"),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                run_time,
                "-H",
                server.target,
                "--csv",
                str(prefix),
                "--only-summary",
                "--loglevel",
                "WARNING",
                "--exit-code-on-error",
                "0",
                "--stop-timeout",
                "5",
            ],
            check=True,
            cwd=ROOT,
            timeout=600,
        )
        return read_stats(Path(f"{prefix}_stats.csv"), slo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.slo", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=12, help="concurrent Locust users (default 12)")
    parser.add_argument("--run-time", default="30s", help="Locust run time, e.g. 30s or 2m (default 30s)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--slo", action="append", default=[], metavar="NAME=MS", help="p99 objective per request name")
    parser.add_argument("--json", action="store_true", help="one JSON line per request name")
    args = parser.parse_args(argv)
    rows = run(args.users, args.run_time, args.models_dir, parse_slo(args.slo))
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    else:
        print(f"{'request':<22}{'count':>8}{'fail':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'SLO p99':>9}  ok")
        for r in rows:
            slo_text = f"{r.slo_p99_ms:.0f}" if r.slo_p99_ms is not None else "-"
            print(
                f"{r.name:<22}{r.requests:>8}{r.failures:>6}{r.requests_per_s:>9.1f}{r.p50_ms:>9.1f}"
                f"{r.p99_ms:>9.1f}{slo_text:>9}  {'yes' if r.ok else 'NO'}"
            )
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
