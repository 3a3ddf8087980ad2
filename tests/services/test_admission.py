"""Admission control (services/common/admission.py): the limiter, then real loopback servers.

The servers are a sync `grpc.server` (as the component servers and the gateway's front) with one
generic service: `Work` (unary; the request b"block" waits on an event the test
sets, anything else returns at once) and `Stream` (unary-stream). Synchronisation is by events and
conditions only; the one clock in here measures how fast a refusal comes back.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common import admission
from services.common.server import ComponentServer, ServerConfig, parse_config
from tests.support.waiting import wait_until

SERVICE = "pmis.test.Slow"
WORK, STREAM = f"/{SERVICE}/Work", f"/{SERVICE}/Stream"
REFUSAL_BOUND = 0.2  # seconds; a refusal is measured in milliseconds, this allows for a loaded machine
WAIT = 10.0          # upper bound of every event/condition wait (never reached when things work)
SERVING = health_pb2.HealthCheckResponse.SERVING
_names = itertools.count()


def component_name(kind: str) -> str:
    """A fresh `component` label per server, so metric values never mix between tests."""
    return f"test-{kind}-{next(_names)}"


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- the limiter


def test_limiter_admits_up_to_the_limit_then_refuses_and_tracks_the_gauge():
    name = component_name("unit")
    lim = admission.Limiter(name, 2)
    assert metric("pmis_grpc_max_in_flight", component=name) == 2
    assert lim.try_acquire() and lim.try_acquire()
    assert not lim.try_acquire()
    assert lim.in_flight == 2 and metric("pmis_grpc_in_flight", component=name) == 2
    assert lim.overload_message() == f"{name} overloaded: 2 requests in flight (limit 2); retry with backoff"
    lim.release()
    assert lim.try_acquire()
    lim.release(), lim.release()
    assert lim.in_flight == 0 and metric("pmis_grpc_in_flight", component=name) == 0
    with pytest.raises(RuntimeError, match="released twice"):
        lim.release()


def test_limiter_zero_means_unlimited_and_negative_is_refused():
    lim = admission.Limiter(component_name("unit"), 0)
    assert all(lim.try_acquire() for _ in range(1000))
    with pytest.raises(ValueError):
        admission.Limiter("x", -1)
    with pytest.raises(ValueError):
        admission.Limiter("x", 1, -5)


def test_limiter_deadline_rule():
    lim = admission.Limiter("c", 4, min_deadline_ms=50)
    assert lim.deadline_refusal(None) is None          # no deadline: nothing to protect
    assert lim.deadline_refusal(0.050) is None
    assert lim.deadline_refusal(2.0) is None
    message = lim.deadline_refusal(0.004)
    assert message is not None and "4.0 ms left" in message and "cannot cover the work" in message
    assert "minimum 50 ms" in message
    assert admission.Limiter("c", 4, 0).deadline_refusal(0.0) is None  # 0 = off


def test_limiter_never_exceeds_its_limit_under_contention():
    lim, peak, lock = admission.Limiter(component_name("unit"), 3), [0], threading.Lock()
    start = threading.Barrier(8)

    def hammer():
        start.wait()
        for _ in range(2000):
            if lim.try_acquire():
                with lock:
                    peak[0] = max(peak[0], lim.in_flight)
                lim.release()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert 1 <= peak[0] <= 3 and lim.in_flight == 0
    assert lim.wait_idle(0)


def test_wait_idle_times_out_while_busy():
    lim = admission.Limiter("c", 1)
    lim.try_acquire()
    assert not lim.wait_idle(0.01)
    threading.Thread(target=lim.release).start()
    assert lim.wait_idle(WAIT)


# --------------------------------------------------------------------------- the latency target


def window(target: admission.LatencyTarget, seconds: float, *, refused: bool) -> bool:
    """One window's worth of answers, all taking `seconds`; True when the window moved the limit."""
    if refused:
        target.refused()
    moved = [target.observe(seconds) for _ in range(max(target.limit, admission.LatencyTarget.MIN_WINDOW))]
    assert not any(moved[:-1])  # only the window's last answer decides
    return moved[-1]


