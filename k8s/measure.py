"""Measure what each server uses, to size the Deployments' resource requests and limits.

Starts the five servers exactly as `pmis up` does (services.launcher.Cluster, loopback, free
ports) on an existing PMIS_HOME (default ./var, the default 5,000 x 1,000 system of `make run`),
waits for SERVING, then drives a closed-loop `Recommend` load through the gateway and samples
every server's /proc/<pid>/status (VmRSS now, VmHWM = peak RSS) and /proc/<pid>/stat (user +
system CPU seconds). Prints one row per server: RSS idle, peak RSS under load, CPU cores used
during the load, CPU milliseconds per gateway request.

    .venv/bin/python k8s/measure.py [--home var] [--concurrency 4] [--duration 20]

Linux only (reads /proc). Run it on the data size you deploy: RSS grows with the bundles
(memory-mapped arrays count as resident once touched) and the catalog.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from services.components import SERVERS  # noqa: E402
from services.launcher import Cluster, Ports  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    # fields after the ")" of the command name: state is field 3, utime 14, stime 15 (1-based)
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def load(target: str, students: list[str], concurrency: int, duration: float) -> tuple[int, int]:
    from pmis.v1 import gateway_pb2, gateway_pb2_grpc

    sent, failed, lock = [0], [0], threading.Lock()
    end = time.monotonic() + duration

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(target) as ch:
            stub = gateway_pb2_grpc.RecommendationGatewayStub(ch)
            while time.monotonic() < end:
                ok = True
                try:
                    stub.Recommend(gateway_pb2.RecommendRequest(student_id=rng.choice(students), k=10), timeout=5)
                except grpc.RpcError:
                    ok = False
                with lock:
                    sent[0] += 1
                    failed[0] += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0], failed[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, default=Path(os.environ.get("PMIS_HOME", ROOT / "var")))
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--duration", type=float, default=20.0)
    a = p.parse_args(argv)
    home = a.home.resolve()
    catalog, bundles = home / "data" / "catalog.db", home / "bundles"
    if not catalog.exists() or not (bundles / "registry.db").exists():
        print(f"{home} has no catalog or registry: run `make train` (or `pmis run`) first", file=sys.stderr)
        return 2
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as c:
        students = [r[0] for r in c.execute("SELECT DISTINCT student_id FROM interactions LIMIT 2000")]
    logs = home / "logs" / "measure"
    cluster = Cluster(home, bundles, catalog, Ports.any(), log_dir=logs,
                      extra_env={f"PMIS_{c.upper()}_BUDGET_MS": "5000"
                                 for c in ("content", "collaborative", "success", "ranker")})
    try:
        started = time.perf_counter()
        cluster.start_all(timeout=120)
        ready_s = time.perf_counter() - started
        time.sleep(1.0)
        pids = {n: cluster.procs[n].pid for n in SERVERS}
        idle = {n: status_kb(pid, "VmRSS") for n, pid in pids.items()}
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        t0 = time.perf_counter()
        sent, failed = load(cluster.ports.target("gateway"), students, a.concurrency, a.duration)
        wall = time.perf_counter() - t0
        cpu = {n: cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
        peak = {n: status_kb(pid, "VmHWM") for n, pid in pids.items()}
        print(f"home {home}; all SERVING after {ready_s:.1f}s; load: {sent} Recommend calls "
              f"({failed} failed) in {wall:.1f}s = {sent / wall:.1f}/s at concurrency {a.concurrency}")
        print(f"{'server':14s} {'RSS idle MiB':>12s} {'peak RSS MiB':>12s} {'CPU cores':>10s} {'CPU ms/req':>10s}")
        for n in SERVERS:
            print(f"{n:14s} {idle[n] / 1024:12.0f} {peak[n] / 1024:12.0f} {cpu[n] / wall:10.2f} "
                  f"{1000 * cpu[n] / max(sent, 1):10.1f}")
        return 0
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    sys.exit(main())
