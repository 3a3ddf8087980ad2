"""The gateway's front (gateway/front.py): admission control in front of the asyncio gateway.

The components here are one black hole -- a server that accepts every call and answers none until
the test lets go -- so admitted Recommends stay in flight as long as the test wants.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.front import Front
from gateway.server import GatewayConfig
from models.components import COMPONENTS
from pmis.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common import admission
from tests.support.loopback import GatewayRunner
from tests.support.waiting import wait_until

REFUSAL_BOUND = 0.2  # seconds: a refusal takes milliseconds; this allows for a loaded machine


class BlackHole:
    """Every call to a component method waits until `release` (or its deadline), then fails."""

    def __init__(self):
        self.release = threading.Event()
        self.arrived = threading.Event()  # a call reached a component: the gateway is at work
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.server.add_generic_rpc_handlers([self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return None  # UNIMPLEMENTED: the gateway's client-side health check then counts it healthy

        def hold(request, context):
            self.arrived.set()
            self.release.wait(min(context.time_remaining() or 10, 10))
            context.abort(grpc.StatusCode.UNAVAILABLE, "black hole")
        return grpc.unary_unary_rpc_method_handler(hold)

    def close(self):
        self.release.set()
        self.server.stop(None)


@pytest.fixture()
def held_gateway(small_system):
    hole = BlackHole()
    runner = GatewayRunner({c: f"127.0.0.1:{hole.port}" for c in COMPONENTS}, small_system.catalog,
                           max_in_flight=2, budgets_ms={c: 5_000 for c in COMPONENTS})
    try:
        yield runner, hole
    finally:
        hole.close()
        runner.close()


def test_a_saturated_gateway_refuses_at_once_says_why_and_keeps_answering_health(held_gateway):
    runner, hole = held_gateway
    request = gateway_pb2.RecommendRequest(profile=common_pb2.StudentProfile(skills=["python"]))
    stub = gateway_pb2_grpc.RecommendationGatewayStub(runner.channel)
    held = [stub.Recommend.future(request, timeout=10) for _ in range(2)]
    wait_until(lambda: runner.front.limiter.in_flight == 2, 10, "two Recommends admitted")

    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recommend(request, timeout=10)
    took = time.perf_counter() - started
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == "gateway overloaded: 2 requests in flight (limit 2); retry with backoff"
    assert took < REFUSAL_BOUND, f"refusal took {took * 1000:.1f} ms"

    health = health_pb2_grpc.HealthStub(runner.channel).Check(health_pb2.HealthCheckRequest(), timeout=REFUSAL_BOUND)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert not any(f.done() for f in held)          # the admitted ones are still at work

    hole.release.set()                              # no retriever answers: UNAVAILABLE, and the slots free up
    for f in held:
        assert f.exception(10).code() == grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: runner.front.limiter.in_flight == 0, 10, "slots released")


def test_a_call_the_client_gave_up_on_is_counted_as_such_not_as_a_server_error(held_gateway, caplog):
    """A client cancels (or its deadline passes) while its Recommend waits on the components: the
    bridge's cancelled future must end the call as CANCELLED, not as an unhandled INTERNAL error (an
    error log per call, and an availability SLO burning on what the client did)."""
    from prometheus_client import REGISTRY

    def count(code: str) -> float:
        return REGISTRY.get_sample_value("pmis_grpc_requests_total",
                                         {"component": "gateway", "method": "Recommend", "code": code}) or 0.0

    runner, hole = held_gateway
    internal, cancelled = count("INTERNAL"), count("CANCELLED")
    request = gateway_pb2.RecommendRequest(profile=common_pb2.StudentProfile(skills=["python"]))
    with caplog.at_level("ERROR"):
        call = runner.stub.Recommend.future(request, timeout=10)
        # cancelled while the event loop works on it (not while it waits for a worker: grpcio
        # would then never run the handler)
        assert hole.arrived.wait(10), "the Recommend never reached a component"
        call.cancel()
        wait_until(lambda: count("CANCELLED") == cancelled + 1, 10, "the cancelled call counted")
    assert count("INTERNAL") == internal
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    wait_until(lambda: runner.front.limiter.in_flight == 0, 10, "slot released")


class TimedGateway:
    """Answers every Recommend after `delay` seconds, `degraded` as set: the front's latency target
    sees only how long answers take."""

    def __init__(self):
        self.delay, self.degraded = 0.0, []

    async def Recommend(self, request, context):
        await asyncio.sleep(self.delay)
        return gateway_pb2.RecommendResponse(degraded=self.degraded)


@pytest.fixture()
def timed_front():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="timed-gateway-loop")
    thread.start()
    gateway = TimedGateway()
    cfg = GatewayConfig(host="127.0.0.1", port=0, metrics_port=0, catalog=Path("unused"), targets={},
                        max_in_flight=8, target_latency_ms=50)
    front = Front(gateway, loop, cfg)
    front.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    try:
        yield gateway, front, gateway_pb2_grpc.RecommendationGatewayStub(channel)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(front.stop(0.2), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def burst(stub, n: int) -> tuple[int, int]:
    """`n` Recommends at once; (answered, refused with RESOURCE_EXHAUSTED)."""
    calls = [stub.Recommend.future(gateway_pb2.RecommendRequest(student_id="S0000001"), timeout=10) for _ in range(n)]
    codes = [c.exception(10).code() if c.exception(10) else grpc.StatusCode.OK for c in calls]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    return codes.count(grpc.StatusCode.OK), codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_answers_slower_than_the_target_under_overload_lower_the_limit_and_fast_ones_raise_it(timed_front):
    gateway, front, stub = timed_front
    gateway.delay = 0.2                      # 4 x the 50 ms target
    gateway.degraded = ["ranker"]            # degraded answers: waiting on a component, not queueing here
    for _ in range(3):
        burst(stub, 12)
    assert front.limiter.max_in_flight == 8  # no evidence: held at the ceiling

    gateway.degraded = []
    answered = 0
    while answered < admission.LatencyTarget.MIN_WINDOW:  # one window of slow answers, with refusals
        ok, refused = burst(stub, 12)
        assert refused > 0
        answered += ok
    assert front.limiter.max_in_flight == 4  # 8 x 50 / 200, at most halved
    ok, refused = burst(stub, 8)
    assert (ok, refused) == (4, 4)

    gateway.delay = 0.0
    limits = [front.limiter.max_in_flight]
    for _ in range(10 * admission.LatencyTarget.MIN_WINDOW):  # fast answers: back up, one step per window
        stub.Recommend(gateway_pb2.RecommendRequest(student_id="S0000001"), timeout=10)
        if front.limiter.max_in_flight != limits[-1]:
            limits.append(front.limiter.max_in_flight)
    assert limits[-1] == 8
    rising = limits[limits.index(min(limits)):]  # (the window the slow answers began may close lower first)
    assert rising == list(range(min(limits), 9)), limits
