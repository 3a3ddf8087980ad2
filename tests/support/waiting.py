"""Wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               proc: subprocess.Popen | None = None, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned); fail naming `what` after
    `timeout` seconds, or at once if `proc` exits meanwhile."""
    end = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def health_status(target: str, service: str, timeout: float = 2.0) -> int | None:
    """The health status of `service` at `target`, or None when the server does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_serving(target: str, service: str, timeout: float = 60.0, proc: subprocess.Popen | None = None,
                 failed: Callable[[], object] | None = None) -> None:
    """Until the standard health check says `service` is SERVING. `failed()` returning something
    truthy (an in-process server's load error) stops the wait at once."""
    def serving() -> bool:
        if failed is not None and (error := failed()):
            raise AssertionError(f"{service}: {error}")
        return health_status(target, service) == health_pb2.HealthCheckResponse.SERVING
    wait_until(serving, timeout, f"{service} at {target} SERVING", proc, interval=0.1)
