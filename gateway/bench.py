"""`pmis bench`: load on the gateway, with an echo fan-out reference and the servers' own CPU accounting.

One run measures, in this order:

1. Closed loop. At each concurrency level, `c` workers each send one Recommend, wait for the
   answer and send the next, for `duration` seconds; first against the real gateway, then against
   the echo fan-out. The echo fan-out is the ceiling of the call shape with none of the work: an
   asyncio gateway that receives a RecommendRequest, fans out two parallel health Checks to a
   trivial backend, then three, then one (6 RPCs in 3 rounds), and returns an empty answer. The
   echo gateway and its backend run in ONE subprocess (two grpc.aio servers on one event loop).
2. CPU per request. Around every level the CPU time each server process has used is read from the
   OS's accounting: for the real system, `process_cpu_seconds_total` on each server's Prometheus
   endpoint (prometheus_client reads utime+stime from /proc/self/stat); for the echo subprocess,
   utime+stime from /proc/<pid>/stat. The delta is divided by the number of OK answers of the level.
   This process's own CPU (the load generator) is reported too, so a saturated client shows.
3. Open loop. At each `--rate`, requests are fired on a timer for `--open-duration` seconds without
   waiting for earlier answers, each with a client deadline; latency is counted from the scheduled
   send time, so a generator that falls behind inflates it (and is warned about).
4. Shortlist latency (`--shortlist N`): N sequential Shortlist calls for the internships with the
   most applicants.

Every number can also be written as JSON (`--json`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from pmis.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.tls import ClientTLS

SERVERS = ["gateway", "content", "collaborative", "success", "ranker"]
CPU_METRIC = "process_cpu_seconds_total"
START_METRIC = "process_start_time_seconds"


# ----------------------------------------------------------------------------------------------
# Results and their summaries (pure)

@dataclass
class Outcome:
    code: str                 # grpc status code name, "OK" for an answer
    latency: float            # seconds
    degraded: bool = False    # OK, but the answer names skipped components


Send = Callable[[object], Awaitable[tuple[str, bool]]]  # request -> (code name, degraded)


def percentiles_ms(latencies: list[float], qs=(50, 95, 99)) -> dict:
    """{"p50_ms": ...} for latencies in seconds; NaN when there are none."""
    arr = np.asarray(latencies, dtype=float) * 1000
    return {f"p{q}_ms": float(np.percentile(arr, q)) if arr.size else float("nan") for q in qs}


def count_codes(outcomes: list[Outcome]) -> Counter:
    return Counter(o.code for o in outcomes)


def summarize_closed(outcomes: list[Outcome], elapsed: float) -> dict:
    ok = [o for o in outcomes if o.code == "OK"]
    codes = count_codes(outcomes)
    return {"requests": len(ok), "errors": len(outcomes) - len(ok), "degraded": sum(o.degraded for o in ok),
            "rps": len(ok) / elapsed if elapsed > 0 else float("nan"), "elapsed_s": elapsed,
            **percentiles_ms([o.latency for o in ok]),
            "codes": {k: v for k, v in sorted(codes.items()) if k != "OK"}}


def summarize_open(outcomes: list[Outcome], rate: float, send_span: float, lags: list[float]) -> dict:
    """`send_span`: seconds from the first scheduled send to just after the last actual one."""
    sent = len(outcomes)
    ok = [o for o in outcomes if o.code == "OK"]
    refused = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    codes = count_codes(outcomes)
    achieved = sent / send_span if send_span > 0 else float("nan")
    other = {k: v for k, v in sorted(codes.items()) if k not in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")}
    lag = percentiles_ms(lags, (50, 99)) if lags else {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"rate": rate, "sent": sent, "ok": sum(not o.degraded for o in ok), "ok_degraded": sum(o.degraded for o in ok),
            "resource_exhausted": len(refused),
            "resource_exhausted_p99_ms": percentiles_ms([o.latency for o in refused], (99,))["p99_ms"],
            "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0), "other_errors": sum(other.values()),
            "other_codes": other, **percentiles_ms([o.latency for o in ok], (50, 99)),
            "achieved_rate": achieved, "behind_schedule": bool(achieved < 0.9 * rate),
            "send_lag_p50_ms": lag["p50_ms"], "send_lag_p99_ms": lag["p99_ms"]}


# ----------------------------------------------------------------------------------------------
# CPU accounting

def parse_metric(text: str, name: str) -> float | None:
    """The value of an unlabelled-or-labelled sample `name` in a Prometheus text page (summed over
    label sets); None when absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] == "{":
            rest = rest[rest.index("}") + 1:]
        elif rest[:1] not in (" ", "\t"):
            continue  # a longer metric name with this prefix
        parts = rest.split()
        if parts:
            try:
                total += float(parts[0])
                found = True
            except ValueError:
                pass
    return total if found else None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (all its threads) from /proc/<pid>/stat; None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSample:
    seconds: float | None
    start: float | None = None   # process start time, to notice a restart between two samples


