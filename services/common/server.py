"""The plumbing every component server shares, in one place.

- configuration from flags and environment variables (`PMIS_*`);
- a `ModelSlot` that resolves a bundle (registry alias, pinned version or folder), verifies and
  loads it, warms it, and swaps it in atomically: a request takes one reference to the current
  model at its start, so a reload never fails or mixes versions inside an in-flight call;
- `grpc.health.v1` per service name (NOT_SERVING until the bundle is loaded and again from the
  moment SIGTERM arrives), server reflection, Prometheus metrics, JSON logs without personal data;
- SIGTERM: health NOT_SERVING, optional drain delay, then `stop(grace)` so in-flight calls finish.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from models.bundle.format import Bundle, BundleError
from models.bundle.reading import load_bundle
from models.bundle.registry import Registry, RegistryError, open_registry, registry_exists
from pmis.v1 import common_pb2
from services.common import admission, guard, listening, telemetry, tls
from services.common.auth import admin_only
from services.common.config import add_admission_flags, add_listen_flags, add_shutdown_flags, flag
from services.common.errors import RpcError, failed_precondition, invalid_argument, unavailable
from services.common.tls import ServerTLS

log = logging.getLogger("pmis.server")


@dataclass
class ServerConfig:
    component: str
    host: str
    port: int
    metrics_port: int
    bundles: Path
    alias: str
    version: int | None
    path: Path | None
    grace: float
    drain: float
    workers: int
    max_connection_age_ms: int
    watch: float = 0.0  # seconds between registry polls for a moved alias; 0 = no watching
    # Admission control (services/common/admission.py): unary calls admitted at once, queued or
    # running; beyond it RESOURCE_EXHAUSTED at once. None = admission.component_defaults(workers)
    # (2 x workers); 0 = unlimited.
    max_in_flight: int | None = None
    min_deadline_ms: int = admission.COMPONENT_MIN_DEADLINE_MS  # less time left: refused unstarted; 0 = off
    ports_file: Path | None = None  # listening.write_ports: where the bound ports are reported
    tls: ServerTLS = ServerTLS()  # plaintext unless a certificate is configured


def parse_config(component: str, default_port: int, default_metrics_port: int, argv=None) -> ServerConfig:
    p = argparse.ArgumentParser(prog=f"pmis-{component}", description=f"PMIS {component} gRPC server")
    add_listen_flags(p, default_port, default_metrics_port)
    tls.add_server_args(p)
    flag(p, "--bundles", "BUNDLES", "var/bundles", type=Path, help="bundle root holding registry.db")
    flag(p, "--alias", "BUNDLE_ALIAS", "champion", help="registry alias to serve")
    flag(p, "--version", "BUNDLE_VERSION", type=int, help="pinned version")
    flag(p, "--bundle-path", "BUNDLE_PATH", type=Path, help="serve this bundle folder")
    add_shutdown_flags(p, grace=5.0, max_connection_age_ms=60_000)
    flag(p, "--workers", "WORKERS", 8, type=int, help="RPC threads")
    flag(p, "--watch", "WATCH_SECONDS", 2.0, type=float,
         help="poll the registry this often and reload when the served alias moves (activation, rollback); 0 = off")
    add_admission_flags(p, max_in_flight=None, min_deadline_ms=admission.COMPONENT_MIN_DEADLINE_MS,
                        max_in_flight_note=f"; default {admission.COMPONENT_IN_FLIGHT_PER_WORKER} x --workers")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be at least 1")
    max_in_flight = admission.component_defaults(a.workers).max_in_flight if a.max_in_flight is None else a.max_in_flight
    if max_in_flight < 0:
        p.error("--max-in-flight must be >= 0 (0 = unlimited)")
    if a.min_deadline_ms < 0:
        p.error("--min-deadline-ms must be >= 0 (0 = off)")
    return ServerConfig(component, a.host, a.port, a.metrics_port, a.bundles, a.alias, a.version, a.bundle_path,
                        a.grace, a.drain, a.workers, a.max_connection_age_ms, a.watch, max_in_flight,
                        a.min_deadline_ms, a.ports_file, tls.server_tls(a, p))


@dataclass
class Loaded:
    """A verified bundle turned into a ready model, plus the identity every answer reports."""
    model: Any
    bundle: Bundle
    loaded_at: datetime
    _version: common_pb2.ModelVersion | None = None

    def version_message(self) -> common_pb2.ModelVersion:
        """The bundle's identity, built once (every answer carries it)."""
        if self._version is None:
            ref = self.bundle.ref
            ts = timestamp_pb2.Timestamp()
            ts.FromDatetime(self.loaded_at)
            self._version = common_pb2.ModelVersion(
                component=ref.component, version=ref.version, data_version=ref.data_version or "",
                content_hash=ref.content_hash, run_id=ref.run_id or "", loaded_at=ts)
        return self._version


