"""The four component servers and the asyncio gateway in-process, on loopback.

Each component is a real `ComponentServer` on a port it binds itself; the gateway is its real
front (gateway/front.py: sync server, admission control) over an event loop on a background
thread. Tests talk to them over plain
synchronous channels, as a client would.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.catalog_backend import open_catalog
from gateway.front import Front
from gateway.server import Gateway, GatewayConfig
from models.components import COMPONENTS
from pmis.v1 import (collaborative_pb2_grpc, content_pb2_grpc, gateway_pb2, gateway_pb2_grpc, ranker_pb2_grpc,
                     success_pb2_grpc)
from services.collaborative import server as collaborative_server
from services.common.errors import field_violations
from services.common.tls import ClientTLS, ServerTLS
from services.common.server import ComponentServer, ServerConfig
from services.content import server as content_server
from services.ranker import server as ranker_server
from services.success import server as success_server
from tests.support.waiting import wait_until

SERVERS = {
    "content": (content_server, content_pb2_grpc.add_ContentServiceServicer_to_server),
    "collaborative": (collaborative_server, collaborative_pb2_grpc.add_CollaborativeServiceServicer_to_server),
    "success": (success_server, success_pb2_grpc.add_SuccessServiceServicer_to_server),
    "ranker": (ranker_server, ranker_pb2_grpc.add_RankerServiceServicer_to_server),
}
TIMEOUT = 30.0


def component_config(component: str, bundles: Path, server_tls: ServerTLS = ServerTLS()) -> ServerConfig:
    # port 0: the server binds a free port itself (ComponentServer.port), no bind-then-release race
    return ServerConfig(component=component, host="127.0.0.1", port=0, metrics_port=0, bundles=bundles,
                        alias="champion", version=None, path=None, grace=0.2, drain=0.0, workers=4,
                        max_connection_age_ms=60_000, tls=server_tls)


class Components:
    """The four component servers, in-process, each on its own free port."""

    def __init__(self, bundles: Path, server_tls: ServerTLS = ServerTLS()):
        self.servers: dict[str, ComponentServer] = {}
        try:
            for name, (module, add) in SERVERS.items():
                cfg = component_config(name, bundles, server_tls)
                self.servers[name] = ComponentServer(cfg, module.SERVICE, module.make_servicer(cfg), add).start()
            for name, s in self.servers.items():
                wait_until(lambda s=s: s.load_error or s.ready.is_set(), 60, f"{name} SERVING")
                assert s.load_error is None, s.load_error
        except BaseException:
            self.stop()  # no server left behind when one fails to start
            raise

    @property
    def targets(self) -> dict[str, str]:
        return {n: f"127.0.0.1:{s.port}" for n, s in self.servers.items()}

    def stop(self, *names: str) -> None:
        for n in names or list(self.servers):
            self.servers[n].stop()


class GatewayRunner:
    """The gateway's front and its event loop on a background thread, as `serve` runs them."""

    def __init__(self, targets: dict, catalog: Path, dial_tls: ClientTLS = ClientTLS(), **config):
        """`config`: GatewayConfig fields; `dial_tls`: how the tests' own channel dials this gateway."""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway-loop")
        self.thread.start()
        # generous budgets by default: a busy 2-core CI box must not turn answers "degraded"
        defaults = {"budgets_ms": {c: 10_000 for c in COMPONENTS}, "default_deadline_ms": 20_000}
        self.cfg = GatewayConfig(host="127.0.0.1", port=0, metrics_port=0, catalog=catalog, targets=dict(targets),
                                 **{**defaults, **config})
        try:
            self.gateway = self.run(self._start())
            self.front = Front(self.gateway, self.loop, self.cfg)
            self.front.start()
            self.port = self.front.port
        except BaseException:
            self._stop_loop()
            raise
        self.channel = (grpc.secure_channel(f"127.0.0.1:{self.port}", dial_tls.credentials(), dial_tls.options())
                        if dial_tls.enabled else grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        self.stub = gateway_pb2_grpc.RecommendationGatewayStub(self.channel)

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        return Gateway(self.cfg, open_catalog(self.cfg.database_url or self.cfg.catalog))  # aio channels: this loop

    async def _stop(self):
        await self.front.stop(0.2)
        await self.gateway.fanout.close()
        self.gateway.catalog.close()

    def close(self) -> None:
        self.channel.close()
        try:
            self.run(self._stop())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # ------------------------------------------------------------------ calls
    def recommend(self, metadata=None, **kw) -> gateway_pb2.RecommendResponse:
        return self.stub.Recommend(gateway_pb2.RecommendRequest(**kw), timeout=TIMEOUT, metadata=metadata)

    def fails(self, method: str, request, code: grpc.StatusCode) -> tuple[str, list[tuple[str, str]]]:
        with pytest.raises(grpc.RpcError) as info:
            getattr(self.stub, method)(request, timeout=TIMEOUT)
        e = info.value
        assert e.code() == code, f"{method}: expected {code.name}, got {e.code().name}: {e.details()}"
        return e.details(), field_violations(e)


@dataclass
class System:
    components: Components
    gateway: GatewayRunner
    catalog: Path


@contextmanager
def running_system(small_system, catalog: Path | None = None, **config):
    """The small system's components and a gateway over `catalog` (default: the system's own;
    a test whose requests write to it passes a copy)."""
    catalog = catalog or small_system.catalog
    components = Components(small_system.bundles)
    runner = None
    try:
        runner = GatewayRunner(components.targets, catalog, **config)
        yield System(components, runner, catalog)
    finally:
        if runner is not None:
            runner.close()
        components.stop()
