"""Admission control (load shedding): a bounded number of requests in flight per server.

Under overload a server that queues everything answers nothing in time: every request waits
until its deadline and goodput collapses. Here a unary call is refused AT ONCE when the server
already holds `max_in_flight` admitted calls (RESOURCE_EXHAUSTED, "retry with backoff"), and a
call whose remaining deadline cannot cover the work (`min_deadline_ms`) is refused before the
work starts (DEADLINE_EXCEEDED). The gateway's limit in force may sit below `max_in_flight`
while its answers are slower than a latency target (`LatencyTarget`). Health
(`grpc.health.v1.Health`) and reflection are never limited or refused, so probes keep answering
under load. Streaming methods pass through untouched and uncounted (health Watch, reflection, the
trainer's WatchJob, the gateway's StreamRecommend): they are long-lived, and counting them would
let a few watchers starve the unary capacity.

A `Limiter` (count, limit, messages, metrics) and its `AdmissionInterceptor`, for the sync
`grpc.server` of every server: the component servers and the gateway's front (gateway/front.py).
grpcio runs `intercept_service` in the server's single polling thread and the handler later in a
worker of the server's pool (grpc/_server.py `_handle_call` -> `thread_pool.submit`). A slot is
taken in the polling thread, so the decision is serialised and made before the call can queue.
A refused call must still be *answered* by a handler, and a handler normally runs in the
server's pool -- behind the very backlog being shed. grpcio lets a behaviour name its own pool
(`behavior.experimental_thread_pool`, grpc/_server.py `_select_thread_pool_for_behavior`).
Health checks run on a small control pool of the interceptor's and never wait for a free worker.
A refusal is answered in the polling thread itself, with no hand-over to another thread (each
hand-over waits for a core and for the GIL, and under overload both are scarce): its handler is
request-streaming, so grpcio calls it without first waiting for the request message (which only
the polling thread could deliver), and its "pool" runs it on the spot (`_Inline`); it reads
nothing and only starts the sending of its status.

The slot of an admitted call is released as soon as its handler returns, before grpcio sends the
answer: a client that sends its next request the moment it has the answer must find the slot
free (released only when grpcio's task ended, a closed loop at exactly the limit was now and
then refused). A done-callback on the pool future (how grpcio's own
`maximum_concurrent_rpcs` counts, `_on_call_completed`) releases it too, once at most, so a call
whose client gave up while it sat in the queue -- grpcio then never calls the handler -- cannot
leak its slot.

Why not grpcio's built-in `grpc.server(maximum_concurrent_rpcs=...)`: it refuses in the polling
thread too (fast), but it counts and refuses EVERY method, health Check included -- a saturated
pod would fail its readiness/liveness probes and be pulled or restarted exactly when its
neighbours need it most -- and it says only "Concurrent RPC limit exceeded!", with no metric,
no minimum deadline, and no way to exempt a method.
"""

from __future__ import annotations

import math
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc

from services.common import telemetry

# Never limited or refused: probes and tooling must work on a saturated server.
EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                             "grpc.reflection.v1.ServerReflection"})

OVERLOAD, DEADLINE = "overload", "deadline"  # the `reason` label of pmis_grpc_shed_total