def test_latency_target_shrinks_by_littles_law_only_while_calls_are_refused():
    target = admission.LatencyTarget(0.2, 32)
    assert (target.limit, target.floor) == (32, 4)
    assert not window(target, 0.3, refused=False)  # slow, but nothing queued here: held
    assert target.limit == 32
    assert window(target, 0.25, refused=True)      # 32 x 0.2 / 0.25
    assert target.limit == 25
    assert window(target, 2.0, refused=True)       # at most halved in one window
    assert target.limit == 12
    for _ in range(5):
        window(target, 2.0, refused=True)
    assert target.limit == target.floor == 4       # never below the floor


def test_latency_target_grows_back_one_per_fast_window_up_to_the_ceiling():
    target = admission.LatencyTarget(0.2, 20)
    window(target, 0.4, refused=True)
    assert target.limit == 10
    assert not window(target, 0.19, refused=False)  # within the target but above 80 % of it: held
    assert target.limit == 10
    for expected in range(11, 21):
        assert window(target, 0.1, refused=False) and target.limit == expected
    assert not window(target, 0.1, refused=True) and target.limit == 20  # the ceiling


def test_latency_target_reads_the_p90_of_each_window():
    target = admission.LatencyTarget(0.2, 10)
    target.refused()
    for seconds in [0.05] * 15 + [1.0]:  # 1 of 16 slow: beyond the p90, which stays fast
        target.observe(seconds)
    assert target.limit == 10
    target.refused()
    for seconds in [0.05] * 14 + [0.4] * 2:  # 2 of 16 slow: the p90 (15th of 16) is 0.4
        target.observe(seconds)
    assert target.limit == 5


def test_limiter_with_a_latency_target_refuses_at_the_lowered_limit_and_says_why():
    name = component_name("unit")
    lim = admission.Limiter(name, 8, target_latency_ms=100)
    for _ in range(8):
        assert lim.try_acquire()
    assert not lim.try_acquire()  # binding
    for _ in range(admission.LatencyTarget.MIN_WINDOW):
        lim.observe_latency(0.4)
    assert lim.max_in_flight == 4 and lim.ceiling == 8
    assert metric("pmis_grpc_max_in_flight", component=name) == 4
    for _ in range(8):
        lim.release()
    assert all(lim.try_acquire() for _ in range(4)) and not lim.try_acquire()
    assert lim.overload_message() == (f"{name} overloaded: 4 requests in flight (limit 4, lowered from 8 to keep "
                                      "the p90 latency under 100 ms); retry with backoff")
    assert admission.Limiter(name, 8).target is None                        # no target: a fixed limit
    assert admission.Limiter(name, 0, target_latency_ms=100).target is None  # unlimited stays unlimited
    with pytest.raises(ValueError):
        admission.Limiter("x", 8, target_latency_ms=-1)


