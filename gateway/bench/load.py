"""The load generators: a closed loop (workers that wait for each answer) and an open loop (sends on
a timer, never waiting), and the Recommend calls they make over a gateway channel."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import grpc

from gateway.bench.outcomes import Outcome, Send
from services.common.tls import ClientTLS


async def timed(send: Send, request, started: float, clock=time.perf_counter) -> Outcome:
    code, degraded = await send(request)
    return Outcome(code, clock() - started, degraded)


async def closed_loop(send: Send, next_request: Callable[[], object], concurrency: int,
                      duration: float) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    end = time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < end:
            outcomes.append(await timed(send, next_request(), time.perf_counter()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


async def open_loop(send: Send, next_request: Callable[[], object], rate: float,
                    duration: float) -> tuple[list[Outcome], float, list[float]]:
    """Fire round(rate * duration) requests at fixed intervals, never waiting for an answer; return
    their outcomes (latency from the scheduled time), the send span and each send's lag behind schedule."""
    loop = asyncio.get_running_loop()
    interval, n = 1.0 / rate, max(1, round(rate * duration))
    tasks, lags = [], []
    start = loop.time()
    for i in range(n):
        due = start + i * interval
        delay = due - loop.time()
        await asyncio.sleep(max(delay, 0))  # sleep(0) still lets answers in when behind schedule
        lags.append(max(loop.time() - due, 0.0))
        tasks.append(asyncio.ensure_future(timed(send, next_request(), due, loop.time)))
    send_span = loop.time() - start + interval  # n sends take n intervals when on schedule
    return list(await asyncio.gather(*tasks)), send_span, lags


def recommend_sender(stub, deadline: float) -> Send:
    async def send(request) -> tuple[str, bool]:
        try:
            response = await stub.Recommend(request, timeout=deadline)
        except grpc.aio.AioRpcError as e:
            return e.code().name, False
        return "OK", bool(response.degraded)
    return send


def gateway_channel(target: str, tls: ClientTLS) -> grpc.aio.Channel:
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.credentials(), options=tls.options())
    return grpc.aio.insecure_channel(target)


async def warm_up(send: Send, request) -> None:
    await send(request)  # a failure is the loop's to count, not the warm-up's
