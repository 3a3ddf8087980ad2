"""The `pmis bench` entry: its parsed arguments to a run, the report on stdout, the exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.bench.cpu import SERVERS
from gateway.bench.probes import ProbeTarget
from gateway.bench.report import json_safe, report
from gateway.bench.run import BenchConfig, run_bench
from services.common.tls import ClientTLS
from services.components import SERVICE_NAMES
from services.launcher import Ports


def metrics_ports(base: int, overrides: list[str] | None) -> dict[str, int]:
    ports = {n: base + i for i, n in enumerate(SERVERS)}
    for item in overrides or []:
        name, _, port = item.partition("=")
        if name not in ports or not port.isdigit():
            raise ValueError(f"--metrics-ports wants NAME=PORT with NAME one of {', '.join(SERVERS)}: {item!r}")
        ports[name] = int(port)
    return ports


def main_bench(args) -> int:
    try:
        ports = metrics_ports(args.metrics_base, args.metrics_ports)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    catalog = Path(args.catalog or Path(args.data) / "catalog.db")
    if not catalog.is_file():  # sqlite3 would create an empty one and fail on its missing tables
        print(f"error: no catalog at {catalog} (pmis generate writes one; or pass --catalog)", file=sys.stderr)
        return 2
    cfg = BenchConfig(target=args.target, catalog=catalog,
                      concurrency=args.concurrency, duration=args.duration, slices=args.slices, rates=args.rate or [],
                      open_duration=args.open_duration, deadline=args.deadline_ms / 1000, k=args.k,
                      explain=not args.no_explain, profile_only=args.profile_only, shortlist=args.shortlist,
                      metrics_host=args.metrics_host or args.target.rsplit(":", 1)[0], metrics_ports=ports,
                      echo=not args.no_echo, seed=args.seed,
                      tls=ClientTLS(args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name),
                      probes=probe_targets(args.target) if args.probes else [], probe_period=args.probe_period,
                      probe_timeout=args.probe_timeout)
    result = run_bench(cfg, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    if not answered_any(result):
        print(f"error: the gateway at {cfg.target} answered no request", file=sys.stderr)
        return 1
    return 0


def probe_targets(gateway_target: str) -> list[ProbeTarget]:
    """Every server of `pmis up --port P` (gateway on P, the others on consecutive ports)."""
    host, _, port = gateway_target.rpartition(":")
    ports = Ports.consecutive(int(port))
    return [ProbeTarget(name, f"{host}:{p}", SERVICE_NAMES[name]) for name, p in ports.grpc.items()]


def answered_any(result: dict) -> bool:
    """Whether any phase got an OK answer (a bench of nothing but errors is a failed bench)."""
    closed = any(row["gateway"]["requests"] for row in result["closed"])
    opened = any(row["ok"] + row["ok_degraded"] for row in result["open"])
    shortlisted = bool(result["shortlist"] and result["shortlist"]["ok"])
    return closed or opened or shortlisted