class ModelSlot:
    def __init__(self, component: str, build: Callable[[Bundle], Any], cfg: ServerConfig):
        self.component, self.build, self.cfg = component, build, cfg
        self._current: Loaded | None = None
        self._reload_lock = threading.Lock()  # one load at a time; serving never waits on it
        self._alias_seen: int | None = None   # the alias's version at the last load/poll by alias
        self._registry: Registry | None = None

    def resolve(self, *, version: int | None = None, alias: str | None = None, path: Path | None = None) -> Path:
        if path is not None:
            return Path(path)
        if not registry_exists(self.cfg.bundles):
            raise failed_precondition(f"no registry at {Path(self.cfg.bundles) / 'registry.db'}; "
                                      "train first (`pmis train`)")
        try:
            registry = self._registry = self._registry or open_registry(self.cfg.bundles, read_only=True)
            row = registry.get(self.component, version) if version is not None else registry.resolve(self.component, alias)
        except RegistryError as e:
            raise failed_precondition(str(e)) from None
        return Path(row["path"])

    def load(self, **target) -> tuple[Loaded | None, Loaded]:
        """Verify, load and warm a bundle, then swap it in; the old model answers until the swap."""
        if not target:
            target = {"path": self.cfg.path} if self.cfg.path else (
                {"version": self.cfg.version} if self.cfg.version is not None else {"alias": self.cfg.alias})
        with self._reload_lock:
            path = self.resolve(**target)
            try:
                bundle = load_bundle(path)
            except BundleError as e:
                raise failed_precondition(f"bundle refused: {e}") from None
            if bundle.ref.component != self.component:
                raise failed_precondition(f"{path} is a {bundle.ref.component} bundle, not {self.component}")
            started = time.perf_counter()
            model = self.build(bundle)
            loaded = Loaded(model, bundle, datetime.now(timezone.utc))
            previous, self._current = self._current, loaded  # the swap: one reference assignment
            if target.get("alias") == self.cfg.alias:
                self._alias_seen = bundle.ref.version
            telemetry.bundle_loaded(self.component, bundle.ref, bundle.manifest.get("created_at"))
            log.info("bundle loaded", extra={"fields": {"component": self.component, "version": bundle.ref.version,
                                                        "content_hash": bundle.ref.content_hash[:12],
                                                        "build_ms": round(1000 * (time.perf_counter() - started), 1)}})
            return previous, loaded

    @property
    def watching(self) -> bool:
        """Only a slot that serves an alias follows it (a pinned version or folder stays put)."""
        return self.cfg.path is None and self.cfg.version is None and self.cfg.watch > 0

    def check_alias(self) -> bool:
        """One registry poll: reload if the served alias has moved since the last load or poll.

        It follows *moves* of the alias (Activate, Rollback, `pmis models activate`), so a
        manual `Reload` to another version stays in place until the alias moves again. A
        version that fails to load is logged once and not retried until the alias moves again;
        the current model keeps serving. Returns True when a new version was swapped in.
        """
        if not registry_exists(self.cfg.bundles):
            return False
        try:
            self._registry = self._registry or open_registry(self.cfg.bundles, read_only=True)
            version = int(self._registry.resolve(self.component, self.cfg.alias)["version"])
        except Exception as e:  # noqa: BLE001 - a busy or missing registry is retried next poll
            log.warning("registry poll failed: %s", e, extra={"fields": {"component": self.component}})
            return False
        if version == self._alias_seen:
            return False
        previous_seen, self._alias_seen = self._alias_seen, version
        try:
            self.load(alias=self.cfg.alias)
        except RpcError as e:
            log.error("alias %s moved to v%s but that bundle was refused; still serving the previous one: %s",
                      self.cfg.alias, version, e.message, extra={"fields": {"component": self.component}})
            return False
        log.info("alias moved: reloaded", extra={"fields": {"component": self.component, "alias": self.cfg.alias,
                                                            "from": previous_seen, "to": version}})
        return True

    def get(self) -> Loaded:
        current = self._current
        if current is None:
            raise unavailable(f"{self.component}: model not loaded yet")
        return current


MAX_RELOAD_TARGET = 4096  # characters of an alias or a bundle path


