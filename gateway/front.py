"""The gateway's front door: a sync `grpc.server` whose calls run on the gateway's event loop.

Why not a `grpc.aio.server`: an asyncio server takes new calls from gRPC's core one per turn of
its event loop, and under overload every turn is long (the loop is busy with the requests already
admitted), so new calls wait in the core -- requests and refusals alike. Measured at twice the
saturation rate, refusals took a second or more. A sync server's polling thread takes calls off
the core on its own, and admission control decides there (services/common/admission.py, as in
every component server): a refusal is answered from a small pool of its own and never waits
for the loop or for a worker. An admitted call's worker thread hands the coroutine to the loop
and waits for its answer; the fan-out stays asyncio.

Health and reflection are the sync server's, exempt from admission like the components'.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pmis.v1 import gateway_pb2_grpc
from services.common import admission, guard, tls
from services.components import SERVICE_NAMES

SERVICE = SERVICE_NAMES["gateway"]
# Worker threads when admission is unlimited; otherwise one per admitted call, plus streams.
UNLIMITED_WORKERS = 64
STREAM_WORKERS = 8


class LoopBridge(gateway_pb2_grpc.RecommendationGatewayServicer):
    """Each RPC of the asyncio `Gateway`, called from a worker thread and run on `loop`."""

    def __init__(self, gateway, loop: asyncio.AbstractEventLoop, on_answer=lambda seconds: None):
        """`on_answer(seconds)`: told how long each undegraded Recommend took (the latency target's
        evidence; a degraded answer waited on a component, which fewer requests in flight would
        not have made faster)."""
        self.gateway, self.loop, self.on_answer = gateway, loop, on_answer

    def _run(self, coro, context):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        context.add_callback(future.cancel)  # the client went away: stop the work
        try:
            return future.result()
        except futures.CancelledError:
            # Cancelled by that callback: the client cancelled or its deadline passed. Its own
            # doing, so its own status -- not an unhandled error (INTERNAL, logged, counted
            # against the availability SLO).
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED,
                          "the deadline passed before the answer" if expired else "the client cancelled the call")

    def Recommend(self, request, context):
        started = time.perf_counter()
        response = self._run(self.gateway.Recommend(request, context), context)
        if not response.degraded:
            self.on_answer(time.perf_counter() - started)
        return response

    def PredictSuccess(self, request, context):
        return self._run(self.gateway.PredictSuccess(request, context), context)

    def Explain(self, request, context):
        return self._run(self.gateway.Explain(request, context), context)

    def RecordInteraction(self, request, context):
        return self._run(self.gateway.RecordInteraction(request, context), context)

    def Shortlist(self, request, context):
        return self._run(self.gateway.Shortlist(request, context), context)

    def StreamRecommend(self, request_iterator, context):
        for request in request_iterator:
            yield self._run(self.gateway.recommend_in_stream(request, context), context)


class Front:
    """The sync server, its admission control and its health, around one asyncio `Gateway`."""

    def __init__(self, gateway, loop: asyncio.AbstractEventLoop, cfg):
        workers = (cfg.max_in_flight or UNLIMITED_WORKERS) + STREAM_WORKERS
        self.pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="gateway")
        self.limiter = admission.Limiter("gateway", cfg.max_in_flight, cfg.min_deadline_ms, cfg.target_latency_ms)
        self.admission = admission.AdmissionInterceptor(self.limiter, self.pool)
        # A client's long-lived channel would otherwise stay on one gateway pod forever: a maximum
        # connection age makes it reconnect, and land on any pod, at least this often.
        self.server = grpc.server(self.pool, interceptors=[self.admission,
                                                           guard.ServerGuard("gateway", cfg.tls.allowed_callers)],
                                  options=[("grpc.so_reuseport", 0),
                                           ("grpc.max_connection_age_ms", cfg.max_connection_age_ms),
                                           ("grpc.max_connection_age_grace_ms", int(cfg.grace * 1000) + 1000),
                                           *guard.server_options()])
        bridge = LoopBridge(gateway, loop, on_answer=self.limiter.observe_latency)
        gateway_pb2_grpc.add_RecommendationGatewayServicer_to_server(bridge, self.server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = tls.add_port(self.server, f"{cfg.host}:{cfg.port}", cfg.tls, "gateway")

    def start(self) -> None:
        self.server.start()
        # The gateway itself is ready once its catalog is loaded: missing components degrade answers.
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, then in-flight calls finish within `grace` (their coroutines need the loop:
        this waits off it)."""
        self.health.enter_graceful_shutdown()
        await asyncio.to_thread(self.server.stop(grace).wait)
        self.admission.close()
        self.pool.shutdown(wait=False)