class PrometheusCpu:
    """CPU seconds of each server process, scraped from its metrics endpoint."""

    def __init__(self, host: str, ports: dict[str, int], timeout: float = 2.0):
        self.host, self.ports, self.timeout = host, ports, timeout

    def scrape(self, port: int) -> CpuSample:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{port}/metrics", timeout=self.timeout) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError:
            return CpuSample(None)
        return CpuSample(parse_metric(text, CPU_METRIC), parse_metric(text, START_METRIC))

    def sample(self) -> dict[str, CpuSample]:
        return {name: self.scrape(port) for name, port in self.ports.items()}


class ProcCpu:
    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def sample(self) -> dict[str, CpuSample]:
        return {name: CpuSample(proc_cpu_seconds(pid)) for name, pid in self.pids.items()}


def cpu_ms_per_request(before: dict[str, CpuSample], after: dict[str, CpuSample], requests: int) -> dict:
    """Per-process CPU ms per request (None: unknown), their sum over the known ones, and which are missing."""
    per: dict[str, float | None] = {}
    for name, b in before.items():
        a = after.get(name, CpuSample(None))
        ok = (b.seconds is not None and a.seconds is not None and b.start == a.start and a.seconds >= b.seconds
              and requests > 0)
        per[name] = (a.seconds - b.seconds) * 1000 / requests if ok else None
    known = [v for v in per.values() if v is not None]
    return {"per_server": per, "sum": sum(known) if known else None,
            "missing": [n for n, v in per.items() if v is None]}


class Meter:
    """Samples the server CPU probes and this process's own CPU around one phase."""

    def __init__(self, probe):
        self.probe = probe

    def start(self) -> None:
        self.before, self.client_before = self.probe.sample(), time.process_time()

    def stop(self, requests: int) -> dict:
        cpu = cpu_ms_per_request(self.before, self.probe.sample(), requests)
        client = time.process_time() - self.client_before
        cpu["client"] = client * 1000 / requests if requests else None
        return cpu


# ----------------------------------------------------------------------------------------------
# Load generators

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


# ----------------------------------------------------------------------------------------------
# Request shapes, from the catalog

def student_ids(catalog: Path, n: int = 2000) -> list[str]:
    with sqlite3.connect(catalog) as c:
        return [r[0] for r in c.execute("SELECT student_id FROM students ORDER BY student_id LIMIT ?", (n,))]


def build_requests(catalog: Path, k: int, explain: bool, profile_only: bool,
                   n: int = 2000, seed: int = 0) -> list[gateway_pb2.RecommendRequest]:
    """A pool of requests to draw from: known student ids, or inline profiles of random catalog students."""
    ids = student_ids(catalog, n)
    base = {"k": k} if explain else {"k": k, "explain": False}  # explain unset means on
    if not profile_only:
        return [gateway_pb2.RecommendRequest(student_id=s, **base) for s in ids]
    from gateway.catalog import SqliteCatalog
    from services.common.profiles import profile_message

    cat = SqliteCatalog(catalog)
    chosen = random.Random(seed).sample(ids, min(len(ids), 500))
    return [gateway_pb2.RecommendRequest(profile=profile_message(row), **base)
            for row in map(cat.student, chosen) if row is not None]


def shortlist_internships(catalog: Path, n: int) -> list[str]:
    """n internship ids, the most-applied-to first, repeated if the catalog has fewer."""
    with sqlite3.connect(catalog) as c:
        ids = [r[0] for r in c.execute("SELECT internship_id, COUNT(*) c FROM interactions WHERE event='apply' "
                                       "GROUP BY internship_id ORDER BY c DESC LIMIT ?", (n,))]
        if not ids:
            ids = [r[0] for r in c.execute("SELECT internship_id FROM internships LIMIT ?", (n,))]
    return [ids[i % len(ids)] for i in range(n)] if ids else []


# ----------------------------------------------------------------------------------------------
# The echo fan-out reference

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
    proc = subprocess.Popen([sys.executable, "-m", "gateway.bench", "--serve-echo", "0"], stdout=subprocess.PIPE,
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


# ----------------------------------------------------------------------------------------------
# One bench run

@dataclass
class BenchConfig:
    target: str
    catalog: Path
    concurrency: list[int] = field(default_factory=lambda: [1, 32])
    duration: float = 10.0
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


def gateway_channel(target: str, tls: ClientTLS) -> grpc.aio.Channel:
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.credentials(), options=tls.options())
    return grpc.aio.insecure_channel(target)


async def warm_up(send: Send, request) -> None:
    await send(request)  # a failure is the loop's to count, not the warm-up's


