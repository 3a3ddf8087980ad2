"""Prometheus metrics: requests and latency by method and status code, the bundle served, and load shedding."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("pmis_grpc_requests_total", "gRPC requests handled", ["component", "method", "code"])
LATENCY = Histogram("pmis_grpc_request_seconds", "gRPC request latency", ["component", "method", "code"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1, 2.5, 5))
BUNDLE_VERSION = Gauge("pmis_bundle_version", "Version of the bundle being served", ["component"])
BUNDLE_INFO = Gauge("pmis_bundle_info", "Bundle being served (value 1)", ["component", "version", "data_version",
                                                                          "content_hash"])
# The served bundle's age, for the alert on a champion older than the retraining threshold
# (k8s/components/monitoring): the manifest's created_at, which the retraining trigger ages too.
BUNDLE_TRAINED = Gauge("pmis_bundle_trained_timestamp_seconds",
                       "When the bundle being served was built by its training run (Unix seconds)", ["component"])
# Requests per batch RPC the gateway sends (gateway/batching.py): 1 under light load.
BATCH_SIZE = Histogram("pmis_gateway_batch_size", "Requests per batch RPC to a component", ["component", "method"],
                       buckets=(1, 2, 4, 8, 16, 32, 64))
DEGRADED = Counter("pmis_gateway_degraded_total", "Gateway answers that skipped a component", ["component"])
# Admission control (services/common/admission.py): a refused call did no work. reason: overload
# (max in flight reached, RESOURCE_EXHAUSTED) | deadline (too little time left, DEADLINE_EXCEEDED).
SHED = Counter("pmis_grpc_shed_total", "gRPC requests refused by admission control before any work",
               ["component", "method", "reason"])
IN_FLIGHT = Gauge("pmis_grpc_in_flight", "Admitted unary gRPC requests not finished (queued or running)",
                  ["component"])
MAX_IN_FLIGHT = Gauge("pmis_grpc_max_in_flight", "Admission limit on requests in flight (0 = unlimited)",
                      ["component"])

_started_ports: dict[int, int] = {}  # asked for -> bound (one metrics server per process and port)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on `port` (listening.ANY_METRICS_PORT: any free one); the port it listens on."""
    if port not in _started_ports:
        httpd, _ = start_http_server(max(port, 0), addr=host)
        _started_ports[port] = httpd.server_port
    return _started_ports[port]


def bundle_loaded(component: str, ref, created_at: str | None = None) -> None:
    """The bundle now served; `created_at` is its manifest's (ISO 8601), absent in hand-made manifests."""
    BUNDLE_INFO.clear()
    BUNDLE_INFO.labels(component, str(ref.version), ref.data_version or "", ref.content_hash[:12]).set(1)
    BUNDLE_VERSION.labels(component).set(ref.version)
    BUNDLE_TRAINED.clear()  # no stale age from the previous bundle if this one has none
    try:
        trained = datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):  # none, or unreadable: a metric never refuses a bundle the loader took
        return
    BUNDLE_TRAINED.labels(component).set(trained)


def observe(component: str, method: str, code: str, seconds: float) -> None:
    REQUESTS.labels(component, method, code).inc()
    LATENCY.labels(component, method, code).observe(seconds)
