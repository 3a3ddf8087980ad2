"""What the component servicers' tests (tests/services/test_servicers_*.py, tests/gateway/test_batching.py) share:
each servicer on an in-process loopback server behind the servers' own guard interceptor
(services/common/guard.py), called through a real channel, and helpers that read its errors
down to the google.rpc BadRequest field names a client would see.

Fixtures (import them into the test module that uses them): `admin_token` (autouse: the admin
token the harness sends), `loaded` (the four servicers, loaded, one set per module),
`catalog_rows` (the small system's internship ids, interactions and selection rate) and
`known_student` (a catalog student with a collaborative history row).
"""

from __future__ import annotations

import sqlite3
from concurrent import futures
from contextlib import closing
from dataclasses import dataclass

import grpc
import pytest

from pmis.v1 import collaborative_pb2, common_pb2, content_pb2, ranker_pb2, success_pb2
from services.collaborative import server as collaborative_server
from services.common.errors import field_violations
from services.common.guard import ServerGuard
from services.common.server import ServerConfig
from services.content import server as content_server
from services.ranker import server as ranker_server
from services.success import server as success_server
from tests.support.loopback import SERVERS

COMPONENTS = {
    "content": (content_server, content_pb2, "ContentService"),
    "collaborative": (collaborative_server, collaborative_pb2, "CollaborativeService"),
    "success": (success_server, success_pb2, "SuccessService"),
    "ranker": (ranker_server, ranker_pb2, "RankerService"),
}
TIMEOUT = 30.0
ADMIN_TOKEN = "servicer-tests-admin-token"
# Reload is an admin RPC (services/common/auth.py): every call of the harness carries the token
# (read-only RPCs ignore it); the token-less and wrong-token cases are in tests/services/test_trainer_auth.py.
ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
APPLY, VIEW = common_pb2.EVENT_TYPE_APPLY, common_pb2.EVENT_TYPE_VIEW


# --------------------------------------------------------------------------- plumbing


@pytest.fixture(autouse=True)
def admin_token(monkeypatch):
    monkeypatch.setenv("PMIS_ADMIN_TOKEN", ADMIN_TOKEN)


def server_config(component: str, bundles) -> ServerConfig:
    return ServerConfig(component=component, host="127.0.0.1", port=0, metrics_port=0, bundles=bundles,
                        alias="champion", version=None, path=None, grace=0.5, drain=0.0, workers=2,
                        max_connection_age_ms=60_000)


class Harness:
    """One component servicer on a loopback server (port 0) behind the servers' own guard
    interceptor (status codes, safe decoding), called through a real channel."""

    def __init__(self, component: str, servicer):
        module, pb2, service_name = COMPONENTS[component]
        self.component, self.servicer = component, servicer
        self.service = pb2.DESCRIPTOR.services_by_name[service_name]
        self.server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[ServerGuard(component)])
        SERVERS[component][1](servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, method: str, request):
        """(response, trailing_metadata, code, details), as grpc_testing's termination()."""
        m = self.service.methods_by_name[method]
        call = self.channel.unary_unary(f"/{self.service.full_name}/{method}",
                                        request_serializer=lambda r: r.SerializeToString(),
                                        response_deserializer=m.output_type._concrete_class.FromString)
        try:
            response, rpc = call.with_call(request, timeout=TIMEOUT, metadata=ADMIN_METADATA)
            return response, rpc.trailing_metadata(), rpc.code(), rpc.details()
        except grpc.RpcError as e:
            return None, e.trailing_metadata(), e.code(), e.details()

    def ok(self, method: str, request):
        response, _, code, details = self.call(method, request)
        assert code == grpc.StatusCode.OK, details
        return response

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


class _FailedCall(grpc.RpcError):
    """What a real stub raises, rebuilt from grpc_testing's termination, for errors.field_violations."""

    def __init__(self, trailing_metadata, code, details):
        self._md, self._code, self._details = trailing_metadata, code, details

    def trailing_metadata(self):
        return self._md

    def code(self):
        return self._code

    def details(self):
        return self._details


def fails(harness: Harness, method: str, request, code: grpc.StatusCode) -> tuple[str, list[tuple[str, str]]]:
    """Call, assert the status code, return (details, field violations)."""
    response, trailing, got, details = harness.call(method, request)
    assert got == code, f"{method}: expected {code.name}, got {got} ({details})"
    assert response is None
    return details, field_violations(_FailedCall(trailing, got, details))


def bad_fields(harness: Harness, method: str, request) -> set[str]:
    details, violations = fails(harness, method, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert violations, f"INVALID_ARGUMENT without BadRequest details: {details}"
    for field, description in violations:
        assert field in details and description  # the message summarises the violations
    return {f for f, _ in violations}


@pytest.fixture(scope="module")
def loaded(small_system) -> dict[str, Harness]:
    out = {}
    for component, (module, _, _) in COMPONENTS.items():
        servicer = module.make_servicer(server_config(component, small_system.bundles))
        servicer.slot.load()
        out[component] = Harness(component, servicer)
    yield out
    for harness in out.values():
        harness.close()


@pytest.fixture(scope="module")
def catalog_rows(small_system):
    with closing(sqlite3.connect(small_system.catalog)) as c:
        internships = [r[0] for r in c.execute("SELECT internship_id FROM internships ORDER BY internship_id")]
        interactions = c.execute("SELECT student_id, internship_id, event FROM interactions "
                                 "ORDER BY timestamp").fetchall()
        outcomes = c.execute("SELECT AVG(selected) FROM outcomes").fetchone()[0]
    return {"internships": internships, "interactions": interactions, "selection_rate": outcomes}


@pytest.fixture(scope="module")
def known_student(loaded, catalog_rows) -> str:
    """A catalog student with interactions that the collaborative bundle holds a history row for."""
    model = loaded["collaborative"].servicer.slot.get().model.model
    with_interactions = dict.fromkeys(s for s, _, _ in catalog_rows["interactions"])
    for sid in with_interactions:
        row = model.user_index.get(sid)
        if row is not None and model.user_items[row].nnz > 0:
            return sid
    pytest.fail("no catalog student with a collaborative history row")


@dataclass
class Item:
    internship_id: str
    score: float
    popularity: float | None = None


def packed(resp) -> list[Item]:
    """A Retrieve/Score answer's packed arrays as one item per internship."""
    pops = list(resp.popularity) or [None] * len(resp.internship_ids)
    assert len(resp.scores) == len(resp.internship_ids) == len(pops)
    return [Item(i, s, p) for i, s, p in zip(resp.internship_ids, resp.scores, pops)]


def profile(**kw) -> common_pb2.StudentProfile:
    kw.setdefault("skills", ["python", "sql"])
    return common_pb2.StudentProfile(**kw)
