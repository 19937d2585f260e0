"""Headless Locust run against a server it starts itself, checked against latency SLOs.

    statestream loadtest --users 12 --run-time 30s
    statestream loadtest --users 8 --run-time 5s --slo step=50 --slo generate_32=500 --json

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
from service import command
from service.command import EXIT_USAGE, CommandError, Parser, positive_int

ROOT = Path(__file__).resolve().parent.parent
#: p99 latency objectives in milliseconds, per request name.
DEFAULT_SLO_MS = {
    "step": 100.0,
    "chunk16": 150.0,
    "generate_first_token": 200.0,
    "generate_32": 1000.0,
    "multiplex64": 250.0,
    "complete": 300.0,  # a noisy letter swept to a fixed point (a few one-sweep model calls)
    "forecast_step": 100.0,  # one laser observation in, its next-step prediction back
    "rollout20": 300.0,  # a 20-step rollout on a copy of the session's row (19 model calls)
    "identify_frame": 100.0,  # one frame to the streaming speaker model, the running probabilities back
    "identify_utterance": 150.0,  # a whole utterance to the bidirectional speaker model, batched with others
    "caption": 500.0,  # a scene's greedy caption, 5-17 words each one decoder step, streamed
    "translate": 400.0,  # open a dates session (the encoder) and stream its ~11 decoded characters
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
        try:
            slo[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--slo {item!r}: {value!r} is not a number of milliseconds") from None
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


def not_run(rows: list[Row], slo: dict[str, float]) -> list[Row]:
    """A failing row for each request name with an objective that got no requests at all.

    A name has no row in Locust's statistics when no user of its class ran (Locust shares the
    users among the classes by weight, 4:1:1:1:1:1, so fewer than 9 users leave classes out) or the
    run ended before its first request. An objective nobody measured is not met.
    """
    seen = {row.name for row in rows}
    return [Row(name, 0, 0, 0.0, 0.0, 0.0, limit, False) for name, limit in sorted(slo.items()) if name not in seen]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="statestream loadtest",
        description="Start a server on the shipped models, run Locust users of every workload against it\n"
        "headless, and check each request's p99 latency against its objective. Exit 1 on a miss,\n"
        "a failure, or a request name with no requests.",
    )
    parser.add_argument(
        "--users", type=positive_int, default=12, help="concurrent Locust users; 9 or more run every user class"
    )
    parser.add_argument("--run-time", default="30s", help="Locust run time, e.g. 30s or 2m")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="models folder the server serves")
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="NAME=MS",
        help="p99 objective in ms for a request name, repeatable "
        f"(defaults: {', '.join(f'{k}={v:g}' for k, v in DEFAULT_SLO_MS.items())})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per request name")
    args = parser.parse_args(argv)
    try:
        slo = parse_slo(args.slo)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    rows = run(args.users, args.run_time, args.models_dir, slo)
    rows += not_run(rows, slo)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    else:
        print(f"{'request':<22}{'count':>8}{'fail':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'SLO p99':>9}  ok")
        for r in rows:
            slo_text = f"{r.slo_p99_ms:.0f}" if r.slo_p99_ms is not None else "-"
            if not r.requests:
                print(f"{r.name:<22}{0:>8}{'-':>6}{'-':>9}{'-':>9}{'-':>9}{slo_text:>9}  NO (not run)")
                continue
            print(
                f"{r.name:<22}{r.requests:>8}{r.failures:>6}{r.requests_per_s:>9.1f}{r.p50_ms:>9.1f}"
                f"{r.p99_ms:>9.1f}{slo_text:>9}  {'yes' if r.ok else 'NO'}"
            )
        if any(not r.requests for r in rows):
            print("not run: no user of that class ran, or the run ended first (use 9+ users and a few seconds)")
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
