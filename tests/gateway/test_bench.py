"""`pmis bench`: summaries, CPU accounting, the open-loop scheduler, and a loopback run against a fake gateway."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest

from gateway.bench.cli import metrics_ports
from gateway.bench.cpu import CpuSample, Meter, parse_metric, per_request, proc_cpu_seconds, spent_seconds
from gateway.bench.load import open_loop
from gateway.bench.outcomes import Outcome, count_codes, percentiles_ms, summarize_closed, summarize_open
from gateway.bench.report import json_safe, report
from gateway.bench.run import BenchConfig, closed_levels, open_level, run_bench
from gateway.bench.workload import build_requests, shortlist_internships
from pmis.v1 import gateway_pb2, gateway_pb2_grpc

PROM_PAGE = """# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.34
# HELP process_cpu_seconds_total_created decoy with a longer name
process_cpu_seconds_total_created 99.0
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e+09
pmis_grpc_requests_total{component="gateway",method="Recommend",code="OK"} 5.0
"""


# ---- pure parts

def test_percentiles_and_closed_summary():
    outs = [Outcome("OK", i / 1000) for i in range(1, 101)] + [Outcome("OK", 0.5, degraded=True)]
    outs += [Outcome("UNAVAILABLE", 0.001)] * 3 + [Outcome("DEADLINE_EXCEEDED", 2.0)]
    s = summarize_closed(outs, elapsed=2.0)
    assert (s["requests"], s["errors"], s["degraded"]) == (101, 4, 1)
    assert s["rps"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(51.0)
    assert 99 < s["p99_ms"] <= 500
    assert s["codes"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 3}
    empty = percentiles_ms([])
    assert all(math.isnan(v) for v in empty.values()) and set(empty) == {"p50_ms", "p95_ms", "p99_ms"}


def test_count_codes_and_open_summary():
    outs = ([Outcome("OK", 0.01)] * 6 + [Outcome("OK", 0.02, True)] * 2 + [Outcome("RESOURCE_EXHAUSTED", 0.003)] * 3
            + [Outcome("DEADLINE_EXCEEDED", 2.0)] + [Outcome("INTERNAL", 0.01)] * 2)
    assert count_codes(outs) == Counter(OK=8, RESOURCE_EXHAUSTED=3, DEADLINE_EXCEEDED=1, INTERNAL=2)
    s = summarize_open(outs, rate=14, send_span=1.0, lags=[0.0] * 14)
    assert (s["sent"], s["ok"], s["ok_degraded"], s["resource_exhausted"], s["deadline_exceeded"],
            s["other_errors"]) == (14, 6, 2, 3, 1, 2)
    assert s["other_codes"] == {"INTERNAL": 2}
    assert s["resource_exhausted_p99_ms"] == pytest.approx(3.0)
    assert s["p50_ms"] == pytest.approx(10.0)
    assert s["achieved_rate"] == pytest.approx(14) and not s["behind_schedule"]
    assert summarize_open(outs, rate=20, send_span=1.0, lags=[])["behind_schedule"]  # 14/s of 20/s


def test_parse_process_cpu_seconds():
    assert parse_metric(PROM_PAGE, "process_cpu_seconds_total") == pytest.approx(12.34)
    assert parse_metric(PROM_PAGE, "process_start_time_seconds") == pytest.approx(1.7e9)
    assert parse_metric(PROM_PAGE, "pmis_grpc_requests_total") == pytest.approx(5.0)
    assert parse_metric("# nothing here\n", "process_cpu_seconds_total") is None


def test_cpu_per_request_handles_missing_and_restarted_servers():
    before = {"gateway": CpuSample(10.0, 1.0), "content": CpuSample(None), "ranker": CpuSample(5.0, 1.0),
              "success": CpuSample(3.0, 1.0)}
    after = {"gateway": CpuSample(10.5, 1.0), "content": CpuSample(2.0, 1.0), "ranker": CpuSample(1.0, 2.0),
             "success": CpuSample(3.25, 1.0)}
    cpu = per_request(spent_seconds(before, after), requests=100)
    assert cpu["per_server"] == {"gateway": pytest.approx(5.0), "content": None, "ranker": None,
                                 "success": pytest.approx(2.5)}
    assert cpu["sum"] == pytest.approx(7.5) and cpu["missing"] == ["content", "ranker"]
    assert per_request(spent_seconds(before, after), requests=0)["sum"] is None


def test_proc_cpu_seconds_reads_this_process():
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert proc_cpu_seconds(os.getpid()) >= 0.05
    assert proc_cpu_seconds(2 ** 22 + 12345) is None


def test_metrics_ports():
    assert metrics_ports(9150, None) == {"gateway": 9150, "content": 9151, "collaborative": 9152,
                                         "success": 9153, "ranker": 9154}
    assert metrics_ports(9100, ["ranker=9999"])["ranker"] == 9999
    with pytest.raises(ValueError):
        metrics_ports(9100, ["trainer=1"])


def test_open_loop_fires_at_the_rate_without_waiting_for_answers():
    in_flight, peak = 0, 0

    async def send(_request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return "OK", False

    started = time.perf_counter()
    outcomes, span, lags = asyncio.run(open_loop(send, lambda: None, rate=200, duration=0.5))
    wall = time.perf_counter() - started
    assert len(outcomes) == 100 and len(lags) == 100
    assert 100 / span == pytest.approx(200, rel=0.1)
    assert wall < 0.5 + 0.05 + 0.25          # one answer time after the last send, not 100 of them
    assert peak >= 8                          # ~10 in flight at 200/s x 50 ms
    assert all(o.latency >= 0.05 for o in outcomes)


# ---- loopback against a fake gateway

class FakeGateway(gateway_pb2_grpc.RecommendationGatewayServicer):
    """Answers by the student id's prefix: ok, deg (degraded), full (RESOURCE_EXHAUSTED), slow (past any
    deadline), bad (INVALID_ARGUMENT). Counts what it was asked."""

    def __init__(self):
        self.tally = Counter()

    async def Recommend(self, request, context):
        kind = request.student_id.split("-")[0]
        self.tally[kind] += 1
        if kind == "full":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if kind == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
        if kind == "slow":
            await asyncio.sleep(2)
        return gateway_pb2.RecommendResponse(student_id=request.student_id,
                                             degraded=["ranker"] if kind == "deg" else [])

    async def Shortlist(self, request, context):
        return gateway_pb2.ShortlistResponse(internship_id=request.internship_id, pool_size=7, candidates=[
            gateway_pb2.ShortlistCandidate(rank=1, student_id="a", match=0.5, success_probability=0.2),
            gateway_pb2.ShortlistCandidate(rank=2, student_id="b", match=float("nan"), success_probability=0.1),
            gateway_pb2.ShortlistCandidate(rank=3, student_id="c", match=0.4)])


async def start_fake() -> tuple[grpc.aio.Server, FakeGateway, str]:
    server, fake = grpc.aio.server(), FakeGateway()
    gateway_pb2_grpc.add_RecommendationGatewayServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, fake, f"127.0.0.1:{port}"


class StepProbe:
    """A fake CPU probe: every process gains 0.1 s between two samples."""

    def __init__(self):
        self.t = 0.0

    def sample(self):
        self.t += 0.1
        return {"gateway": CpuSample(self.t), "content": CpuSample(None)}


KINDS = ["ok", "ok", "ok", "deg", "full", "full", "slow", "bad"]


def requests_pool():
    return [gateway_pb2.RecommendRequest(student_id=f"{kind}-{i}", k=3) for i, kind in enumerate(KINDS)]


def check_counts(fake: FakeGateway, ok: int, degraded: int, exhausted: int, deadline: int, other: int) -> None:
    # each level sends one warm-up request (requests[0], an "ok" one) outside the measurement
    assert (fake.tally["ok"] - 1, fake.tally["deg"], fake.tally["full"], fake.tally["slow"], fake.tally["bad"]) == \
        (ok, degraded, exhausted, deadline, other)


def test_open_and_closed_loop_count_codes_against_a_fake_gateway():
    async def main():
        server, fake, target = await start_fake()
        try:
            cfg = BenchConfig(target=target, catalog=None, duration=0.6, open_duration=0.5, deadline=0.2)
            pool = requests_pool()
            r = await open_level(cfg, pool, rate=120, meter=Meter(StepProbe()))
            assert r["sent"] == 60 == sum(fake.tally.values()) - 1
            check_counts(fake, r["ok"], r["ok_degraded"], r["resource_exhausted"], r["deadline_exceeded"],
                         r["other_errors"])
            assert r["other_codes"] == ({"INVALID_ARGUMENT": r["other_errors"]} if r["other_errors"] else {})
            assert r["resource_exhausted"] > 0 and r["deadline_exceeded"] > 0
            assert r["achieved_rate"] == pytest.approx(120, rel=0.1) and not r["behind_schedule"]
            assert r["p99_ms"] < 200 and r["resource_exhausted_p99_ms"] < 200
            cpu = r["cpu_ms_per_request"]
            assert cpu["per_server"]["gateway"] == pytest.approx(100 / (r["ok"] + r["ok_degraded"]))
            assert cpu["per_server"]["content"] is None and cpu["missing"] == ["content"]

            fake.tally.clear()
            c = (await closed_levels({"gateway": (target, Meter(StepProbe()))}, pool, 4, cfg))["gateway"]
            codes = c["codes"]
            check_counts(fake, c["requests"] - c["degraded"], c["degraded"], codes.get("RESOURCE_EXHAUSTED", 0),
                         codes.get("DEADLINE_EXCEEDED", 0), codes.get("INVALID_ARGUMENT", 0))
            assert c["errors"] == sum(codes.values()) and c["requests"] > 10
        finally:
            await server.stop(None)

    asyncio.run(main())


class CountingProbe(StepProbe):
    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log

    def sample(self):
        self.log.append(self.name)
        return super().sample()


def test_closed_levels_take_turns_and_meter_every_slice():
    async def main():
        server, fake, target = await start_fake()
        try:
            cfg = BenchConfig(target=target, catalog=None, duration=0.6, slices=3, deadline=0.2)
            log = []
            systems = {name: (target, Meter(CountingProbe(name, log))) for name in ("a", "b")}
            rows = await closed_levels(systems, requests_pool(), 2, cfg)
            # each slice samples its system's probe twice (start, pause); the systems alternate
            assert log == ["a", "a", "b", "b"] * 3
            for row in rows.values():
                assert row["elapsed_s"] == pytest.approx(0.6, abs=0.15)
                # three slices of 0.1 s each (StepProbe) add up
                assert row["cpu_ms_per_request"]["per_server"]["gateway"] == pytest.approx(
                    300 / row["requests"])
        finally:
            await server.stop(None)

    asyncio.run(main())


# ---- a whole run: catalog, echo subprocess, metrics scraping, report, JSON

def make_catalog(path):
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE students (student_id TEXT PRIMARY KEY, skills TEXT, education TEXT, field TEXT, "
                  "cgpa REAL, college_tier INTEGER, district TEXT, state TEXT, latitude REAL, longitude REAL, "
                  "preferred_sectors TEXT, preferred_districts TEXT)")
        c.executemany("INSERT INTO students VALUES (?, 'python;sql', 'B.Tech', 'CS', 8.1, 2, 'Pune', 'Maharashtra', "
                      "18.5, 73.8, 'IT', 'Pune')", [(f"{k}-{i}",) for i, k in enumerate(KINDS)])
        c.execute("CREATE TABLE internships (internship_id TEXT PRIMARY KEY, skills TEXT)")
        c.executemany("INSERT INTO internships VALUES (?, 'python')", [("I1",), ("I2",), ("I3",)])
        c.execute("CREATE TABLE interactions (student_id TEXT, internship_id TEXT, event TEXT, timestamp INTEGER)")
        c.executemany("INSERT INTO interactions VALUES (?, ?, ?, 0)", [("ok-0", "I2", "apply"), ("ok-1", "I2", "apply"),
                                                                    ("ok-2", "I3", "apply"), ("ok-0", "I1", "view")])


def test_build_requests_and_shortlist_ids(tmp_path):
    make_catalog(tmp_path / "c.db")
    ids = build_requests(tmp_path / "c.db", k=5, explain=True, profile_only=False)
    assert [r.student_id for r in ids][:2] == ["bad-7", "deg-3"] and not ids[0].HasField("explain")
    assert all(r.k == 5 for r in ids)
    profiles = build_requests(tmp_path / "c.db", k=5, explain=False, profile_only=True)
    assert len(profiles) == len(KINDS) and profiles[0].HasField("explain") and not profiles[0].explain
    p = profiles[0].profile
    assert not profiles[0].student_id and list(p.skills) == ["python", "sql"] and p.cgpa == pytest.approx(8.1)
    assert p.college_tier == 2 and list(p.preferred_districts) == ["pune"]
    assert shortlist_internships(tmp_path / "c.db", 4) == ["I2", "I3", "I2", "I3"]


class PromHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        PromHandler.cpu += 0.05
        body = f"process_cpu_seconds_total {PromHandler.cpu}\nprocess_start_time_seconds 1.0\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


PromHandler.cpu = 1.0


def test_run_bench_end_to_end_with_echo_and_report(tmp_path):
    make_catalog(tmp_path / "c.db")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, fake, target = asyncio.run_coroutine_threadsafe(start_fake(), loop).result(10)
    prom = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PromHandler)
    threading.Thread(target=prom.serve_forever, daemon=True).start()
    try:
        ports = metrics_ports(1, [f"gateway={prom.server_address[1]}"])  # the others: nothing listens
        cfg = BenchConfig(target=target, catalog=tmp_path / "c.db", concurrency=[2], duration=0.4,
                          rates=[50], open_duration=0.4, deadline=0.2, shortlist=3, metrics_ports=ports)
        result = run_bench(cfg, log=lambda *a, **k: None)
    finally:
        prom.shutdown()
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    closed = result["closed"][0]
    assert closed["echo"]["requests"] > 0 and closed["echo"]["errors"] == 0
    assert closed["echo"]["cpu_ms_per_request"]["per_server"]["echo"] is not None
    gw_cpu = closed["gateway"]["cpu_ms_per_request"]
    assert gw_cpu["per_server"]["gateway"] > 0 and gw_cpu["per_server"]["content"] is None
    assert result["open"][0]["sent"] == 20 and result["open"][0]["resource_exhausted"] > 0
    s = result["shortlist"]
    assert (s["calls"], s["ok"], s["mean_pool_size"], s["candidates"]) == (3, 3, 7.0, 9)
    assert (s["missing_match"], s["missing_success"], s["missing_either"]) == (3, 3, 6)
    text = report(result)
    for heading in ("Closed loop", "Open loop", "CPU ms per OK answer", "Shortlist"):
        assert heading in text
    assert "echo" in text and " - " in text  # unscraped servers show "-"
    json.dumps(json_safe(result), allow_nan=False)


def test_cli_parses_bench_flags():
    from services.cli import build_parser

    a = build_parser().parse_args(["bench", "--concurrency", "1", "8", "--rate", "10", "20", "--no-explain",
                                   "--metrics-base", "9150", "--metrics-ports", "ranker=9999", "--shortlist", "5"])
    assert a.concurrency == [1, 8] and a.rate == [10, 20] and a.no_explain and a.shortlist == 5
    assert a.deadline_ms == 2000 and a.k == 10 and not a.profile_only and a.metrics_base == 9150


def test_probe_failure_runs_targets_and_summary():
    from gateway.bench.cli import probe_targets
    from gateway.bench.probes import ProbeLog, ProbeTarget, longest_failure_run

    assert longest_failure_run([True, False, False, True, False]) == 2
    assert longest_failure_run([]) == 0
    targets = probe_targets("127.0.0.1:51150")
    assert [t.address for t in targets][:2] == ["127.0.0.1:51150", "127.0.0.1:51151"]
    assert targets[0].service == "pmis.v1.RecommendationGateway" and len(targets) == 6
    assert ProbeTarget.parse(targets[1].arg()) == targets[1]
    log = ProbeLog(targets[0], [(True, 0.002), (False, 1.0), (True, 0.004)])
    s = log.summary()
    assert (s["probes"], s["failed"], s["longest_failure_run"], s["max_ms"]) == (3, 1, 1, 1000.0)


def test_probes_fail_against_nothing_listening_and_pass_against_a_serving_health():
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from gateway.bench.probes import Prober, ProbeTarget, probe_once

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert probe_once(ProbeTarget("s", f"127.0.0.1:{port}", "svc"), 1.0)[0]
        assert not probe_once(ProbeTarget("s", f"127.0.0.1:{port}", "down"), 1.0)[0]
        ok, seconds = probe_once(ProbeTarget("s", "127.0.0.1:1", "svc"), 0.3)  # nothing listens: fails in time
        assert not ok and seconds < 1.0
        prober = Prober([ProbeTarget("s", f"127.0.0.1:{port}", "svc")], period=0.05, timeout=1.0)
        prober.start()
        time.sleep(0.5)
        [summary] = prober.stop()
        assert summary["server"] == "s" and summary["probes"] >= 3 and summary["failed"] == 0
    finally:
        server.stop(None)