def test_exempt_methods_and_defaults():
    assert admission.is_exempt("/grpc.health.v1.Health/Check")
    assert admission.is_exempt("/grpc.health.v1.Health/Watch")
    assert admission.is_exempt("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert admission.is_exempt("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert not admission.is_exempt("/pmis.v1.ContentService/Score")
    assert not admission.is_exempt("/pmis.v1.grpc.health.v1.Health/Check")
    assert admission.component_defaults(8) == admission.AdmissionConfig(16, 10)
    assert admission.gateway_defaults() == admission.AdmissionConfig(admission.GATEWAY_MAX_IN_FLIGHT, 20)


# --------------------------------------------------------------------------- configuration


def test_parse_config_defaults_env_and_flags(monkeypatch):
    monkeypatch.delenv("PMIS_MAX_IN_FLIGHT", raising=False)
    monkeypatch.delenv("PMIS_MIN_DEADLINE_MS", raising=False)
    cfg = parse_config("content", 50051, 9101, ["--workers", "8"])
    assert (cfg.max_in_flight, cfg.min_deadline_ms) == (16, 10)
    assert parse_config("content", 50051, 9101, ["--workers", "3"]).max_in_flight == 6
    monkeypatch.setenv("PMIS_MAX_IN_FLIGHT", "40")
    monkeypatch.setenv("PMIS_MIN_DEADLINE_MS", "25")
    cfg = parse_config("content", 50051, 9101, [])
    assert (cfg.max_in_flight, cfg.min_deadline_ms) == (40, 25)
    cfg = parse_config("content", 50051, 9101, ["--max-in-flight", "0", "--min-deadline-ms", "0"])
    assert (cfg.max_in_flight, cfg.min_deadline_ms) == (0, 0)
    monkeypatch.setenv("PMIS_MAX_IN_FLIGHT", "")  # empty, as a manifest may leave it: unset, the default
    assert parse_config("content", 50051, 9101, ["--workers", "8"]).max_in_flight == 16
    for bad in (["--max-in-flight", "-1"], ["--min-deadline-ms", "-1"]):
        with pytest.raises(SystemExit):
            parse_config("content", 50051, 9101, bad)


# --------------------------------------------------------------------------- sync server


class SlowService:
    """`Work` counts its entries; the request b"block" waits until `release` is set."""

    def __init__(self, limiter: admission.Limiter):
        self.limiter = limiter
        self.release = threading.Event()
        self.entered = 0
        self._cond = threading.Condition()

    def work(self, request, context):
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        if request == b"block":
            assert self.release.wait(WAIT)
        return b"done:" + request

    def stream(self, request, context):
        for _ in range(3):
            yield str(self.limiter.in_flight).encode()

    def wait_entered(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.entered >= n, WAIT)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Work": grpc.unary_unary_rpc_method_handler(self.work),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream)})


@dataclass
class SyncRig:
    limiter: admission.Limiter
    service: SlowService
    channel: grpc.Channel

    @property
    def component(self) -> str:
        return self.limiter.component

    def work(self, request: bytes, **kw):
        return self.channel.unary_unary(WORK)(request, **kw)

    def work_future(self, request: bytes, **kw):
        return self.channel.unary_unary(WORK).future(request, **kw)

    def stream(self, request: bytes, **kw):
        return list(self.channel.unary_stream(STREAM)(request, **kw))

    def health(self) -> int:
        return health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status


@contextmanager
def sync_server(max_in_flight: int, *, workers: int = 2, min_deadline_ms: int = 0, pool_class=None):
    pool = (pool_class or futures.ThreadPoolExecutor)(max_workers=workers, thread_name_prefix="test-sync")
    limiter = admission.Limiter(component_name("sync"), max_in_flight, min_deadline_ms)
    interceptor = admission.AdmissionInterceptor(limiter, pool)
    server = grpc.server(pool, interceptors=[interceptor])
    service = SlowService(limiter)
    server.add_generic_rpc_handlers((service.handlers(),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_servicer.set("", SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield SyncRig(limiter, service, channel)
    finally:
        service.release.set()
        channel.close()
        server.stop(None).wait(WAIT)
        interceptor.close()
        pool.shutdown(wait=False)


def test_sync_saturated_server_refuses_at_once_and_keeps_answering_health():
    # Two workers, both held: a refusal or a health check that needed a worker could not answer.
    with sync_server(2, workers=2) as rig:
        held = [rig.work_future(b"block", timeout=WAIT) for _ in range(2)]
        assert rig.service.wait_entered(2)

        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            rig.work(b"third", timeout=WAIT)
        elapsed = time.perf_counter() - started

        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == \
            f"{rig.component} overloaded: 2 requests in flight (limit 2); retry with backoff"
        assert elapsed < REFUSAL_BOUND, f"refusal took {elapsed * 1000:.1f} ms"
        assert not any(f.done() for f in held), "the refusal waited for a slot"
        assert rig.service.entered == 2  # the refused call never reached the handler
        assert rig.health() == SERVING
        assert rig.limiter.in_flight == 2 and metric("pmis_grpc_in_flight", component=rig.component) == 2
        assert metric("pmis_grpc_shed_total", component=rig.component, method="Work", reason="overload") == 1
        assert metric("pmis_grpc_requests_total", component=rig.component, method="Work",
                      code="RESOURCE_EXHAUSTED") == 1

        rig.service.release.set()
        assert [f.result(WAIT) for f in held] == [b"done:block"] * 2
        assert rig.limiter.wait_idle(WAIT)
        assert metric("pmis_grpc_in_flight", component=rig.component) == 0
        assert rig.work(b"again", timeout=WAIT) == b"done:again"  # capacity is back


class LingeringPool(futures.ThreadPoolExecutor):
    """grpcio's task for a call lingers after it has sent the answer, as it does on a busy machine
    (the worker waits for the GIL on its way out)."""

    def submit(self, fn, /, *args, **kwargs):
        def task():
            fn(*args, **kwargs)
            time.sleep(0.05)
        return super().submit(task)


def test_sync_closed_loop_at_exactly_the_limit_is_never_refused():
    # Each client sends its next call the moment it has an answer: the slot must be free by then
    # (released as the handler returns, not when grpcio's task ends after sending the answer).
    clients, calls = 2, 10
    with sync_server(clients, workers=clients + 2, pool_class=LingeringPool) as rig:
        def client(c: int) -> list:
            return [rig.work(f"{c}.{i}".encode(), timeout=WAIT) for i in range(calls)]

        with futures.ThreadPoolExecutor(clients) as pool:
            answers = [f.result(WAIT * 4) for f in [pool.submit(client, c) for c in range(clients)]]
        assert sum(len(a) for a in answers) == clients * calls  # a refusal would have raised
        assert metric("pmis_grpc_shed_total", component=rig.component, method="Work", reason="overload") == 0
        assert rig.limiter.wait_idle(WAIT)


def test_sync_slot_of_a_call_that_expired_in_the_queue_is_released():
    # One worker, limit 3: the second call is admitted but waits in the pool queue, its deadline
    # passes there, and grpcio never runs its handler -- the slot must come back all the same.
    with sync_server(3, workers=1) as rig:
        held = rig.work_future(b"block", timeout=WAIT)
        assert rig.service.wait_entered(1)
        queued = rig.work_future(b"queued", timeout=0.2)
        assert queued.exception(WAIT).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert rig.limiter.in_flight == 2
        rig.service.release.set()
        assert held.result(WAIT) == b"done:block"
        assert rig.limiter.wait_idle(WAIT)
        assert rig.service.entered == 1
        assert metric("pmis_grpc_in_flight", component=rig.component) == 0


def test_sync_too_little_deadline_is_refused_before_the_handler_runs():
    with sync_server(4, min_deadline_ms=50) as rig:
        with pytest.raises(grpc.RpcError) as refused:
            rig.work(b"short", timeout=0.005)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert rig.limiter.wait_idle(WAIT)
        assert rig.service.entered == 0


def test_sync_deadline_refusal_says_why_and_is_counted():
    # 1 s left against a 2 s minimum: the server's refusal arrives long before the client's timer.
    with sync_server(4, min_deadline_ms=2000) as rig:
        with pytest.raises(grpc.RpcError) as refused:
            rig.work(b"short", timeout=1.0)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "cannot cover the work (minimum 2000 ms)" in refused.value.details()
        assert rig.limiter.wait_idle(WAIT)
        assert rig.service.entered == 0
        assert metric("pmis_grpc_shed_total", component=rig.component, method="Work", reason="deadline") == 1
        assert rig.work(b"no-deadline") == b"done:no-deadline"  # no deadline at all: nothing to refuse


def test_sync_streams_pass_through_uncounted_even_when_saturated():
    with sync_server(1, workers=2) as rig:
        held = rig.work_future(b"block", timeout=WAIT)
        assert rig.service.wait_entered(1)
        with pytest.raises(grpc.RpcError):
            rig.work(b"refused", timeout=WAIT)
        assert rig.stream(b"", timeout=WAIT) == [b"1"] * 3  # served; the one unary call is all that counts
        rig.service.release.set()
        assert held.result(WAIT) == b"done:block"
        assert rig.limiter.wait_idle(WAIT)


class Unloaded:  # ComponentServer.__init__ only registers the servicer; nothing is loaded here
    slot = None


def slow_component_server(kind: str, **settings) -> tuple[ComponentServer, SlowService]:
    """A real ComponentServer (admission, guard, health; not started) serving SlowService."""
    cfg = ServerConfig(component=component_name(kind), host="127.0.0.1", port=0, metrics_port=0, bundles=None,
                       alias="champion", version=None, path=None, grace=0.1, drain=0.0,
                       max_connection_age_ms=60_000, **settings)
    service = SlowService(None)
    cs = ComponentServer(cfg, SERVICE, Unloaded(), lambda _, server: server.add_generic_rpc_handlers(
        (service.handlers(),)))
    return cs, service


def test_component_server_wires_the_limiter_in_front_of_metrics():
    cs, service = slow_component_server("component", workers=2, max_in_flight=1, min_deadline_ms=0)
    cfg = cs.cfg
    assert cs.limiter.max_in_flight == 1
    default = ServerConfig(cfg.component + "-d", "127.0.0.1", 0, 0, None, "", None, None, 0.1, 0.0, 8, 60_000)
    assert ComponentServer(default, SERVICE, Unloaded(), lambda *_: None).limiter.max_in_flight == 16  # 2 x workers
    cs.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{cs.port}") as channel:
            held = channel.unary_unary(WORK).future(b"block", timeout=WAIT)
            assert service.wait_entered(1)
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(WORK)(b"x", timeout=WAIT)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # health answers (NOT_SERVING: no bundle was loaded) instead of being refused
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            service.release.set()
            assert held.result(WAIT) == b"done:block"
            assert cs.limiter.wait_idle(WAIT)
        assert metric("pmis_grpc_requests_total", component=cfg.component, method="Work", code="OK") == 1
        assert metric("pmis_grpc_requests_total", component=cfg.component, method="Work",
                      code="RESOURCE_EXHAUSTED") == 1
    finally:
        service.release.set()
        cs.server.stop(None).wait(WAIT)


def test_open_health_watches_hold_no_worker_of_a_component_server():
    """Every gateway replica's channel keeps a health Watch open on every component replica. A
    watch that held a worker thread for its life (as a guard that rewrapped it as a generator
    did) would, with as many watchers as workers, leave none for the calls: here one worker,
    three watchers, and calls still answered; status changes still reach every watcher."""
    cs, _ = slow_component_server("watched", workers=1)
    cs.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{cs.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=WAIT) for _ in range(3)]
            assert [next(w).status for w in watches] == [health_pb2.HealthCheckResponse.NOT_SERVING] * 3
            for i in range(5):
                assert channel.unary_unary(WORK)(b"x%d" % i, timeout=WAIT) == b"done:x%d" % i
            cs._set_health(SERVING)
            assert [next(w).status for w in watches] == [SERVING] * 3
            for w in watches:
                w.cancel()
        def watches_counted():  # a watch its client cancelled ends without a status of the server's
            return sum(metric("pmis_grpc_requests_total", component=cs.cfg.component, method="Watch", code=code)
                       for code in ("OK", "CANCELLED")) == 3
        wait_until(watches_counted, WAIT, "the three watches counted when they ended")
    finally:
        cs.server.stop(None).wait(WAIT)
