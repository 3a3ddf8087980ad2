"""The servers' guard interceptor (services/common/guard.py): undecodable
requests are INVALID_ARGUMENT without exception text and logged once without a traceback; our
RpcErrors keep their status; a bug is INTERNAL without its text; every method kind is counted."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from pmis.v1 import common_pb2, content_pb2_grpc
from services.common import guard
from services.common.errors import invalid_argument
from tests.support.waiting import wait_until

SERVICE = "/pmis.v1.ContentService"
NOT_A_MESSAGE = b"\xff\xff\xff\xff\x0f"  # a varint that never ends


class Servicer(content_pb2_grpc.ContentServiceServicer):
    def Retrieve(self, request, context):
        if request.n == 1:
            raise invalid_argument([("n", "must be at least 2")])
        if request.n == 2:
            raise ZeroDivisionError("secret internal detail")
        return common_pb2.ScoredItems(internship_ids=["I1"], scores=[1.0])


def count(component: str, method: str, code: str) -> float:
    return REGISTRY.get_sample_value("pmis_grpc_requests_total",
                                     {"component": component, "method": method, "code": code}) or 0.0


def raw(channel: grpc.Channel, payload: bytes):
    return channel.unary_unary(f"{SERVICE}/Retrieve")(payload, timeout=10)


def retrieve(channel: grpc.Channel, n: int):
    stub = content_pb2_grpc.ContentServiceStub(channel)
    return stub.Retrieve(common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(skills=["x"]), n=n), timeout=10)


@pytest.fixture()
def server():
    """(channel, component label) of a ContentService behind the guard."""
    component = "guard-test"
    srv = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[guard.ServerGuard(component)],
                      options=guard.server_options())
    content_pb2_grpc.add_ContentServiceServicer_to_server(Servicer(), srv)
    checks = health.HealthServicer(experimental_non_blocking=True)
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, component
    finally:
        srv.stop(None)


def test_health_watch_streams_through_the_guard(server):
    """Client-side health checking (a channel's healthCheckConfig) watches through the guard."""
    channel, _ = server
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_undecodable_request_is_invalid_argument_logged_once_without_traceback(server, caplog):
    channel, component = server
    guard.warn_undecodable.last.clear()
    before = count(component, "Retrieve", "INVALID_ARGUMENT")
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as info:
                raw(channel, NOT_A_MESSAGE)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "request is not a valid pmis.v1.RetrieveRequest message"
    records = [r for r in caplog.records if r.name in ("pmis.guard", "grpc._server", "grpc._cython.cygrpc")]
    assert len(records) == 1 and records[0].levelno == logging.WARNING, [r.getMessage() for r in records]
    assert records[0].exc_info is None
    # every refusal counted
    wait_until(lambda: count(component, "Retrieve", "INVALID_ARGUMENT") == before + 20, 5, "20 refusals counted")


def test_errors_keep_their_status_and_bugs_are_internal_without_text(server, caplog):
    channel, component = server
    assert list(retrieve(channel, 5).internship_ids) == ["I1"]
    with pytest.raises(grpc.RpcError) as info:
        retrieve(channel, 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "n: must be at least 2" in info.value.details()
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as info:
        retrieve(channel, 2)
    assert info.value.code() == grpc.StatusCode.INTERNAL and info.value.details() == "internal error"
    assert any("unhandled error" in r.getMessage() for r in caplog.records)  # the bug is logged, server side
    wait_until(lambda: count(component, "Retrieve", "OK") >= 1 and count(component, "Retrieve", "INTERNAL") >= 1, 5,
               "the calls counted")


def test_field_violations_are_bounded_so_the_status_fits_in_the_trailers():
    from services.common.errors import MAX_VIOLATIONS, invalid_argument

    error = invalid_argument([(f"profiles[{i}].skills", "x" * 5000) for i in range(1000)])
    assert len(error.violations) == MAX_VIOLATIONS and error.message.endswith(f"; and {1000 - MAX_VIOLATIONS} more")
    assert len(error.to_status().trailing_metadata[0][1]) + len(error.message) < 6 * 1024


def test_oversized_request_is_resource_exhausted_and_counted(server):
    from services.common.guard import MAX_REQUEST_BYTES

    channel, component = server
    before = count(component, "Retrieve", "RESOURCE_EXHAUSTED")
    big = common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(skills=["x" * 1000] * 5000), n=3)
    assert MAX_REQUEST_BYTES < big.ByteSize()
    with pytest.raises(grpc.RpcError) as info:
        content_pb2_grpc.ContentServiceStub(channel).Retrieve(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the 4194304-byte limit" in info.value.details()
    wait_until(lambda: count(component, "Retrieve", "RESOURCE_EXHAUSTED") == before + 1, 5, "the refusal counted")
