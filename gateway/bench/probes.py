"""Health probes made as the kubelet makes its native gRPC probes, beside a load: does readiness hold
when a server is saturated?

The kubelet dials a NEW connection for every probe, calls `grpc.health.v1.Health/Check` for the
probe's service name, and counts the probe failed unless the answer is SERVING within
`timeoutSeconds` (dial included). Readiness pulls a pod out of its Service after
`failureThreshold` failures in a row; liveness restarts it. So what matters under load is the
longest run of consecutive failures against the threshold, and how close the slowest probe came
to the timeout.

The probes run in their own process, one thread per server, as the kubelet is its own process:
probing from the load generator's process would measure its own GIL and event loop, not the server's.

    python -m gateway.bench.probes --period 0.25 --timeout 1 gateway=127.0.0.1:50050=pmis.v1.RecommendationGateway ...

probes until its standard input closes, then prints one JSON summary per server on stdout.
`Prober` starts and stops that process from Python (`pmis bench --probes`, tests/e2e/test_probes_under_load.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class ProbeTarget:
    name: str
    address: str  # host:port
    service: str  # the health service name the probe asks for

    def arg(self) -> str:
        return f"{self.name}={self.address}={self.service}"

    @classmethod
    def parse(cls, text: str) -> "ProbeTarget":
        name, address, service = text.split("=", 2)
        return cls(name, address, service)


def probe_once(target: ProbeTarget, timeout: float) -> tuple[bool, float]:
    """One kubelet-style probe: (SERVING within `timeout` on a fresh connection, seconds it took)."""
    started = time.perf_counter()
    try:
        with grpc.insecure_channel(target.address) as channel:
            # wait_for_ready: the dial counts against the same timeout, as in the kubelet's probe.
            # (grpc.channel_ready_future polls connectivity and adds about 200 ms by itself.)
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=target.service), timeout=timeout, wait_for_ready=True).status
            ok = status == SERVING
    except grpc.RpcError:
        ok = False
    return ok, time.perf_counter() - started


@dataclass
class ProbeLog:
    """Every probe of one server: pass/fail and seconds, in order."""
    target: ProbeTarget
    results: list[tuple[bool, float]] = field(default_factory=list)

    def summary(self) -> dict:
        seconds = [s for _, s in self.results]
        q = lambda p: float(np.percentile(seconds, p)) * 1000 if seconds else float("nan")  # noqa: E731
        return {"server": self.target.name, "probes": len(self.results),
                "failed": sum(not ok for ok, _ in self.results),
                "longest_failure_run": longest_failure_run([ok for ok, _ in self.results]),
                "p50_ms": q(50), "p99_ms": q(99), "max_ms": max(seconds) * 1000 if seconds else float("nan")}


def longest_failure_run(passed: list[bool]) -> int:
    longest = run = 0
    for ok in passed:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    return longest


def probe_until(target: ProbeTarget, period: float, timeout: float, stop: threading.Event) -> ProbeLog:
    """Probe every `period` seconds (on a fixed schedule, like the kubelet) until `stop` is set."""
    log, due = ProbeLog(target), time.monotonic()
    while not stop.is_set():
        log.results.append(probe_once(target, timeout))
        due += period
        stop.wait(max(due - time.monotonic(), 0))
    return log


def run_probes(targets: list[ProbeTarget], period: float, timeout: float, stop: threading.Event) -> list[dict]:
    logs: dict[str, ProbeLog] = {}

    def probe(t: ProbeTarget) -> None:
        logs[t.name] = probe_until(t, period, timeout, stop)

    threads = [threading.Thread(target=probe, args=(t,), daemon=True) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return [logs[t.name].summary() for t in targets]


class Prober:
    """The probing process, started before a load and stopped after it: `start()`, then `stop()` -> summaries."""

    def __init__(self, targets: list[ProbeTarget], period: float, timeout: float):
        self.targets, self.period, self.timeout = targets, period, timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench.probes", "--period", str(self.period), "--timeout",
             str(self.timeout), *(t.arg() for t in self.targets)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[dict]:
        out, _ = self.proc.communicate(input="", timeout=self.timeout + self.period + 30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the probing process failed ({self.proc.returncode})")
        return json.loads(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kubelet-style gRPC health probes until stdin closes; JSON summary")
    p.add_argument("--period", type=float, default=1.0, help="seconds between probes of one server")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds a probe may take, dial included")
    p.add_argument("targets", nargs="+", metavar="NAME=HOST:PORT=SERVICE")
    a = p.parse_args(argv)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps(run_probes([ProbeTarget.parse(t) for t in a.targets], a.period, a.timeout, stop)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
