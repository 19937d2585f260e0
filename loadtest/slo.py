"""Headless Locust run against a server it starts itself, checked against latency SLOs.

    statestream loadtest --run-time 30s
    statestream loadtest --users 8 --run-time 5s --slo step=50 --slo generate_32=500 --json

It starts ``statestream serve`` on 127.0.0.1 (stopped by its PID at the end), runs the users of
``loadtest/locustfile.py`` headless for a bounded time, and prints one row per request name the
users declare (``loadtest.workloads``): count, failures, requests/s, p50 and p99 (ms), and the
verdict against its p99 objective. The rows are Locust's final statistics, written after the
last user stopped, so they count what Locust counted. It exits 1 when any request failed, any
p99 exceeds its objective, or an objective got no requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.flags import Objective, RunTime
from loadtest.servers import ServerProcess, serve_command, stopping_children_on_sigterm
from loadtest.workloads import Workload, declared
from service import command
from service.command import EXIT_USAGE, CommandError, Parser, float_in, int_in, nonempty_path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
#: Seconds Locust gives a user to finish its task when the run ends.
STOP_TIMEOUT_S = 5


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


def percentile_ms(response_times: Mapping[float, int], fraction: float) -> float:
    """The response time ``fraction`` of the requests finished within, by Locust's own rule (so a
    row reads what Locust's tables would): walk down from the slowest bucket until no more than
    ``fraction`` of the requests are left."""
    total = sum(response_times.values())
    within = int(total * fraction)
    seen = 0
    for ms in sorted(response_times, reverse=True):
        seen += response_times[ms]
        if total - seen <= within:
            return ms
    return 0.0


def read_stats(path: Path, slo: Mapping[str, float]) -> list[Row]:
    """One row per request name of Locust's final statistics (``--json-file``: its entries, each
    with its histogram of response times in ms)."""
    entries = json.loads(path.read_text())
    if not entries:
        return []
    started = min(entry["start_time"] for entry in entries)
    ended = max(entry["last_request_timestamp"] or started for entry in entries)
    span_s = ended - started
    rows = []
    for entry in entries:
        times = {float(ms): int(count) for ms, count in entry["response_times"].items()}
        p99, failures, limit = percentile_ms(times, 0.99), int(entry["num_failures"]), slo.get(entry["name"])
        rows.append(
            Row(
                name=entry["name"],
                requests=int(entry["num_requests"]),
                failures=failures,
                requests_per_s=entry["num_requests"] / span_s if span_s > 0 else 0.0,
                p50_ms=percentile_ms(times, 0.5),
                p99_ms=p99,
                slo_p99_ms=limit,
                ok=failures == 0 and (limit is None or p99 <= limit),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def run_locust(locustfile: Path, users: int, run_time_s: int, host: str, work: Path) -> Path:
    """Runs ``locustfile``'s users headless against ``host``; returns the file of Locust's final
    statistics. Locust prints no tables of its own: the caller's table is the one."""
    prefix = work / "locust"
    subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(locustfile), "--headless"),
            *("-u", str(users), "-r", str(users), "-t", f"{run_time_s}s", "-H", host),
            *("--json-file", str(prefix), "--only-summary", "--loglevel", "WARNING"),
            *("--exit-code-on-error", "0", "--stop-timeout", str(STOP_TIMEOUT_S)),
        ],
        check=True,
        cwd=ROOT,
        timeout=run_time_s + STOP_TIMEOUT_S + 120,
    )
    return Path(f"{prefix}.json")


def run(users: int, run_time_s: int, models_dir: Path, slo: Mapping[str, float]) -> list[Row]:
    with (
        ServerProcess("statestream", serve_command(models_dir, "batched")) as server,
        tempfile.TemporaryDirectory() as work,
    ):
        return read_stats(run_locust(LOCUSTFILE, users, run_time_s, server.target, Path(work)), slo)


def not_run(rows: list[Row], slo: Mapping[str, float]) -> list[Row]:
    """A failing row for each request name with an objective that got no requests at all.

    A name has no row in Locust's statistics when no user of its class ran (Locust shares the
    users among the classes by weight, so fewer users than the weights add up to leave classes
    out) or the run ended before its first request. An objective nobody measured is not met.
    """
    seen = {row.name for row in rows}
    return [Row(name, 0, 0, 0.0, 0.0, 0.0, limit, False) for name, limit in sorted(slo.items()) if name not in seen]


def objectives(workloads: Sequence[Workload], overrides: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each request name's p99 objective in ms: the users' own, then ``--slo``'s."""
    slo = {name: limit for each in workloads for name, limit in each.slo_ms.items()}
    for name, limit in overrides:
        if name not in slo:
            raise CommandError(f"--slo {name}: no Locust user reports it; known: {', '.join(sorted(slo))}", EXIT_USAGE)
        slo[name] = limit
    return slo


def format_table(rows: Sequence[Row], users_for_all: int) -> str:
    lines = [f"{'request':<22}{'count':>8}{'fail':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'SLO p99':>9}  ok"]
    for r in rows:
        slo_text = f"{r.slo_p99_ms:.0f}" if r.slo_p99_ms is not None else "-"
        if not r.requests:
            lines.append(f"{r.name:<22}{0:>8}{'-':>6}{'-':>9}{'-':>9}{'-':>9}{slo_text:>9}  NO (not run)")
            continue
        lines.append(
            f"{r.name:<22}{r.requests:>8}{r.failures:>6}{r.requests_per_s:>9.1f}{r.p50_ms:>9.1f}"
            f"{r.p99_ms:>9.1f}{slo_text:>9}  {'yes' if r.ok else 'NO'}"
        )
    if any(not r.requests for r in rows):
        lines.append(
            f"not run: no user of that class ran, or the run ended first (use {users_for_all}+ users and a few seconds)"
        )
    return "\n".join(lines)


def parser() -> Parser:
    parser = Parser(
        prog="statestream loadtest",
        description="Start a server on the shipped models, run Locust users of every workload against it\n"
        "headless, and check each request's p99 latency against its objective. Exit 1 on a miss,\n"
        "a failure, or a request name with no requests.",
    )
    parser.add_argument(
        "--users",
        type=int_in(1, 1000),
        help="concurrent Locust users (default: the user classes' weights added up, the fewest that run every class)",
    )
    parser.add_argument(
        "--run-time", type=RunTime(int_in(1, 86400)), default="30s", help="Locust run time, e.g. 30s, 2m or 1h30m"
    )
    parser.add_argument(
        "--models-dir", type=nonempty_path, default=ROOT / "models", help="models folder the server serves"
    )
    parser.add_argument(
        "--slo",
        type=Objective(float_in(0.1, 600_000)),
        action="append",
        default=[],
        metavar="NAME=MS",
        help="p99 objective in ms for a request name, repeatable (default: each Locust user's own; the table shows them)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per request name")
    return parser


@stopping_children_on_sigterm
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.models_dir.is_dir():
        raise CommandError(f"--models-dir {args.models_dir} is not a folder", EXIT_USAGE)
    workloads = declared()
    slo = objectives(workloads, args.slo)
    missing = sorted({w.model for w in workloads if not (args.models_dir / w.model / "manifest.json").is_file()})
    if missing:
        raise CommandError(f"--models-dir {args.models_dir} lacks the models the Locust users drive: {missing}")
    users_for_all = sum(w.weight for w in workloads)
    rows = run(args.users or users_for_all, args.run_time, args.models_dir, slo)
    rows += not_run(rows, slo)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    else:
        print(format_table(rows, users_for_all))
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