class ModelAdmin:
    """ModelInfo and Reload, identical on every component server.

    List it FIRST among a servicer's bases: the generated base class defines every RPC as
    UNIMPLEMENTED, and whichever base comes first in the MRO wins.
    """
    slot: ModelSlot

    def ModelInfo(self, request, context):
        return self.slot.get().version_message()

    @admin_only
    def Reload(self, request, context):
        which = request.WhichOneof("target")
        if which is None:
            raise invalid_argument([("target", "set one of version, alias or path")])
        if which == "version" and request.version < 1:
            raise invalid_argument([("version", "must be >= 1")])
        if which in ("alias", "path"):
            value = getattr(request, which)
            if not value or len(value) > MAX_RELOAD_TARGET or "\x00" in value:
                raise invalid_argument([(which, f"must be 1..{MAX_RELOAD_TARGET} characters without NUL")])
        previous, current = self.slot.load(**{which: getattr(request, which)})
        return common_pb2.ReloadResponse(previous=previous.version_message() if previous else None,
                                         current=current.version_message())


class ComponentServer:
    def __init__(self, cfg: ServerConfig, service_name: str, servicer, add_to_server: Callable):
        self.cfg, self.service_name, self.servicer = cfg, service_name, servicer
        pool = futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix=cfg.component)
        limits = admission.component_defaults(cfg.workers)
        self.limiter = admission.Limiter(cfg.component,
                                         limits.max_in_flight if cfg.max_in_flight is None else cfg.max_in_flight,
                                         cfg.min_deadline_ms)
        self.server = grpc.server(
            pool,
            # Admission FIRST: it must see every call before anything wraps the handler (see
            # admission.AdmissionInterceptor); refusals never reach the pool or the servicer.
            interceptors=[admission.AdmissionInterceptor(self.limiter, pool),
                          guard.ServerGuard(cfg.component, cfg.tls.allowed_callers)],
            options=[("grpc.so_reuseport", 0),
                     ("grpc.max_connection_age_ms", cfg.max_connection_age_ms),
                     ("grpc.max_connection_age_grace_ms", int(cfg.grace * 1000) + 1000),
                     *guard.server_options()])
        add_to_server(servicer, self.server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = tls.add_port(self.server, f"{cfg.host}:{cfg.port}", cfg.tls, cfg.component)
        self.stopped = threading.Event()
        self.ready = threading.Event()  # the bundle is loaded: health says SERVING
        self.load_error: Exception | None = None

    def _set_health(self, status) -> None:
        for name in ("", self.service_name):
            self.health.set(name, status)

    def start(self) -> "ComponentServer":
        self.server.start()
        self.metrics_port = (telemetry.start_metrics_server(self.cfg.metrics_port, self.cfg.host)
                             if self.cfg.metrics_port else 0)
        listening.write_ports(self.cfg.ports_file, self.port, self.metrics_port)
        log.info("listening", extra={"fields": {"component": self.cfg.component, "port": self.port,
                                                "metrics_port": self.metrics_port}})
        threading.Thread(target=self._initial_load, daemon=True, name="initial-load").start()
        return self

    def _initial_load(self) -> None:
        try:
            self.servicer.slot.load()
        except Exception as e:  # a server without a valid bundle must not pretend to be healthy
            self.load_error = e
            log.error("initial bundle load failed: %s", e, extra={"fields": {"component": self.cfg.component}})
            self.stop()
            return
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.ready.set()
        slot = self.servicer.slot
        if slot.watching:
            threading.Thread(target=self._watch_registry, daemon=True, name="registry-watch").start()

    def _watch_registry(self) -> None:
        while not self.stopped.wait(self.cfg.watch):
            try:
                self.servicer.slot.check_alias()
            except Exception:  # noqa: BLE001 - the watch must outlive any one bad poll
                log.exception("registry watch failed", extra={"fields": {"component": self.cfg.component}})

    def stop(self) -> None:
        """NOT_SERVING first, then drain, then let in-flight calls finish within the grace period."""
        if self.stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        if self.cfg.drain:
            time.sleep(self.cfg.drain)
        self.server.stop(self.cfg.grace).wait()
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        def handle(signum, frame):
            log.info("signal received, shutting down", extra={"fields": {"signal": signum}})
            threading.Thread(target=self.stop, daemon=True).start()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def wait(self) -> int:
        self.stopped.wait()
        return 1 if self.load_error else 0


def run_component(component: str, service_name: str, default_port: int, default_metrics_port: int,
                  make_servicer: Callable[[ServerConfig], Any], add_to_server: Callable, argv=None) -> int:
    from services.common.logs import setup_logging

    cfg = parse_config(component, default_port, default_metrics_port, argv)
    setup_logging(component)
    server = ComponentServer(cfg, service_name, make_servicer(cfg), add_to_server)
    server.install_signal_handlers()
    server.start()
    return server.wait()
