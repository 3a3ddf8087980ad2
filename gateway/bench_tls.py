"""What transport security costs: the same benchmark against the same bundles, once with every
server in plaintext and once with TLS everywhere (the gateway serving TLS, the components
requiring client certificates and answering only the gateway), in one run, side by side.

    .venv/bin/python -m gateway.bench_tls [--home var] [--concurrency 1 8] [--duration 10]

Certificates come from a throw-away development CA (services/common/devcerts.py, needs the dev
extra's `cryptography`). Prints CPU milliseconds per Recommend of each server and latency.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from gateway.bench.run import BenchConfig, run_bench
from models.bundle.signing import ensure_signing_key
from services.common.tls import ClientTLS
from services.components import COMPONENT_MODULES
from services.launcher import Cluster, Ports

SERVERS = [*COMPONENT_MODULES, "gateway"]


def tls_environments(folder: Path) -> tuple[dict, ClientTLS]:
    """Per-server environment for mTLS between gateway and components, and the bench's client."""
    from services.common.devcerts import Authority

    ca = Authority(folder)
    server, gateway = ca.issue("pmis-server", server=True), ca.issue("gateway", server=False)
    serving = {"PMIS_TLS_CERT": str(server.cert), "PMIS_TLS_KEY": str(server.key)}
    component = {**serving, "PMIS_TLS_CLIENT_CA": str(ca.path), "PMIS_TLS_ALLOWED_CALLERS": "gateway"}
    dialing = {"PMIS_TLS_CA": str(ca.path), "PMIS_TLS_CLIENT_CERT": str(gateway.cert),
               "PMIS_TLS_CLIENT_KEY": str(gateway.key)}
    env = {name: component for name in COMPONENT_MODULES}
    env["gateway"] = {**serving, **dialing}
    return env, ClientTLS(ca.path, gateway.cert, gateway.key)


def measure(home: Path, args, server_env: dict, tls: ClientTLS, log_dir: Path) -> dict:
    cluster = Cluster(home, home / "bundles", home / "data" / "catalog.db", Ports.any(), log_dir=log_dir,
                      server_env=server_env)
    try:
        cluster.start_all(servers=SERVERS, probe=tls.credentials() if tls.enabled else None)
        cfg = BenchConfig(target=cluster.ports.target("gateway"), catalog=home / "data" / "catalog.db",
                          concurrency=args.concurrency, duration=args.duration, rates=[], open_duration=0,
                          deadline=2.0, k=10, explain=True, profile_only=False, shortlist=0,
                          metrics_host="127.0.0.1", metrics_ports={n: cluster.ports.metrics[n] for n in SERVERS},
                          echo=False, tls=tls)
        return run_bench(cfg, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    finally:
        cluster.stop_all()


def table(results: dict) -> str:
    lines = [f"{'transport':10s} {'conc':>4s} {'rps':>7s} {'errors':>6s} {'degr.':>5s} {'p50 ms':>7s} {'p99 ms':>7s} "
             f"{'CPU ms/req':>10s}  by server"]
    for mode, result in results.items():
        for row in result["closed"]:
            g = row["gateway"]
            cpu = g["cpu_ms_per_request"]
            per = ", ".join(f"{n} {v:.1f}" if v is not None else f"{n} ?" for n, v in cpu["per_server"].items())
            total = "?" if cpu["sum"] is None else f"{cpu['sum']:.1f}"
            lines.append(f"{mode:10s} {row['concurrency']:4d} {g['rps']:7.1f} {g['errors']:6d} {g['degraded']:5d} "
                         f"{g['p50_ms']:7.1f} {g['p99_ms']:7.1f} "
                         f"{total:>10s}  {per}; client {cpu['client']:.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench_tls", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, default=Path("var"), help="PMIS_HOME with data/ and bundles/")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    ensure_signing_key(args.home / "signing-key")  # as every pmis command: the bundles are signed with it
    with tempfile.TemporaryDirectory(prefix="pmis-bench-tls-") as tmp:
        tmp = Path(tmp)
        env, client = tls_environments(tmp / "pki")
        results = {"plaintext": measure(args.home, args, {}, ClientTLS(), tmp / "plain"),
                   "mTLS": measure(args.home, args, env, client, tmp / "tls")}
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