async def closed_level(target: str, requests: list, c: int, cfg: BenchConfig, meter: Meter) -> dict:
    rng = random.Random(cfg.seed)
    async with gateway_channel(target, cfg.tls) as channel:
        send = recommend_sender(gateway_pb2_grpc.RecommendationGatewayStub(channel), cfg.deadline)
        await warm_up(send, requests[0])
        meter.start()
        outcomes, elapsed = await closed_loop(send, lambda: rng.choice(requests), c, cfg.duration)
    row = {"concurrency": c, **summarize_closed(outcomes, elapsed)}
    row["cpu_ms_per_request"] = meter.stop(row["requests"])
    return row


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


def summarize_shortlist(latencies: list[float], codes: Counter, responses: list) -> dict:
    cands = [c for r in responses for c in r.candidates]
    unset = lambda c, f: not c.HasField(f) or math.isnan(getattr(c, f))  # noqa: E731
    return {"calls": sum(codes.values()), "ok": codes.get("OK", 0),
            "errors": {k: v for k, v in sorted(codes.items()) if k != "OK"},
            **percentiles_ms(latencies, (50, 99)),
            "mean_pool_size": float(np.mean([r.pool_size for r in responses])) if responses else float("nan"),
            "candidates": len(cands), "missing_match": sum(unset(c, "match") for c in cands),
            "missing_success": sum(unset(c, "success_probability") for c in cands),
            "missing_either": sum(unset(c, "match") or unset(c, "success_probability") for c in cands),
            "degraded": sum(bool(r.degraded) for r in responses)}


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
        for c in cfg.concurrency:
            log(f"closed loop, concurrency {c}: gateway ...", flush=True)
            row = {"concurrency": c, "gateway": asyncio.run(closed_level(cfg.target, requests, c, cfg, real))}
            if echo:
                log(f"closed loop, concurrency {c}: echo fan-out ...", flush=True)
                row["echo"] = asyncio.run(closed_level(echo_target, requests, c, cfg, echo_meter))
                row.update(ratios(row["gateway"], row["echo"]))
            result["closed"].append(row)
    finally:
        if echo:
            stop_process(echo)
    for rate in cfg.rates:
        log(f"open loop, {rate:g}/s for {cfg.open_duration:g}s ...", flush=True)
        result["open"].append(asyncio.run(open_level(cfg, requests, rate, real)))
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
    d["echo_processes"] = "one subprocess: echo gateway and its backend on one event loop"
    return d


# ----------------------------------------------------------------------------------------------
# Text output

