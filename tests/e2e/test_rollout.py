"""Local proofs of what makes a Kubernetes rollout safe, with real server processes on loopback.

The manifests in k8s/ rely on three behaviours; each is shown here on this machine:

1. Per-call load balancing: two replicas of one component behind ONE gateway target (gRPC's
   `ipv4:` multi-address target, as a headless Service's DNS answer is in the cluster) both
   receive calls, counted by each replica's own Prometheus metrics.
2. Rolling restart under steady load: each replica in turn gets SIGTERM (NOT_SERVING, drain,
   graceful stop) and is replaced; no call fails and no answer is degraded. The numbers (sent,
   failed, p50/p99 overall and during the restart) are printed: `pytest -s tests/e2e/test_rollout.py`.
3. Readiness follows the bundle: a replica whose bundle loads slowly answers health checks with
   NOT_SERVING (and its RPCs with UNAVAILABLE) until the bundle is loaded, then SERVING.
Plus: a replica loads its bundle from a registry on a read-only volume (the k8s mount), checked
with a read-only bind mount in a private mount namespace where the machine allows one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pmis.v1 import common_pb2, content_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from services.common.listening import read_ports
from services.components import COMPONENT_MODULES, SERVICE_NAMES
from tests.support.waiting import wait_serving, wait_until

ROOT = Path(__file__).resolve().parents[2]
# Generous budgets, as in test_e2e: on a busy 2-core machine a 300 ms budget could lapse and turn
# an answer "degraded"; these tests are about replicas coming and going, not latency.
BUDGETS = {f"PMIS_{c.upper()}_BUDGET_MS": "5000" for c in COMPONENT_MODULES}
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    ports_file: Path
    port: int = 0
    metrics_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 60) -> "Server":
        """Until the server reports the ports it bound (it asked for any free ones)."""
        ports = wait_until(lambda: read_ports(self.ports_file), timeout, f"{self.name} listening", self.proc)
        self.port, self.metrics_port = ports["grpc"], ports["metrics"]
        return self

    def wait_serving(self, timeout: float = 90) -> "Server":
        wait_serving(self.target, SERVICE_NAMES[self.name], timeout, self.proc)
        return self

    def served(self, methods=("Retrieve", "Score", "RetrieveBatch", "ScoreBatch")) -> int:
        """Successful calls of `methods` this process answered, from its own /metrics (the
        gateway's calls come in batch RPCs)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("pmis_grpc_requests_total{") and 'code="OK"' in line and \
                    any(f'method="{m}"' in line for m in methods):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Deployment:
    """Four components (content with two replicas) and a gateway, as real processes."""
    bundles: Path
    catalog: Path
    logs: Path
    servers: list = field(default_factory=list)

    def spawn(self, cmd: list[str], log_name: str, env: dict | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1", **BUDGETS, **(env or {})}
        with open(self.logs / f"{log_name}.log", "ab") as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def component(self, name: str, port: int = 0, *extra: str, log_name: str | None = None,
                  prefix: list[str] | None = None, env: dict | None = None) -> Server:
        """A component process on `port` (0: any free one), listening when this returns."""
        log_name = log_name or f"{name}-{len(self.servers)}"
        ports_file = self.logs / f"{log_name}.ports"
        cmd = (prefix or [sys.executable, "-m", COMPONENT_MODULES[name]]) + [
            "--port", str(port), "--metrics-port", "auto", "--ports-file", str(ports_file),
            "--bundles", str(self.bundles), *extra]
        return self._started(Server(name, self.spawn(cmd, log_name, env), ports_file))

    def gateway(self, targets: dict) -> Server:
        ports_file = self.logs / "gateway.ports"
        cmd = [sys.executable, "-m", "gateway.server", "--port", "0", "--metrics-port", "auto",
               "--ports-file", str(ports_file), "--catalog", str(self.catalog)]
        for c, t in targets.items():
            cmd += [f"--{c}-target", t]
        return self._started(Server("gateway", self.spawn(cmd, "gateway"), ports_file))

    def _started(self, server: Server) -> Server:
        self.servers.append(server)  # stopped by stop_all even if it never comes up
        return server.wait_listening()

    def stop_all(self) -> None:
        for s in reversed(self.servers):
            s.terminate()


# Replicas drain for 3 s after SIGTERM (NOT_SERVING, still answering), then stop with a grace
# period: the PMIS_DRAIN_SECONDS the manifests set (k8s/base/config.yaml); the gateway's health
# watch must stop routing to a draining replica within it.
REPLICA_ARGS = ("--drain", "3", "--grace", "5")


@pytest.fixture(scope="module")
def deployment(small_system, tmp_path_factory):
    d = Deployment(small_system.bundles, small_system.catalog, tmp_path_factory.mktemp("rollout-logs"))
    try:
        singles = {c: d.component(c) for c in ("collaborative", "success", "ranker")}
        replicas = [d.component("content", 0, *REPLICA_ARGS) for _ in range(2)]
        for s in [*singles.values(), *replicas]:
            s.wait_serving()
        targets = {c: s.target for c, s in singles.items()}
        # One target, two addresses: what the gateway gets from a headless Service's DNS in the cluster.
        targets["content"] = "ipv4:" + ",".join(r.target for r in replicas)
        gw = d.gateway(targets).wait_serving()
        d.replicas, d.gw = replicas, gw
        yield d
    finally:
        d.stop_all()


def students(catalog: Path, n: int = 200) -> list[str]:
    with sqlite3.connect(catalog) as c:
        return [r[0] for r in c.execute("SELECT DISTINCT student_id FROM interactions ORDER BY student_id LIMIT ?",
                                        (n,))]


class Load:
    """Closed-loop Recommend calls from several threads; a call fails on any RPC error or degraded answer."""

    def __init__(self, target: str, ids: list[str], threads: int = 4, timeout: float = 5.0):
        self.target, self.ids, self.timeout = target, ids, timeout
        self.records: list[tuple[float, float, str | None]] = []  # (started, seconds, failure or None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(self.target) as ch:
            stub = gateway_pb2_grpc.RecommendationGatewayStub(ch)
            while not self._stop.is_set():
                started = time.monotonic()
                failure = None
                try:
                    r = stub.Recommend(gateway_pb2.RecommendRequest(student_id=rng.choice(self.ids), k=5),
                                       timeout=self.timeout)
                    if r.degraded:
                        failure = "degraded: " + ",".join(r.degraded)
                except grpc.RpcError as e:
                    failure = f"{e.code().name}: {e.details()}"
                with self._lock:
                    self.records.append((started, time.monotonic() - started, failure))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def wait_answered(self, n: int, timeout: float = 60) -> None:
        """Until `n` more calls have finished."""
        with self._lock:
            target = len(self.records) + n
        wait_until(lambda: len(self.records) >= target, timeout, f"{n} calls answered")

    def between(self, start: float, end: float) -> list[tuple[float, float, str | None]]:
        with self._lock:
            return [r for r in self.records if start <= r[0] <= end]


def percentile_ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def test_two_replicas_behind_one_target_both_receive_calls(deployment):
    a, b = deployment.replicas
    before = [a.served(), b.served()]
    ids = students(deployment.catalog)
    with grpc.insecure_channel(deployment.gw.target) as ch:
        stub = gateway_pb2_grpc.RecommendationGatewayStub(ch)
        for sid in ids[:30]:
            r = stub.Recommend(gateway_pb2.RecommendRequest(student_id=sid, k=5), timeout=5)
            assert not r.degraded and len(r.items) == 5
    got = [a.served() - before[0], b.served() - before[1]]
    total = sum(got)
    print(f"\n[proof 1] 30 Recommend calls through one gateway target -> content replica calls {got}")
    assert total >= 30  # at least one Retrieve per Recommend
    # round_robin balances per call, not per connection: both replicas carry a fair share.
    assert min(got) >= 0.3 * total, got


def test_restart_of_a_replica_under_load_fails_no_call(deployment):
    d = deployment
    ids = students(d.catalog)
    old, other = d.replicas
    other_before = other.served()
    with Load(d.gw.target, ids, threads=4) as load:
        load.wait_answered(20)  # steady state first
        restart_start = time.monotonic()
        # Kubernetes: the pod leaves the endpoints, preStop sleeps, SIGTERM; the server goes
        # NOT_SERVING (the gateway's health watch stops routing to it), drains, stops with grace.
        # The replacement comes up on the same address here (a static ipv4: list); in the cluster
        # on a new pod IP that the gateway finds by re-resolving the headless Service.
        assert old.terminate() == 0, f"replica on {old.port} did not stop cleanly"
        stopped = time.monotonic()
        new = d.component("content", old.port, *REPLICA_ARGS, log_name=f"content-{old.port}-new")
        new.wait_serving()
        serving = time.monotonic()
        # maxUnavailable: 0 + minReadySeconds: the restart is over once the replacement takes
        # traffic (the gateway reconnects to it within its 2 s back-off cap).
        wait_until(lambda: new.served() > 0, 30, "the gateway to route calls to the replacement", new.proc)
        restart_end = time.monotonic()
        load.wait_answered(20)  # and steady state after
    d.replicas = [new, other]
    everything = load.records
    during = load.between(restart_start, restart_end)
    failed = [r for r in everything if r[2] is not None]
    lat_all, lat_during = [r[1] for r in everything], [r[1] for r in during]
    print(f"\n[proof 2] SIGTERM + replacement of 1 of 2 content replicas under 4 client threads: "
          f"requests sent {len(everything)}, failed {len(failed)}; p50 {percentile_ms(lat_all, 0.5):.0f} ms, "
          f"p99 {percentile_ms(lat_all, 0.99):.0f} ms overall; during the restart ({restart_end - restart_start:.1f}s: "
          f"stopped after {stopped - restart_start:.1f}s, replacement SERVING after {serving - stopped:.1f}s, taking "
          f"calls after {restart_end - serving:.1f}s more) sent {len(during)}, p99 {percentile_ms(lat_during, 0.99):.0f} ms; "
          f"calls answered by the replacement {new.served()}, by the other replica {other.served() - other_before}")
    assert failed == [], failed[:5]
    assert len(during) >= 10 and len(everything) >= 30
    assert new.served() > 0 and other.served() > other_before


SLOW_LOAD = """
import runpy, time
import services.common.server as plumbing
_load = plumbing.load_bundle
def slow_load(*args, **kwargs):
    time.sleep({delay})
    return _load(*args, **kwargs)
plumbing.load_bundle = slow_load
runpy.run_module("services.content.server", run_name="__main__")
"""


def _log_time(log: str, message: str) -> float:
    """Wall-clock time of the first JSON log record with this message."""
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == message:
            return datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
    raise AssertionError(f"no {message!r} in the log")


def test_replica_is_not_serving_until_its_bundle_is_loaded(deployment):
    delay = 3.0
    slow = deployment.component("content", 0, log_name="content-slow",
                                prefix=[sys.executable, "-c", SLOW_LOAD.format(delay=delay)])
    seen: list[tuple[float, int]] = []  # (wall clock, health status)
    rpc_while_loading = None
    try:
        with grpc.insecure_channel(slow.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            content = content_pb2_grpc.ContentServiceStub(ch)
            end = time.monotonic() + 60
            while time.monotonic() < end and slow.proc.poll() is None:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAMES["content"]),
                                          timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.05)  # a poll: not answering yet
                    continue
                seen.append((time.time(), status))
                if status == SERVING:
                    break
                if rpc_while_loading is None:
                    try:
                        content.Retrieve(common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(
                            skills=["python"]), n=3), timeout=2)
                        rpc_while_loading = "OK"
                    except grpc.RpcError as e:
                        rpc_while_loading = e.code().name
                time.sleep(0.05)
            assert seen and seen[-1][1] == SERVING, f"never SERVING: {seen[-3:]}"
            answer = content.Retrieve(common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(
                skills=["python"]), n=3), timeout=5)
            assert len(answer.internship_ids) == 3
    finally:
        slow.terminate()
    log = (deployment.logs / "content-slow.log").read_text()
    listening, loaded = _log_time(log, "listening"), _log_time(log, "bundle loaded")
    not_serving = [t for t, s in seen if s != SERVING]
    first_serving = seen[-1][0]
    print(f"\n[proof 3] slow bundle load ({delay:.0f}s): listening at 0.0s, bundle loaded at {loaded - listening:.1f}s; "
          f"{len(not_serving)} health checks answered NOT_SERVING between {not_serving[0] - listening:.1f}s and "
          f"{not_serving[-1] - listening:.1f}s, the first SERVING at {first_serving - listening:.1f}s; an RPC while "
          f"loading: {rpc_while_loading}")
    assert loaded - listening >= delay - 0.05  # the load really was slow, and the server listened throughout
    # Health answered NOT_SERVING while the bundle loaded, and SERVING only after it was loaded.
    assert sum(t < loaded for t in not_serving) >= 5
    assert first_serving >= loaded - 0.002  # log timestamps are truncated to the millisecond
    assert rpc_while_loading == "UNAVAILABLE"


