"""`pmis bench`: closed-loop load on the gateway's Recommend, and the same load on an echo fan-out.

Each of `concurrency` workers sends one Recommend (a random known student, k=10), waits for the
answer, and sends the next, for `duration` seconds. The reference ceiling is an "echo gateway"
with the same call shape and none of the work: it receives a RecommendRequest, fans out two
parallel calls, then three, then one (retrieve, score, rank) to a trivial backend, and returns
an empty answer. Both run in their own processes; the ratio says how much of the ceiling the
real system reaches.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from pmis.v1 import gateway_pb2, gateway_pb2_grpc


async def closed_loop(target: str, student_ids: list[str], concurrency: int, duration: float) -> dict:
    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.RecommendationGatewayStub(channel)
        await stub.Recommend(gateway_pb2.RecommendRequest(student_id=student_ids[0], k=10), timeout=10)  # warm up
        end = time.perf_counter() + duration
        rng = random.Random(0)

        async def worker():
            nonlocal errors
            while time.perf_counter() < end:
                req = gateway_pb2.RecommendRequest(student_id=rng.choice(student_ids), k=10)
                start = time.perf_counter()
                try:
                    await stub.Recommend(req, timeout=5)
                    latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan")}


class EchoGateway(gateway_pb2_grpc.RecommendationGatewayServicer):
    """Same fan-out shape as the real gateway (2 parallel, 3 parallel, 1), no work at all."""

    def __init__(self, backend: str):
        self.channel = grpc.aio.insecure_channel(backend)
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def _hop(self, n: int):
        await asyncio.gather(*(self.stub.Check(health_pb2.HealthCheckRequest(), timeout=1) for _ in range(n)))

    async def Recommend(self, request, context):
        for n in (2, 3, 1):
            await self._hop(n)
        return gateway_pb2.RecommendResponse(student_id=request.student_id)


async def serve_echo(port: int) -> None:
    backend = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), backend)
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    gateway_pb2_grpc.add_RecommendationGatewayServicer_to_server(EchoGateway(f"127.0.0.1:{backend_port}"), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def student_ids(catalog: Path, n: int = 2000) -> list[str]:
    with sqlite3.connect(catalog) as c:
        return [r[0] for r in c.execute("SELECT student_id FROM students ORDER BY student_id LIMIT ?", (n,))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bench(target: str, catalog: Path, levels: list[int], duration: float) -> list[dict]:
    ids = student_ids(catalog)
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "gateway.bench", "--serve-echo", str(port)], stdout=subprocess.PIPE,
                            text=True)
    try:
        echo.stdout.readline()  # "ready"
        rows = []
        for c in levels:
            real = asyncio.run(closed_loop(target, ids, c, duration))
            ref = asyncio.run(closed_loop(f"127.0.0.1:{port}", ids, c, duration))
            rows.append({**real, "echo_rps": ref["rps"], "echo_p50_ms": ref["p50_ms"], "echo_p99_ms": ref["p99_ms"],
                         "ratio": real["rps"] / ref["rps"] if ref["rps"] else float("nan")})
        return rows
    finally:
        echo.terminate()
        echo.wait()


def format_rows(rows: list[dict]) -> str:
    head = (f"{'conc':>4} {'requests':>8} {'errors':>6} {'RPS':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'echo RPS':>9} {'echo p50':>8} {'echo p99':>8} {'ratio':>6}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['concurrency']:>4} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                     f"{r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['echo_rps']:>9.1f} {r['echo_p50_ms']:>8.1f} "
                     f"{r['echo_p99_ms']:>8.1f} {r['ratio']:>6.3f}")
    return "\n".join(lines)


def main_bench(args) -> int:
    catalog = args.catalog or Path(args.data) / "catalog.db"
    rows = run_bench(args.target, catalog, args.concurrency, args.duration)
    print(f"Recommend (k=10, random known students), closed loop, {args.duration:.0f}s per level; "
          "ratio = gateway RPS / echo fan-out RPS")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-echo":
        asyncio.run(serve_echo(int(sys.argv[2])))
