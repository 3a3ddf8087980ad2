"""One bench run (`run_bench`): the closed loop against the gateway and the echo fan-out, the open
loop, then Shortlist, each phase metered for CPU; its result is the dict the report and JSON are made of."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gateway.bench.cpu import SERVERS, Meter, ProcCpu, PrometheusCpu
from gateway.bench.echo import start_echo, stop_process
from gateway.bench.load import closed_loop, gateway_channel, open_loop, recommend_sender, warm_up
from gateway.bench.outcomes import summarize_closed, summarize_open, summarize_shortlist
from gateway.bench.probes import Prober, ProbeTarget
from gateway.bench.workload import build_requests, shortlist_internships
from pmis.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.tls import ClientTLS


@dataclass
class BenchConfig:
    target: str
    catalog: Path
    concurrency: list[int] = field(default_factory=lambda: [1, 32])
    duration: float = 10.0
    slices: int = 5  # closed loop: the gateway and the echo take turns, this many each per concurrency
    rates: list[float] = field(default_factory=list)
    open_duration: float = 30.0
    deadline: float = 2.0
    k: int = 10
    explain: bool = True
    profile_only: bool = False
    shortlist: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_ports: dict = field(default_factory=lambda: {n: 9100 + i for i, n in enumerate(SERVERS)})
    echo: bool = True
    seed: int = 0
    tls: ClientTLS = field(default_factory=ClientTLS)  # how the gateway is dialled
    probes: list[ProbeTarget] = field(default_factory=list)  # probed kubelet-style during each open-loop rate
    probe_period: float = 0.5
    probe_timeout: float = 1.0


async def closed_levels(systems: dict[str, tuple[str, Meter]], requests: list, c: int, cfg: BenchConfig) -> dict:
    """name -> its closed-loop row at concurrency `c`. The systems take turns, `cfg.slices` slices
    each of `cfg.duration / cfg.slices` seconds, so that a machine whose speed drifts (shared,
    noisy) drifts under all of them alike and their ratio stays fair."""
    outcomes: dict[str, list] = {name: [] for name in systems}
    elapsed = dict.fromkeys(systems, 0.0)
    slices = max(cfg.slices, 1)
    async with contextlib.AsyncExitStack() as stack:
        senders = {}
        for name, (target, _) in systems.items():
            channel = await stack.enter_async_context(gateway_channel(target, cfg.tls))
            senders[name] = recommend_sender(gateway_pb2_grpc.RecommendationGatewayStub(channel), cfg.deadline)
            await warm_up(senders[name], requests[0])
        rngs = {name: random.Random(cfg.seed) for name in systems}
        for _ in range(slices):
            for name, (_, meter) in systems.items():
                meter.start()
                more, spent = await closed_loop(senders[name], lambda rng=rngs[name]: rng.choice(requests), c,
                                                cfg.duration / slices)
                meter.pause()
                outcomes[name] += more
                elapsed[name] += spent
    rows = {}
    for name, (_, meter) in systems.items():
        row = {"concurrency": c, **summarize_closed(outcomes[name], elapsed[name])}
        row["cpu_ms_per_request"] = meter.stop(row["requests"])
        rows[name] = row
    return rows


async def open_level(cfg: BenchConfig, requests: list, rate: float, meter: Meter) -> dict:
    rng = random.Random(cfg.seed)
    async with gateway_channel(cfg.target, cfg.tls) as channel:
        send = recommend_sender(gateway_pb2_grpc.RecommendationGatewayStub(channel), cfg.deadline)
        await warm_up(send, requests[0])
        meter.start()
        outcomes, span, lags = await open_loop(send, lambda: rng.choice(requests), rate, cfg.open_duration)
    row = summarize_open(outcomes, rate, span, lags)
    row["cpu_ms_per_request"] = meter.stop(row["ok"] + row["ok_degraded"])
    return row


async def shortlist_run(target: str, internships: list[str], deadline: float,
                        tls: ClientTLS = ClientTLS()) -> dict:
    latencies, codes, responses = [], Counter(), []
    async with gateway_channel(target, tls) as channel:
        stub = gateway_pb2_grpc.RecommendationGatewayStub(channel)
        for iid in internships:
            started = time.perf_counter()
            try:
                r = await stub.Shortlist(gateway_pb2.ShortlistRequest(internship_id=iid), timeout=deadline)
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1
                continue
            latencies.append(time.perf_counter() - started)
            codes["OK"] += 1
            responses.append(r)
    return {"internships": len(set(internships)), **summarize_shortlist(latencies, codes, responses)}


def run_bench(cfg: BenchConfig, log=print) -> dict:
    requests = build_requests(cfg.catalog, cfg.k, cfg.explain, cfg.profile_only, seed=cfg.seed)
    if not requests:
        raise RuntimeError(f"no students in {cfg.catalog}")
    real = Meter(PrometheusCpu(cfg.metrics_host, cfg.metrics_ports))
    result = {"config": config_json(cfg), "closed": [], "open": [], "shortlist": None}
    echo, echo_target = start_echo() if cfg.echo and cfg.concurrency else (None, None)
    try:
        echo_meter = Meter(ProcCpu({"echo": echo.pid})) if echo else None
        systems = {"gateway": (cfg.target, real), **({"echo": (echo_target, echo_meter)} if echo else {})}
        for c in cfg.concurrency:
            log(f"closed loop, concurrency {c}: {' and '.join(systems)}, {cfg.slices} turns each ...", flush=True)
            row = {"concurrency": c, **asyncio.run(closed_levels(systems, requests, c, cfg))}
            if echo:
                row.update(ratios(row["gateway"], row["echo"]))
            result["closed"].append(row)
    finally:
        if echo:
            stop_process(echo)
    for rate in cfg.rates:
        log(f"open loop, {rate:g}/s for {cfg.open_duration:g}s ...", flush=True)
        prober = Prober(cfg.probes, cfg.probe_period, cfg.probe_timeout) if cfg.probes else None
        if prober:
            prober.start()
        row = asyncio.run(open_level(cfg, requests, rate, real))
        row["probes"] = prober.stop() if prober else []
        result["open"].append(row)
    if cfg.shortlist:
        log(f"shortlist, {cfg.shortlist} calls ...", flush=True)
        result["shortlist"] = asyncio.run(shortlist_run(cfg.target, shortlist_internships(cfg.catalog, cfg.shortlist),
                                                        cfg.deadline, cfg.tls))
    return result


def ratios(gw: dict, echo: dict) -> dict:
    div = lambda a, b: a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")  # noqa: E731
    return {"p50_ratio": div(gw["p50_ms"], echo["p50_ms"]), "rps_ratio": div(gw["rps"], echo["rps"])}


def config_json(cfg: BenchConfig) -> dict:
    d = dict(vars(cfg))
    d["catalog"] = str(cfg.catalog)
    d["tls"] = "TLS" if cfg.tls.enabled else "plaintext"
    d["probes"] = [t.arg() for t in cfg.probes]
    d["echo_processes"] = "one subprocess: echo gateway and its backend on one event loop"
    return d