# Component servers (sync, `--workers` threads): twice the workers. One worker-pool's worth of
# calls may wait in the pool queue, so a worker that finishes is handed the next call at once
# (no idle gap while a client's retry or the next request crosses the network), and a queued call
# waits at most about one service time, far inside the gateway's per-component budgets. Beyond
# that, queueing only turns into deadline expiry.
COMPONENT_IN_FLIGHT_PER_WORKER = 2
# A component call with less time than this left cannot be answered before its caller has moved
# on: refusing it costs nothing that was going to be used.
COMPONENT_MIN_DEADLINE_MS = 10
# Gateway: by Little's law, requests in flight = throughput x time in the system. The limit is
# the measured saturation throughput times the latency the answers should keep (see the README's
# load-shedding section); beyond it a request would only queue behind the others. It is also the
# largest batch the gateway can form (gateway/batching.py): too low a limit refuses load that
# batching would have served within the latency goal.
GATEWAY_MAX_IN_FLIGHT = 32
# A Recommend needs its whole fan-out; with less time than this left it would come back with
# every component degraded.
GATEWAY_MIN_DEADLINE_MS = 20
# The gateway's answers keep their p90 under this (`LatencyTarget`): the scheme's maximum response
# time, 300 ms, less room for the tail beyond the p90 and for the network. A replica slower than the
# one the limit above was sized on (a slower node, a pod throttled by its CPU limit) then holds
# fewer requests instead of answering all of them late. 0 = the limit stays fixed.
GATEWAY_TARGET_LATENCY_MS = 200


