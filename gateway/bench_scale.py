"""Serving at scale: start-up time to SERVING and memory of every server, then `Recommend` latency.

    python -m gateway.bench_scale --home /tmp/scale [--port 52050 --metrics-port 9250] [--duration 20]

Starts the six servers of `pmis up` (services.launcher.Cluster) on a prepared PMIS_HOME (data +
catalog + champion bundles, e.g. after `pmis generate --students 1000000 --internships 100000` and
`pmis train`), all at once as `pmis up` does, and measures for each server the seconds from its
process start to grpc.health.v1 SERVING (polled every 50 ms, all servers in parallel), then its
resident memory (VmRSS, and the peak VmHWM, from /proc/PID/status) after a warm-up, then runs
`pmis bench`'s closed loop at concurrency 1 for known students and for profile-only requests
(p50/p99 and CPU ms per request per server). Everything is stopped with SIGTERM at the end.
`tests/e2e/test_scale_serving.py` runs the same measurement under pytest (`-m scale`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.components import SERVERS, SERVICE_NAMES
from services.launcher import Cluster, Ports


@dataclass
class Startup:
    seconds: dict = field(default_factory=dict)      # server -> seconds from process start to SERVING
    rss_mb: dict = field(default_factory=dict)       # server -> VmRSS after warm-up
    peak_rss_mb: dict = field(default_factory=dict)  # server -> VmHWM
    pids: dict = field(default_factory=dict)


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (NaN when it is gone)."""
    out = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out["VmRSS"], out["VmHWM"]


def _poll_serving(target: str, service: str, started: float, deadline: float, proc, out: dict, name: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service),
                              timeout=0.5).status == health_pb2.HealthCheckResponse.SERVING:
                    out[name] = time.monotonic() - started
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)


def start_measured(cluster: Cluster, timeout: float = 300.0) -> Startup:
    """Start every server at once (as `pmis up` does) and time each to SERVING. A server that does
    not get there within `timeout` (or dies) has no entry in `seconds`."""
    result, started, threads = Startup(), {}, []
    for name in SERVERS:
        started[name] = time.monotonic()
        proc = cluster.start(name)
        result.pids[name] = proc.pid
    for name in SERVERS:
        t = threading.Thread(target=_poll_serving, args=(
            cluster.ports.target(name), SERVICE_NAMES[name], started[name], started[name] + timeout,
            cluster.procs[name], result.seconds, name), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return result


def record_memory(result: Startup) -> None:
    for name, pid in result.pids.items():
        result.rss_mb[name], result.peak_rss_mb[name] = proc_memory_mb(pid)


def bench(target: str, catalog: Path, metrics_ports: dict, profile_only: bool, duration: float,
          concurrency: int = 1) -> dict:
    """`pmis bench` closed loop at one concurrency, no echo, no open loop: the gateway row."""
    from gateway.bench.run import BenchConfig, run_bench

    cfg = BenchConfig(target=target, catalog=catalog, concurrency=[concurrency], duration=duration, rates=[],
                      profile_only=profile_only, metrics_ports=metrics_ports, echo=False)
    return run_bench(cfg, log=lambda *a, **k: None)["closed"][0]["gateway"]


def warm_up(target: str, catalog: Path, metrics_ports: dict, seconds: float = 5.0) -> None:
    """A few seconds of both request kinds, so lazily loaded pages and caches count in RSS."""
    for profile_only in (False, True):
        bench(target, catalog, metrics_ports, profile_only, seconds / 2)


def run(home: Path, ports: Ports, duration: float, timeout: float = 300.0, log=print) -> dict:
    catalog = home / "data" / "catalog.db"
    cluster = Cluster(home, home / "bundles", catalog, ports, log_dir=home / "logs")
    out: dict = {"home": str(home), "ports": ports.grpc}
    try:
        log("starting the six servers ...", flush=True)
        startup = start_measured(cluster, timeout)
        out["startup_s"] = startup.seconds
        missing = [n for n in SERVERS if n not in startup.seconds]
        if missing:
            out["not_serving"] = missing
            return out
        log("SERVING after " + ", ".join(f"{n} {s:.1f}s" for n, s in startup.seconds.items()), flush=True)
        target = ports.target("gateway")
        warm_up(target, catalog, ports.metrics)
        record_memory(startup)
        out["rss_mb"], out["peak_rss_mb"] = startup.rss_mb, startup.peak_rss_mb
        for kind, profile_only in (("known", False), ("profile_only", True)):
            log(f"bench {kind}, concurrency 1, {duration:g}s ...", flush=True)
            out[kind] = bench(target, catalog, ports.metrics, profile_only, duration)
        return out
    finally:
        cluster.stop_all()


def table(result: dict) -> str:
    lines = ["| server | start -> SERVING s | RSS MB | peak RSS MB |", "|---|---|---|---|"]
    for n in SERVERS:
        s = result.get("startup_s", {}).get(n)
        lines.append(f"| {n} | {'-' if s is None else f'{s:.1f}'} | {result.get('rss_mb', {}).get(n, float('nan')):.0f} "
                     f"| {result.get('peak_rss_mb', {}).get(n, float('nan')):.0f} |")
    for kind in ("known", "profile_only"):
        if kind in result:
            r = result[kind]
            per = r["cpu_ms_per_request"].get("per_server", {})
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v is not None)
            lines.append(f"\n{kind}: {r['requests']} requests, {r['errors']} errors, {r['degraded']} degraded, "
                         f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; CPU ms/request: {cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True, help="prepared PMIS_HOME (data/catalog.db, bundles/)")
    p.add_argument("--port", type=int, default=50050, help="gateway port; the others follow as in `pmis up`")
    p.add_argument("--metrics-port", type=int, default=9100)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per bench kind")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on a server after this many seconds")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    result = run(a.home, Ports.consecutive(a.port, a.metrics_port), a.duration, a.timeout,
                 log=lambda *x, **k: print(*x, file=sys.stderr, **k))
    print(table(result))
    if a.json:
        from gateway.bench.report import json_safe

        Path(a.json).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return 0 if "not_serving" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
