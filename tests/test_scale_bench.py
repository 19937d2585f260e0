"""``statestream bench --scale``: which arrangements it measures and how it judges the scaling target."""

from __future__ import annotations

import math

from loadtest.cells import Row
from loadtest.front import envoy_config
from loadtest.scale import SCALE_STREAMS, scale_targets, setups
from service.client.sdk import ROUTE_HEADER


def row(name: str, streams: int, steps_per_s: float) -> Row:
    return Row(name, streams, 1, steps_per_s, steps_per_s, 1.0, 2.0)


def test_every_worker_count_up_to_the_cores_is_measured_with_the_references() -> None:
    names = [s.name for s in setups(3)]
    assert names == ["direct", "workers 1", "workers 2", "workers 3", "envoy 1", "envoy 2", "envoy 3",
                     "store K=1", "store K=16"]  # fmt: skip


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
