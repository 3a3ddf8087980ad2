"""The gateway on the shared PostgreSQL catalog (gateway/catalog_postgres.py), against the real
server (tests/support/postgres.py): the same catalog contract as SQLite, two gateways on one
database, idempotent and durable RecordInteraction, and what happens when the database goes away.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import grpc
import numpy as np
import pytest

from gateway.catalog import SqliteCatalog
from gateway.catalog_postgres import PostgresCatalog
from models.data.postgres import connect, load_dataset
from pmis.v1 import common_pb2, gateway_pb2
from tests.support.gateway import COLD_PROFILE, students  # noqa: F401 - fixtures
from tests.support.loopback import TIMEOUT, Components, GatewayRunner
from tests.support.postgres import Scratch, with_search_path
from tests.support.tcp_proxy import TcpProxy

APPLY = common_pb2.EVENT_TYPE_APPLY
PLAIN = {"fairness_strength": 0.0}


@pytest.fixture(scope="module")
def database(small_system):
    """The small system's dataset loaded into a schema of this module's own."""
    scratch = Scratch()
    load_dataset(scratch.url, small_system.data, progress=False)
    yield scratch
    scratch.drop()


@pytest.fixture(scope="module")
def components(small_system):
    running = Components(small_system.bundles)
    yield running
    running.stop()


def _runner(components, small_system, url: str) -> GatewayRunner:
    return GatewayRunner(components.targets, small_system.catalog, database_url=url, **PLAIN)


def test_both_backends_read_the_same_catalog(small_system, database, students):
    lite, pg = SqliteCatalog(small_system.catalog), PostgresCatalog(database.url)
    try:
        a, b = lite.internships, pg.internships
        assert a.ids.tolist() == b.ids.tolist()
        for name in ("title", "company_id", "sector", "district", "state", "remote", "deadline", "applicants",
                     "selected", "msme"):
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
        for name in ("latitude", "longitude", "stipend", "slots"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert lite.latest_timestamp() == pg.latest_timestamp()
        for sid in [students["top"], *students["others"], "S9999999"]:
            assert lite.student(sid) == pg.student(sid)
            assert [tuple(r) for r in lite.interactions(sid)] == [tuple(r) for r in pg.interactions(sid)]
            assert lite.protected(sid) == pg.protected(sid)
        busiest = a.ids[int(np.argmax(a.applicants))]
        assert lite.applicants(busiest) == pg.applicants(busiest) and len(pg.applicants(busiest)) > 1
        assert lite.internship_skills(busiest) == pg.internship_skills(busiest)
        state = lite.student(students["top"])["state"]
        assert sorted(lite.students_in_state(state, 10_000)) == sorted(pg.students_in_state(state, 10_000))
    finally:
        pg.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_event_id_is_stored_once(backend, small_system, tmp_path, students):
    if backend == "sqlite":
        import shutil

        shutil.copyfile(small_system.catalog, tmp_path / "catalog.db")
        catalog, scratch = SqliteCatalog(tmp_path / "catalog.db"), None
    else:
        scratch = Scratch()
        load_dataset(scratch.url, small_system.data, progress=False)
        catalog = PostgresCatalog(scratch.url)
    try:
        sid, iid = students["top"], catalog.internships.ids[0]
        before, applicants = len(catalog.interactions(sid)), int(catalog.internships.applicants[0])
        assert catalog.record_interaction(sid, iid, "apply", 2_000_000_000, "evt-1") == (True, before + 1)
        assert catalog.record_interaction(sid, iid, "apply", 2_000_000_000, "evt-1") == (False, before + 1)
        assert catalog.record_interaction(sid, iid, "view", 2_000_000_001) == (True, before + 2)  # no id: stored
        assert int(catalog.internships.applicants[0]) == applicants + 1
        catalog.refresh()  # the database's own counters agree
        assert int(catalog.internships.applicants[0]) == applicants + 1
    finally:
        catalog.close()
        if scratch is not None:
            scratch.drop()


def test_an_interaction_through_one_gateway_changes_the_next_answer_of_another(components, small_system, database,
                                                                                 students):
    one, other = _runner(components, small_system, database.url), _runner(components, small_system, database.url)
    try:
        sid = students["others"][2]
        first = other.recommend(student_id=sid, k=5)
        applied = first.items[0].internship_id
        ack = one.stub.RecordInteraction(gateway_pb2.RecordInteractionRequest(
            student_id=sid, internship_id=applied, event=APPLY, event_id="two-replicas-1"), timeout=TIMEOUT)
        assert ack.recorded and not ack.duplicate
        after = other.recommend(student_id=sid, k=5)
        assert applied not in {it.internship_id for it in after.items} and len(after.items) == 5
        assert not after.degraded
    finally:
        one.close()
        other.close()


def test_a_retried_record_interaction_stores_one_row(components, small_system, database, students):
    gw = _runner(components, small_system, database.url)
    try:
        sid, iid = students["others"][0], gw.gateway.catalog.internships.ids[3]
        request = gateway_pb2.RecordInteractionRequest(student_id=sid, internship_id=iid, event=APPLY,
                                                       event_id="retry-me-1")
        first = gw.stub.RecordInteraction(request, timeout=TIMEOUT)
        again = gw.stub.RecordInteraction(request, timeout=TIMEOUT)
        assert first.recorded and not first.duplicate
        assert again.recorded and again.duplicate
        assert again.interactions_for_student == first.interactions_for_student
        with connect(database.url) as conn:
            assert conn.execute("SELECT count(*) FROM interactions WHERE event_id = 'retry-me-1'").fetchone()[0] == 1
        bad = gateway_pb2.RecordInteractionRequest(student_id=sid, internship_id=iid, event=APPLY, event_id="no spaces")
        with pytest.raises(grpc.RpcError) as e:
            gw.stub.RecordInteraction(bad, timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event_id" in e.value.details()
    finally:
        gw.close()


@pytest.fixture()
def behind_proxy(components, small_system):
    """A gateway whose database (a fresh load: the other tests' writes move the catalog's "now")
    is reached through a proxy the test can cut; and the database."""
    database = Scratch()
    load_dataset(database.url, small_system.data, progress=False)
    server = urlsplit(database.server)
    proxy = TcpProxy(server.hostname, server.port or 5432)
    url = with_search_path(database.server.replace(f"{server.hostname}:{server.port or 5432}",
                                                   f"127.0.0.1:{proxy.port}"), database.schema)
    gw = _runner(components, small_system, url)
    yield gw, proxy, database
    gw.close()
    proxy.down()
    database.drop()


def test_database_down_profile_answers_degraded_known_student_and_writes_unavailable(behind_proxy, students):
    gw, proxy, _ = behind_proxy
    sid = students["others"][1]
    assert not gw.recommend(student_id=sid, k=5).degraded
    proxy.down()
    cold = gw.recommend(profile=COLD_PROFILE, k=5)  # needs no database
    assert len(cold.items) == 5 and not cold.degraded
    with_id = gw.recommend(student_id=sid, profile=COLD_PROFILE, k=5)
    assert len(with_id.items) == 5 and "catalog" in with_id.degraded
    for call, request in (("Recommend", gateway_pb2.RecommendRequest(student_id=sid, k=5)),
                          ("RecordInteraction", gateway_pb2.RecordInteractionRequest(
                              student_id=sid, internship_id=gw.gateway.catalog.internships.ids[0], event=APPLY))):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            getattr(gw.stub, call)(request, timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, call
        assert "catalog database unreachable" in e.value.details()
        assert time.monotonic() - started < 5, f"{call} waited {time.monotonic() - started:.1f} s"
    proxy.up()
    deadline = time.monotonic() + 30
    while True:  # the pool reconnects on its own
        try:
            answer = gw.recommend(student_id=sid, k=5)
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            time.sleep(0.2)
    assert len(answer.items) == 5 and not answer.degraded


def test_a_database_outage_under_load_loses_no_acknowledged_interaction(behind_proxy, students):
    gw, proxy, database = behind_proxy
    sid, ids = students["others"][3], gw.gateway.catalog.internships.ids
    acknowledged, refused, stop = [], [], threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            event_id = f"outage-{n}-{i}"
            try:
                gw.stub.RecordInteraction(gateway_pb2.RecordInteractionRequest(
                    student_id=sid, internship_id=ids[i % len(ids)], event=common_pb2.EVENT_TYPE_VIEW,
                    event_id=event_id), timeout=TIMEOUT)
                acknowledged.append(event_id)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                refused.append(event_id)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    proxy.down()
    time.sleep(1.0)
    proxy.up()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acknowledged) > 20 and refused, (len(acknowledged), len(refused))
    with connect(database.url) as conn:
        stored = [r[0] for r in conn.execute("SELECT event_id FROM interactions WHERE event_id LIKE 'outage-%'")]
    assert len(stored) == len(set(stored))
    assert set(acknowledged) <= set(stored), f"{len(set(acknowledged) - set(stored))} acknowledged but not stored"