def fmt(v, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def table(headers: list[str], rows: list[list], first_left: int = 1) -> str:
    cells = [headers, *[[fmt(v) if not isinstance(v, str) else v for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    just = lambda i, s: s.ljust(widths[i]) if i < first_left else s.rjust(widths[i])  # noqa: E731
    return "\n".join("  ".join(just(i, s) for i, s in enumerate(r)).rstrip() for r in cells)


def closed_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for system in ("gateway", "echo"):
            if system not in r:
                continue
            s = r[system]
            extra = [fmt(r.get("p50_ratio"), ".2f"), fmt(r.get("rps_ratio"), ".3f")] if system == "gateway" else ["", ""]
            out.append([str(r["concurrency"]), system, s["requests"], s["errors"], s["degraded"], s["rps"], s["p50_ms"],
                        s["p95_ms"], s["p99_ms"], *extra])
    return table(["conc", "system", "OK", "errors", "degraded", "RPS", "p50 ms", "p95 ms", "p99 ms",
                  "p50/echo", "RPS/echo"], out, first_left=2)


def cpu_table(result: dict) -> str:
    def cells(cpu: dict | None) -> list:
        if cpu is None:
            return ["-"] * (len(SERVERS) + 1)
        total = fmt(cpu["sum"], ".2f") + ("*" if cpu["missing"] and cpu["sum"] is not None else "")
        return [fmt(cpu["per_server"].get(n), ".2f") for n in SERVERS] + [total]

    rows = []
    for r in result["closed"]:
        g, e = r["gateway"]["cpu_ms_per_request"], r.get("echo", {}).get("cpu_ms_per_request")
        rows.append([f"closed c={r['concurrency']}", *cells(g), fmt(e and e["sum"], ".2f"), fmt(g["client"], ".2f"),
                     fmt(e and e["client"], ".2f")])
    for r in result["open"]:
        g = r["cpu_ms_per_request"]
        rows.append([f"open {r['rate']:g}/s", *cells(g), "-", fmt(g["client"], ".2f"), "-"])
    return table(["phase", *SERVERS, "sum", "echo", "client", "client(echo)"], rows)


def open_table(rows: list[dict]) -> str:
    out = [[f"{r['rate']:g}", r["sent"], r["ok"], r["ok_degraded"], r["resource_exhausted"],
            r["resource_exhausted_p99_ms"], r["deadline_exceeded"], r["other_errors"], r["p50_ms"], r["p99_ms"],
            r["achieved_rate"] if not r["behind_schedule"] else f"{r['achieved_rate']:.1f}!", r["send_lag_p99_ms"]]
           for r in rows]
    return table(["rate/s", "sent", "OK", "OK degraded", "EXHAUSTED", "EXH p99 ms", "DEADLINE", "other",
                  "OK p50 ms", "OK p99 ms", "sent/s", "lag p99 ms"], out, first_left=0)


def shortlist_table(s: dict) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
    return table(["calls", "OK", "errors", "p50 ms", "p99 ms", "mean pool", "candidates", "no match",
                  "no success p", "either", "degraded"],
                 [[s["calls"], s["ok"], errors, s["p50_ms"], s["p99_ms"], s["mean_pool_size"], s["candidates"],
                   s["missing_match"], s["missing_success"], s["missing_either"], s["degraded"]]], first_left=0)


def report(result: dict) -> str:
    cfg = result["config"]
    shape = (f"k={cfg['k']}, explain {'on' if cfg['explain'] else 'off'}, "
             f"{'inline profiles' if cfg['profile_only'] else 'known student ids'}, deadline {cfg['deadline'] * 1000:.0f} ms")
    out = [f"Recommend ({shape}) at {cfg['target']}"]
    if result["closed"]:
        out += ["", f"Closed loop, {cfg['duration']:g}s per level and system. OK = answers (degraded ones "
                    "included); echo = fan-out reference (2, 3, 1 health Checks, one subprocess).",
                closed_table(result["closed"])]
    if result["open"]:
        out += ["", f"Open loop, {cfg['open_duration']:g}s per rate, latency from the scheduled send time. "
                    "OK = not degraded; sent/s marked ! when the generator fell >10% behind; lag = how late sends left "
                    "(the client deadline runs from the actual send, so a late send can exceed it).",
                open_table(result["open"])]
        for r in result["open"]:
            if r["behind_schedule"]:
                out.append(f"WARNING: at {r['rate']:g}/s the generator sent only {r['achieved_rate']:.1f}/s "
                           f"(send lag p99 {r['send_lag_p99_ms']:.0f} ms): the client, not the server, set the pace.")
            if r["other_codes"]:
                out.append(f"other errors at {r['rate']:g}/s: " + ", ".join(f"{k} {v}" for k, v in r["other_codes"].items()))
    if result["closed"] or result["open"]:
        ports = ", ".join(f"{n}={p}" for n, p in cfg["metrics_ports"].items())
        out += ["", f"CPU ms per OK answer (process_cpu_seconds_total from {cfg['metrics_host']}: {ports}; "
                    "echo: /proc/<pid>/stat of its one process; client: this process). "
                    "- = not scraped; * = sum over the servers scraped.",
                cpu_table(result)]
    if result["shortlist"]:
        out += ["", f"Shortlist, {result['shortlist']['calls']} sequential calls over "
                    f"{result['shortlist']['internships']} most-applied-to internships "
                    "(no match / no success p: candidates with the field unset or NaN).",
                shortlist_table(result["shortlist"])]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# CLI

def metrics_ports(base: int, overrides: list[str] | None) -> dict[str, int]:
    ports = {n: base + i for i, n in enumerate(SERVERS)}
    for item in overrides or []:
        name, _, port = item.partition("=")
        if name not in ports or not port.isdigit():
            raise ValueError(f"--metrics-ports wants NAME=PORT with NAME one of {', '.join(SERVERS)}: {item!r}")
        ports[name] = int(port)
    return ports


def json_safe(v):
    """NaN -> null (JSON has no NaN), paths -> strings."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


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
                      concurrency=args.concurrency, duration=args.duration, rates=args.rate or [],
                      open_duration=args.open_duration, deadline=args.deadline_ms / 1000, k=args.k,
                      explain=not args.no_explain, profile_only=args.profile_only, shortlist=args.shortlist,
                      metrics_host=args.metrics_host or args.target.rsplit(":", 1)[0], metrics_ports=ports,
                      echo=not args.no_echo, seed=args.seed,
                      tls=ClientTLS(args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name))
    result = run_bench(cfg, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    if not answered_any(result):
        print(f"error: the gateway at {cfg.target} answered no request", file=sys.stderr)
        return 1
    return 0


def answered_any(result: dict) -> bool:
    """Whether any phase got an OK answer (a bench of nothing but errors is a failed bench)."""
    closed = any(row["gateway"]["requests"] for row in result["closed"])
    opened = any(row["ok"] + row["ok_degraded"] for row in result["open"])
    shortlisted = bool(result["shortlist"] and result["shortlist"]["ok"])
    return closed or opened or shortlisted


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-echo":
        asyncio.run(serve_echo(int(sys.argv[2])))