class LatencyTarget:
    """An in-flight limit that adapts, between a floor and the configured ceiling, so that answers
    keep a latency target. Pure logic: the `Limiter` calls it under its lock.

    Answers' latencies are taken in windows of one limit's worth (at least `MIN_WINDOW`). At the
    end of a window, with p90 its 90th percentile:
    - p90 above the target while the limit was binding (calls were refused in the window): by
      Little's law, at saturation latency grows with the requests in flight, so the limit that
      would have met the target is limit x target / p90. The limit goes there, at most halving in
      one window and never below the floor.
    - p90 above the target while nothing was refused: the time was not spent queueing here (a slow
      component or network); fewer requests in flight would not make it shorter, so the limit stays.
    - p90 below `GROW_BELOW` x target: the limit grows by one, back up to the ceiling.
    """

    GROW_BELOW = 0.8
    MIN_WINDOW = 16

    def __init__(self, target_s: float, ceiling: int, floor: int | None = None):
        if target_s <= 0 or ceiling < 1:
            raise ValueError("a latency target needs a positive target and a ceiling of at least 1")
        self.target, self.ceiling = target_s, ceiling
        self.floor = min(ceiling, floor if floor is not None else max(1, ceiling // 8))
        self.limit = ceiling
        self._window: list[float] = []
        self._binding = False

    def refused(self) -> None:
        """A call was refused for overload: the limit is binding in this window."""
        self._binding = True

    def observe(self, seconds: float) -> bool:
        """One answer's latency; True when it closed a window that moved the limit."""
        self._window.append(seconds)
        if len(self._window) < max(self.limit, self.MIN_WINDOW):
            return False
        window, binding = sorted(self._window), self._binding
        self._window, self._binding = [], False
        p90 = window[math.ceil(0.9 * len(window)) - 1]
        before = self.limit
        if p90 > self.target and binding:
            scaled = int(self.limit * max(0.5, self.target / p90))
            self.limit = max(self.floor, min(self.limit - 1, scaled))
        elif p90 < self.GROW_BELOW * self.target:
            self.limit = min(self.ceiling, self.limit + 1)
        return self.limit != before


@dataclass(frozen=True)
class AdmissionConfig:
    max_in_flight: int    # 0 = unlimited
    min_deadline_ms: int  # 0 = no minimum


def component_defaults(workers: int) -> AdmissionConfig:
    return AdmissionConfig(COMPONENT_IN_FLIGHT_PER_WORKER * max(1, workers), COMPONENT_MIN_DEADLINE_MS)


def gateway_defaults() -> AdmissionConfig:
    return AdmissionConfig(GATEWAY_MAX_IN_FLIGHT, GATEWAY_MIN_DEADLINE_MS)


def is_exempt(method: str) -> bool:
    """`/grpc.health.v1.Health/Check` -> True: the service part is one of EXEMPT_SERVICES."""
    return method.lstrip("/").split("/", 1)[0] in EXEMPT_SERVICES


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]  # the `method` label, as in guard.ServerGuard


class Limiter:
    """A counter of admitted calls with a ceiling; thread-safe, never blocks a caller. With a
    latency target (`target_latency_ms`), the limit in force moves below the ceiling as
    `LatencyTarget` decides, from the latencies reported to `observe_latency`."""

    def __init__(self, component: str, max_in_flight: int, min_deadline_ms: int = 0, target_latency_ms: int = 0):
        if max_in_flight < 0 or min_deadline_ms < 0 or target_latency_ms < 0:
            raise ValueError("max_in_flight, min_deadline_ms and target_latency_ms must be >= 0")
        self.component, self.ceiling, self.min_deadline_ms = component, max_in_flight, min_deadline_ms
        self.target = (LatencyTarget(target_latency_ms / 1000.0, max_in_flight)
                       if target_latency_ms and max_in_flight else None)
        self._in_flight = 0
        self._changed = threading.Condition(threading.Lock())
        self._gauge = telemetry.IN_FLIGHT.labels(component)
        self._gauge.set(0)
        self._limit_gauge = telemetry.MAX_IN_FLIGHT.labels(component)
        self._limit_gauge.set(max_in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The limit in force (0 = unlimited): the ceiling, or below it while the latency target holds it down."""
        return self.target.limit if self.target is not None else self.ceiling

    def try_acquire(self) -> bool:
        with self._changed:
            if self.ceiling and self._in_flight >= self.max_in_flight:
                if self.target is not None:
                    self.target.refused()
                return False
            self._in_flight += 1
            self._gauge.set(self._in_flight)
            return True

    def release(self) -> None:
        with self._changed:
            if self._in_flight <= 0:
                raise RuntimeError(f"{self.component}: admission slot released twice")
            self._in_flight -= 1
            self._gauge.set(self._in_flight)
            self._changed.notify_all()

    def observe_latency(self, seconds: float) -> None:
        """An answer's latency, for the latency target (nothing without one)."""
        if self.target is None:
            return
        with self._changed:
            if self.target.observe(seconds):
                self._limit_gauge.set(self.target.limit)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is in flight (tests, drains); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)

    def overload_message(self) -> str:
        limit = self.max_in_flight
        why = (f"limit {limit}" if limit == self.ceiling else
               f"limit {limit}, lowered from {self.ceiling} to keep the p90 latency under "
               f"{self.target.target * 1000:.0f} ms")
        return f"{self.component} overloaded: {self._in_flight} requests in flight ({why}); retry with backoff"

    def deadline_refusal(self, remaining: float | None) -> str | None:
        """The refusal message if `remaining` seconds (None = no deadline) cannot cover the work."""
        if not self.min_deadline_ms or remaining is None or remaining * 1000.0 >= self.min_deadline_ms:
            return None
        return (f"{self.component}: {remaining * 1000.0:.1f} ms left before the deadline cannot cover the work "
                f"(minimum {self.min_deadline_ms} ms); not started")

    def shed(self, method: str, reason: str) -> None:
        telemetry.SHED.labels(self.component, _short(method), reason).inc()


class _Inline(futures.ThreadPoolExecutor):
    """An "executor" that runs a task in the submitting thread (grpcio's polling thread) and returns
    its finished future: for refusals, which must not wait for another thread. Only for tasks that
    never block -- the polling thread delivers every call's events. It owns no threads, so
    `ThreadPoolExecutor.__init__` is deliberately not called."""

    def __init__(self):  # pylint: disable=super-init-not-called
        pass

    def submit(self, fn, /, *args, **kwargs):
        future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # grpcio's task catches its own errors; kept for completeness
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop."""


class _Slot:
    """One admitted call's slot: released once, by whichever comes first -- the handler's end or
    grpcio's task's end."""

    def __init__(self, limiter: Limiter):
        self._limiter, self._lock, self._held = limiter, threading.Lock(), True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._limiter.release()


class _ReleaseWhenDone(futures.ThreadPoolExecutor):
    """Passed to grpcio as a behaviour's `experimental_thread_pool` (grpcio accepts only a
    ThreadPoolExecutor there): submits to the server's real pool and frees the call's slot when
    grpcio's task ends -- whether the handler ran, failed, or was skipped because the client
    cancelled or its deadline expired while the call waited in the queue.

    It owns no threads or queue, so `ThreadPoolExecutor.__init__` is deliberately not called.
    """

    def __init__(self, pool: futures.ThreadPoolExecutor, release):  # pylint: disable=super-init-not-called
        self._pool, self._release = pool, release

    def submit(self, fn, /, *args, **kwargs):
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _future: self._release())
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The real pool belongs to the server."""


