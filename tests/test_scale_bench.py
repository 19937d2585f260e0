"""``statestream bench --scale``: which arrangements it measures and how it judges the scaling target."""

from __future__ import annotations

import math
from typing import Any

from loadtest.cells import Row
from loadtest.front import envoy_config
from loadtest.scale import BY_ROUND, SCALE_STREAMS, scale_targets, schedule, setups
from service.client.sdk import ROUTE_HEADER


def row(name: str, streams: int, steps_per_s: float) -> Row:
    return Row(name, streams, 1, steps_per_s, steps_per_s, 1.0, 2.0)


def test_every_worker_count_up_to_the_cores_is_measured_with_the_references() -> None:
    names = [s.name for s in setups(3)]
    # In the order a round runs them: direct beside the store rows, workers 1 beside workers 2.
    assert names == ["store K=16", "store K=1", "direct", "workers 1", "workers 2", "workers 3",
                     "envoy 1", "envoy 2", "envoy 3"]  # fmt: skip


def test_direct_and_the_store_rows_run_together_and_take_turns_cell_by_cell() -> None:
    first, second = schedule(setups(2), 2)

    def names(stages: list[Any]) -> list[tuple[list[str], list[str]]]:
        return [([s.name for s in stage.setups], [f"{s.name}@{n}" for s, n in stage.cells]) for stage in stages]

    assert names(first) == [
        (["store K=16", "store K=1", "direct"],
         ["store K=16@256", "store K=1@256", "direct@256", "direct@1024", "store K=1@1024", "store K=16@1024"]),
        (["workers 1"], ["workers 1@256", "workers 1@1024"]),
        (["workers 2"], ["workers 2@256", "workers 2@1024"]),
        (["envoy 1"], ["envoy 1@256", "envoy 1@1024"]),
        (["envoy 2"], ["envoy 2@256", "envoy 2@1024"]),
    ]  # fmt: skip
    # The next round in reverse: the stages, and the members of the stage that runs together.
    assert names(second)[0] == (["envoy 2"], ["envoy 2@256", "envoy 2@1024"])
    assert names(second)[-1] == (
        ["direct", "store K=1", "store K=16"],
        ["direct@256", "store K=1@256", "store K=16@256", "store K=16@1024", "store K=1@1024", "direct@1024"],
    )
    # Every cell of every arrangement once a round.
    for stages in (first, second):
        cells = [cell for stage in stages for cell in stage.cells]
        assert sorted((s.name, n) for s, n in cells) == sorted((s.name, n) for s in setups(2) for n in SCALE_STREAMS)


def test_scaling_is_judged_only_where_the_load_generator_leaves_the_cores_free() -> None:
    rows = [row(f"workers {w}", n, 1000.0 * (w * 0.8 if w > 1 else 1)) for w in (1, 2, 3) for n in SCALE_STREAMS]
    targets = {t.name: t for t in scale_targets(rows, cores=4)}
    judged = targets["workers_2_scaling_n256"]  # 4 cores, 1 load process at N=256: 3 free
    assert math.isclose(judged.value, 0.8) and judged.met
    unjudged = targets["workers_3_scaling_n1024"]  # 2 load processes at N=1024: 2 free for 3 workers
    assert math.isclose(unjudged.value, 0.8) and not unjudged.judged  # measured, shown, not judged
    assert unjudged.verdict == "not judged: 4 cores, 2 taken by the load generator, 2 free for 3 workers"
    assert unjudged.to_json()["met"] is None


def test_envoy_hashes_the_sdk_routing_header_and_checks_idle_replicas() -> None:
    config = envoy_config(("127.0.0.1", 8080), [("10.0.0.1", 50051), ("10.0.0.2", 50051)], 9901)
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["health_checks"][0]["no_traffic_interval"]
    assert "grpc_health_check" in cluster["health_checks"][0]
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["hash_policy"] == [{"header": {"header_name": ROUTE_HEADER}}]


def test_durability_is_judged_against_the_server_without_a_store() -> None:
    rows = [row("direct", n, 1000.0) for n in SCALE_STREAMS]
    rows += [row("store K=1", n, 790.0) for n in SCALE_STREAMS] + [row("store K=16", n, 960.0) for n in SCALE_STREAMS]
    targets = {t.name: t for t in scale_targets(rows, cores=2)}
    assert sorted(targets) == sorted(f"store_k{k}_vs_direct_n{n}" for k in (1, 16) for n in SCALE_STREAMS)
    k1, k16 = targets["store_k1_vs_direct_n256"], targets["store_k16_vs_direct_n1024"]
    assert math.isclose(k1.value, 0.79) and k1.threshold == 0.8 and k1.judged and not k1.met
    assert math.isclose(k16.value, 0.96) and k16.threshold == 0.95 and k16.met


def test_a_target_is_the_median_of_its_rounds_own_ratios_where_the_rounds_are_known() -> None:
    """Each round measures a pair side by side; the machine's drift between rounds must not count."""

    def rounds(name: str, n: int, by_round: list[float]) -> Row:
        measured = row(name, n, sorted(by_round)[1])
        measured.extra[BY_ROUND] = by_round
        return measured

    # The machine was fast in round 1 and slow in round 2; K = 1 kept 0.85 of direct in each.
    direct, k1 = [12000.0, 9000.0, 10500.0], [10200.0, 7650.0, 8925.0]
    rows = [rounds("direct", n, direct) for n in SCALE_STREAMS] + [rounds("store K=1", n, k1) for n in SCALE_STREAMS]
    rows += [rounds("workers 1", n, [1000.0, 600.0, 800.0]) for n in SCALE_STREAMS]
    rows += [rounds("workers 2", n, [1500.0, 900.0, 1360.0]) for n in SCALE_STREAMS]
    targets = {t.name: t for t in scale_targets(rows, cores=4)}
    k1_target = targets["store_k1_vs_direct_n256"]
    assert math.isclose(k1_target.value, 0.85) and k1_target.met
    assert k1_target.detail.endswith("; rounds 0.85, 0.85, 0.85")
    workers = targets["workers_2_scaling_n256"]  # rounds 0.75, 0.75, 0.85: median 0.75, not 1360 / 1600
    assert math.isclose(workers.value, 0.75) and workers.detail.endswith("; rounds 0.75, 0.75, 0.85")
    # Rows without their rounds (or of unequal counts) fall back to the ratio of their medians.
    rows[-1].extra[BY_ROUND] = [1500.0]  # workers 2 at 1,024 streams
    fallback = {t.name: t for t in scale_targets(rows, cores=4)}["workers_2_scaling_n1024"]
    assert math.isclose(fallback.value, 1360.0 / 1600.0) and "rounds" not in fallback.detail