def _can_bind_mount_read_only(tmp: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    script = f'mount --bind "{probe}" "{probe}" && mount -o remount,bind,ro "{probe}" && ! touch "{probe}/x" 2>/dev/null'
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True).returncode == 0


def test_replica_loads_bundle_from_read_only_volume(deployment, tmp_path):
    """In the cluster the bundles volume (registry.db + bundle folders) is mounted read-only."""
    if not _can_bind_mount_read_only(tmp_path):
        pytest.skip("no private mount namespace here (needs unshare -m and mount); cannot make a read-only volume")
    bundles = deployment.bundles
    # A private mount namespace: the read-only bind mount exists only for this server process.
    script = (f'mount --bind "{bundles}" "{bundles}" && mount -o remount,bind,ro "{bundles}" '
              f'&& ! touch "{bundles}/.write-probe" 2>/dev/null && exec "$@"')
    ro = deployment.component("ranker", 0, log_name="ranker-readonly",
                              prefix=["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m",
                                      COMPONENT_MODULES["ranker"]])
    try:
        ro.wait_serving(60)
    except (RuntimeError, TimeoutError) as e:
        raise AssertionError(f"{e}; log: {(deployment.logs / 'ranker-readonly.log').read_text()[-2000:]}")
    finally:
        ro.terminate()
    assert not (bundles / ".write-probe").exists()


def test_read_only_registry_reads_what_servers_need_and_never_writes(small_system, tmp_path):
    from models.bundle.registry import Registry, RegistryError

    path = small_system.bundles / "registry.db"
    ro, rw = Registry(path, read_only=True), Registry(path)
    assert ro.resolve("content")["path"] == rw.resolve("content")["path"]
    assert ro.get("ranker", 1)["version"] == 1
    with pytest.raises(RegistryError, match="read-only"):
        ro.set_alias("content", 1)
    with pytest.raises(RegistryError, match="no registry"):
        Registry(tmp_path / "missing" / "registry.db", read_only=True)
    assert not (tmp_path / "missing").exists()  # a reader creates nothing
