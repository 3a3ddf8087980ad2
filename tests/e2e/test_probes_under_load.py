"""Readiness and liveness hold on a saturated system: every server is probed as the kubelet probes it
(a new connection per probe, the manifests' own timeout) while the gateway is driven well past its
capacity. A probe that failed here would, `failureThreshold` times in a row, pull a busy pod out of
its Service (readiness) or restart it (liveness) -- exactly when its neighbours need it."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from gateway.bench.load import closed_loop, gateway_channel, open_loop, recommend_sender
from gateway.bench.probes import Prober, ProbeTarget
from gateway.bench.workload import build_requests
from pmis.v1 import gateway_pb2_grpc
from services.common.tls import ClientTLS
from services.components import SERVICE_NAMES, SERVERS
from services.launcher import Cluster, Ports
from tests.support.k8s import validate

OVERLOAD = 2.5  # x the rate the system answers in a closed loop on this machine
SECONDS = 8
KUBELET_DEFAULT_TIMEOUT = 1  # seconds, when a probe sets no timeoutSeconds


def manifest_probes() -> dict[str, list[tuple[str, int, int]]]:
    """Server -> [(probe kind, timeoutSeconds, failureThreshold)] of its container in k8s/base."""
    out: dict[str, list] = {}
    for obj in validate.plain_objects("base"):
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        out[obj["metadata"]["name"]] = [
            (kind, container[kind].get("timeoutSeconds", KUBELET_DEFAULT_TIMEOUT), container[kind].get("failureThreshold", 3))
            for kind in ("readinessProbe", "livenessProbe") if kind in container]
    return out


@pytest.fixture()
def cluster(small_system, tmp_path):
    c = Cluster(tmp_path, small_system.bundles, small_system.catalog, Ports.any(), log_dir=tmp_path / "logs")
    try:
        c.start_all(timeout=90)
        yield c
    finally:
        c.stop_all()


async def capacity(target: str, requests: list) -> float:
    """Answers per second of a short closed loop at concurrency 16: what this machine serves."""
    async with gateway_channel(target, ClientTLS()) as channel:
        send = recommend_sender(gateway_pb2_grpc.RecommendationGatewayStub(channel), deadline=2.0)
        outcomes, elapsed = await closed_loop(send, itertools.cycle(requests).__next__, 16, 2.0)
    return sum(o.code == "OK" for o in outcomes) / elapsed


async def overload(target: str, requests: list, rate: float) -> Counter:
    async with gateway_channel(target, ClientTLS()) as channel:
        send = recommend_sender(gateway_pb2_grpc.RecommendationGatewayStub(channel), deadline=2.0)
        outcomes, _, _ = await open_loop(send, itertools.cycle(requests).__next__, rate, SECONDS)
    return Counter(o.code for o in outcomes)


def test_probes_pass_on_every_server_while_the_gateway_sheds_load(cluster, small_system):
    probes = manifest_probes()
    assert set(probes) == set(SERVERS), probes
    timeout = min(t for kinds in probes.values() for _, t, _ in kinds)  # the strictest probe of any server
    targets = [ProbeTarget(name, cluster.ports.target(name), SERVICE_NAMES[name]) for name in SERVERS]
    prober = Prober(targets, period=0.25, timeout=timeout)
    requests = build_requests(small_system.catalog, k=10, explain=True, profile_only=False)

    gateway = cluster.ports.target("gateway")
    rate = OVERLOAD * asyncio.run(capacity(gateway, requests))
    prober.start()
    codes = asyncio.run(overload(gateway, requests, rate))
    summaries = {s["server"]: s for s in prober.stop()}

    # saturated: the gateway refused part of the load (and answered the rest)
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, (rate, codes)
    for name, s in summaries.items():
        assert s["probes"] >= SECONDS * 2, s  # probed throughout
        assert s["failed"] == 0, (name, s, codes)
        assert s["max_ms"] < timeout * 1000, (name, s)
        for kind, _, threshold in probes[name]:
            assert s["longest_failure_run"] < threshold, (name, kind, s)
