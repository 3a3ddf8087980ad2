"""The gateway's calls to the components: one channel and stub per component created at start-up,
every call with a deadline (the caller's remaining time capped by the component's budget), the
hot methods through batches (gateway/batching.py), and a component's failure turned into
(None, reason) -- never an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial

import grpc

from gateway.batching import Batcher
from models.components import COMPONENTS
from pmis.v1 import (collaborative_pb2_grpc, common_pb2, content_pb2_grpc, ranker_pb2, ranker_pb2_grpc, success_pb2,
                     success_pb2_grpc)
from services.common import telemetry
from services.components import SERVICE_NAMES

log = logging.getLogger("pmis.gateway")

# The hot methods, called through batches (gateway/batching.py): method -> its batch RPC and request.
BATCHED_METHODS = {"content": ("Retrieve", "Score"), "collaborative": ("Retrieve", "Score"),
                   "success": ("Predict",), "ranker": ("Rank",)}
BATCHES = {"Retrieve": ("RetrieveBatch", common_pb2.RetrieveBatchRequest),
           "Score": ("ScoreBatch", common_pb2.ScoreBatchRequest),
           "Predict": ("PredictBatch", success_pb2.PredictBatchRequest),
           "Rank": ("RankBatch", ranker_pb2.RankBatchRequest)}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _channel_options(component: str) -> list:
    # round_robin + dns:/// targets spread calls over every replica; reads are retried once on
    # UNAVAILABLE (a replica that just went away); nothing mutating is retried. healthCheckConfig:
    # client-side grpc.health.v1 watch, so a replica that is still loading its bundle or draining
    # after SIGTERM (NOT_SERVING) gets no calls, even before DNS or the address list drops it.
    service_config = {"loadBalancingConfig": [{"round_robin": {}}],
                      "healthCheckConfig": {"serviceName": SERVICE_NAMES[component]}, "methodConfig": [{
        "name": [{"service": SERVICE_NAMES[component], "method": m}
                 for m in ("Retrieve", "Score", "Predict", "Rank", *(batch for batch, _ in BATCHES.values()))],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    # Reconnect to a replica that came back on the same address (a restarted container keeps its
    # pod IP) within 2 s, not gRPC's default back-off of up to 120 s.
    return [("grpc.service_config", json.dumps(service_config)), ("grpc.enable_retries", 1),
            ("grpc.so_reuseport", 0), ("grpc.max_reconnect_backoff_ms", 2000)]


class Fanout:
    """Channels and stubs, created once; `call` applies deadlines, batches the hot methods
    (gateway/batching.py) and turns failures into None."""

    def __init__(self, cfg):
        """`cfg`: the gateway's configuration (gateway.server.GatewayConfig): targets, budgets,
        client TLS, batching."""
        self.cfg = cfg
        self.channels = {c: self._channel(cfg, c) for c in COMPONENTS}
        self.stubs = {"content": content_pb2_grpc.ContentServiceStub(self.channels["content"]),
                      "collaborative": collaborative_pb2_grpc.CollaborativeServiceStub(self.channels["collaborative"]),
                      "success": success_pb2_grpc.SuccessServiceStub(self.channels["success"]),
                      "ranker": ranker_pb2_grpc.RankerServiceStub(self.channels["ranker"])}
        self.batchers = {} if cfg.batch_outstanding <= 0 else {
            (c, m): Batcher(partial(self._send_batch, c, m), max_outstanding=cfg.batch_outstanding,
                            max_batch=cfg.max_batch)
            for c, methods in BATCHED_METHODS.items() for m in methods}
        self.batch_sizes = {(c, m): telemetry.BATCH_SIZE.labels(c, m)  # labelled once, not per batch
                            for c, methods in BATCHED_METHODS.items() for m in methods}

    @staticmethod
    def _channel(cfg, component: str) -> grpc.aio.Channel:
        options = _channel_options(component)
        if cfg.client_tls.enabled:
            return grpc.aio.secure_channel(cfg.targets[component], cfg.client_tls.credentials(),
                                           options=options + cfg.client_tls.options())
        return grpc.aio.insecure_channel(cfg.targets[component], options=options)

    async def call(self, component: str, method: str, request, deadline: float):
        """(response, None) or (None, reason) for `component.method(request)`, in a batch when the
        method is batched. Never raises for a component's failure."""
        batcher = self.batchers.get((component, method))
        if batcher is not None:
            return await batcher.call(request, deadline)
        return await self.unary(component, method, request, deadline)

    async def unary(self, component: str, method: str, request, deadline: float):
        """One RPC, with the deadline left capped by the component's budget."""
        remaining = deadline - time.monotonic()
        timeout = min(self.cfg.budgets_ms[component] / 1000.0, remaining - 0.005)
        if timeout <= 0:
            return None, "DEADLINE_EXCEEDED"
        try:
            return await getattr(self.stubs[component], method)(request, timeout=timeout), None
        except grpc.aio.AioRpcError as e:
            log.warning("component call failed", extra={"fields": {"component": component, "method": method,
                                                                   "code": e.code().name}})
            return None, e.code().name

    async def _send_batch(self, component: str, method: str, requests: list, deadline: float) -> list:
        """One batch RPC for `requests` (a lone request: its plain RPC): one (answer, None) or
        (None, reason) each, in order."""
        self.batch_sizes[component, method].observe(len(requests))
        if len(requests) == 1:  # alone (the usual case under light load): no batch envelope to copy into
            return [await self.unary(component, method, requests[0], deadline)]
        batch_method, batch_message = BATCHES[method]
        resp, reason = await self.unary(component, batch_method, batch_message(requests=requests), deadline)
        if reason == "UNIMPLEMENTED":  # a component from before batch RPCs: single calls from now on
            log.warning("component has no batch RPCs; calling it one request at a time",
                        extra={"fields": {"component": component, "method": method}})
            self.batchers.pop((component, method), None)
            return list(await asyncio.gather(*(self.unary(component, method, r, deadline) for r in requests)))
        if resp is None:
            return [(None, reason)] * len(requests)
        if len(resp.answers) != len(requests):
            return [(None, "INTERNAL")] * len(requests)
        failed = {f.index: STATUS_NAMES.get(f.code, "UNKNOWN") for f in resp.failures}
        for code in failed.values():
            log.warning("component call failed", extra={"fields": {"component": component, "method": method,
                                                                   "code": code}})
        return [(None, failed[i]) if i in failed else (answer, None) for i, answer in enumerate(resp.answers)]

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        for ch in self.channels.values():
            await ch.close()
