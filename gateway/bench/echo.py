"""The echo fan-out: the real gateway's call shape with none of its work, the ceiling the bench
compares the gateway with. It runs as one subprocess (`start_echo`): an echo gateway and the trivial
health backend it calls, two grpc.aio servers on one event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from pmis.v1 import gateway_pb2, gateway_pb2_grpc


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
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready {port}", flush=True)
    await server.wait_for_termination()


def start_echo() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.bench.echo", "--serve-echo", "0"], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError("the echo fan-out subprocess did not start")
    return proc, f"127.0.0.1:{line[1]}"


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-echo":
        asyncio.run(serve_echo(int(sys.argv[2])))