_INLINE = _Inline()


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Load shedding for a sync `grpc.server`.

    `pool` MUST be the ThreadPoolExecutor the server was built with: admitted calls are submitted
    to it (through `_ReleaseWhenDone`). List this interceptor FIRST: an outer interceptor that
    wraps the handler would drop the `experimental_thread_pool` this one sets, and refusals would
    queue in the server's pool again. Since it is first, refusals never reach
    `guard.ServerGuard`; with `record_requests` (default) they are counted in
    `pmis_grpc_requests_total` here instead, with their status code.
    """

    def __init__(self, limiter: Limiter, pool: futures.ThreadPoolExecutor, *, control_threads: int = 2,
                 record_requests: bool = True):
        self.limiter, self.pool, self.record_requests = limiter, pool, record_requests
        # Health checks: a few tens of microseconds of work that must not wait behind the shed
        # backlog. A separate pool, so a saturated server still answers them.
        self.control_pool = futures.ThreadPoolExecutor(control_threads,
                                                       thread_name_prefix=f"{limiter.component}-admission")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # unknown method (UNIMPLEMENTED), or streaming
            return handler
        method = handler_call_details.method
        if is_exempt(method):
            return self._on_control_pool(handler)
        if not self.limiter.try_acquire():  # polling thread: answered without touching the server's pool
            return self._refusal(method)
        try:
            return self._admitted(handler, method)
        except BaseException:
            self.limiter.release()
            raise

    def _on_control_pool(self, handler):
        inner = handler.unary_unary

        def behavior(request, context):
            return inner(request, context)

        behavior.experimental_thread_pool = self.control_pool
        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _refusal(self, method: str):
        message = self.limiter.overload_message()
        self.limiter.shed(method, OVERLOAD)
        self._observe(method, grpc.StatusCode.RESOURCE_EXHAUSTED)

        def refuse(request_iterator, context):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        refuse.experimental_thread_pool = _INLINE
        # Request-streaming and never read: grpcio calls it at once, the request is discarded.
        return grpc.stream_unary_rpc_method_handler(refuse)

    def _admitted(self, handler, method: str):
        inner, limiter, slot = handler.unary_unary, self.limiter, _Slot(self.limiter)

        def admitted(request, context):
            try:
                # Here, in the worker, after any wait in the pool queue: the last moment before the work.
                message = limiter.deadline_refusal(context.time_remaining())
                if message is not None:
                    limiter.shed(method, DEADLINE)
                    self._observe(method, grpc.StatusCode.DEADLINE_EXCEEDED)
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
                return inner(request, context)
            finally:
                slot.release()

        own_pool = getattr(inner, "experimental_thread_pool", None)
        target = own_pool if isinstance(own_pool, futures.ThreadPoolExecutor) else self.pool
        admitted.experimental_thread_pool = _ReleaseWhenDone(target, slot.release)
        return grpc.unary_unary_rpc_method_handler(admitted, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _observe(self, method: str, code: grpc.StatusCode) -> None:
        if self.record_requests:
            telemetry.observe(self.limiter.component, _short(method), code.name, 0.0)

    def close(self) -> None:
        self.control_pool.shutdown(wait=False)
