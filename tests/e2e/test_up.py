"""`pmis up`, the README's main command, as a user runs it: every server started on ports it
picked, real answers, and a clean stop (after the demo, or on Ctrl-C) that leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from services.common.listening import read_ports
from services.components import SERVERS, SERVICE_NAMES
from tests.support.systems import copy_bundles
from tests.support.waiting import health_status, wait_serving, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def home(small_system, tmp_path) -> Path:
    """PMIS_HOME with the small system's data (read only) and a private copy of its bundles."""
    copy_bundles(small_system.bundles, tmp_path / "bundles")
    (tmp_path / "data").symlink_to(small_system.data, target_is_directory=True)
    return tmp_path


def up(home: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PMIS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PMIS_ADMIN_TOKEN", None)
    # generous budgets: a loaded 2-core machine must not turn the demo answers "degraded"
    env.update({f"PMIS_{c.upper()}_BUDGET_MS": "5000" for c in ("content", "collaborative", "success", "ranker")})
    return subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", "0", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def reported_ports(home: Path) -> dict[str, int]:
    ports = {name: read_ports(home / "logs" / f"{name}.ports") for name in SERVERS}
    assert all(ports.values()), ports
    return {name: p["grpc"] for name, p in ports.items()}


def nothing_answers(ports: dict[str, int]) -> bool:
    return all(health_status(f"127.0.0.1:{port}", SERVICE_NAMES[name], timeout=1) is None
               for name, port in ports.items())


def test_up_serves_the_demo_and_stops_everything(home):
    proc = up(home, "--exit-after-demo")
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "All six servers SERVING" in out and "stopping all servers" in out
    # the demo: a known student and a profile-only one, five recommendations each, not degraded
    assert "Recommendations for S0000001: ranked by ranker\n" in out, out[-3000:]
    assert "Recommendations for new student (profile): ranked by ranker\n" in out, out[-3000:]
    assert len(re.findall(r"^ [1-5]  I\d{6} ", out, flags=re.M)) == 10, out[-3000:]
    assert (home / "admin-token").stat().st_mode & 0o077 == 0  # the admin token: owner only
    assert nothing_answers(reported_ports(home))


def test_up_stops_every_server_on_ctrl_c(home):
    proc = up(home, "--no-demo")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-C stops everything" in line for line in lines), 180, "pmis up serving", proc)
        ports = reported_ports(home)
        assert all(health_status(f"127.0.0.1:{port}", SERVICE_NAMES[name]) == 1 for name, port in ports.items())
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out[-2000:]
    assert "stopping all servers" in out
    assert nothing_answers(ports)


# --------------------------------------------------------------------------- supervision


class FakeProc:
    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self):
        return self.returncode


class FakeCluster:
    """What the supervisor uses of a Cluster; `fail_starts` starts in a row die before listening."""

    def __init__(self):
        self.procs = {"content": FakeProc(1), "gateway": FakeProc(2)}
        self.log_dir, self.started, self.fail_starts = Path("/logs"), [], 0
        self.ports = type("P", (), {"of": staticmethod(lambda name: 50051)})()

    def start(self, name):
        self.started.append(name)
        self.procs[name] = FakeProc(100 + len(self.started))
        if self.fail_starts:
            self.fail_starts -= 1
            self.procs[name].returncode = 1
            raise RuntimeError(f"{name} exited with status 1")
        return self.procs[name]


def test_supervisor_restarts_with_doubling_back_off_and_resets_when_stable():
    from services.launcher import Supervisor

    now = [0.0]
    said: list[str] = []
    cluster = FakeCluster()
    sup = Supervisor(cluster, clock=lambda: now[0], say=lambda msg, **_: said.append(msg))

    def tick(seconds: float) -> None:
        now[0] += seconds
        sup.check()

    cluster.procs["content"].returncode = -9          # killed
    tick(0.1)
    assert "content exited with status -9; restarting it in 0.5s" in said[-1]
    tick(0.3)
    assert cluster.started == []                      # not before its back-off
    tick(0.3)
    assert cluster.started == ["content"] and "content restarted" in said[-1]
    assert cluster.procs["gateway"].returncode is None  # the others were never touched

    cluster.fail_starts = 2                            # crashes again: 1 s, then 2 s, then 4 s
    cluster.procs["content"].returncode = 1
    delays = []
    for _ in range(3):
        tick(0.1)
        delays.append(float(said[-1].split("restarting it in ")[1].split("s")[0]))
        tick(delays[-1])
    assert delays == [1.0, 2.0, 4.0] and cluster.started.count("content") == 4
    assert any("failed to restart" in m for m in said)

    tick(Supervisor.STABLE_AFTER + 1)                 # up for a minute: the next crash starts over
    cluster.procs["content"].returncode = -9
    tick(0.1)
    assert "restarting it in 0.5s" in said[-1]


def test_up_restarts_each_killed_component_while_answers_degrade_and_never_fail(home):
    proc = up(home, "--no-demo")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Ctrl-C stops everything" in line for line in lines), 180, "pmis up serving", proc)
        target = f"127.0.0.1:{reported_ports(home)['gateway']}"
        back_after: dict[str, float] = {}
        with RecommendLoad(target) as load:
            load.wait_answered(20)
            for name in ("content", "collaborative", "success", "ranker"):
                before = read_ports(home / "logs" / f"{name}.ports")
                killed = time.monotonic()
                os.kill(before["pid"], signal.SIGKILL)
                wait_until(lambda: (read_ports(home / "logs" / f"{name}.ports") or before)["pid"] != before["pid"],
                           60, f"{name} restarted", proc)
                wait_serving(f"127.0.0.1:{before['grpc']}", SERVICE_NAMES[name], 60, proc)
                wait_until(lambda: load.answered_since(time.monotonic(), clean=True, n=3), 60,
                           f"answers without {name} degraded", proc)
                back_after[name] = time.monotonic() - killed
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    failed = [r for r in load.records if r[2] is not None]
    degraded = Counter(c for r in load.records for c in r[1])
    print(f"\n[pmis up supervision] calls {len(load.records)}, failed {len(failed)}, degraded by component "
          f"{dict(degraded)}; back SERVING and answering undegraded after (s): "
          + ", ".join(f"{n} {t:.1f}" for n, t in back_after.items()))
    assert failed == [], failed[:5]
    assert set(degraded) <= {"content", "collaborative", "success", "ranker"}
    for name in back_after:
        assert f"{name} exited with status -9; restarting it in 0.5s" in out
        assert f"{name} restarted (pid" in out
        assert back_after[name] < 30, back_after  # measured: a few seconds each
    assert proc.returncode == 0


class RecommendLoad:
    """Two client threads sending Recommend for known students; each record: (finished at,
    degraded components, failure or None)."""

    def __init__(self, target: str, threads: int = 2):
        self.target, self.records, self._stop = target, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        from pmis.v1 import gateway_pb2, gateway_pb2_grpc

        ids = [f"S{n:07d}" for n in range(1, 201)]
        with grpc.insecure_channel(self.target) as channel:
            stub = gateway_pb2_grpc.RecommendationGatewayStub(channel)
            i = seed
            while not self._stop.is_set():
                i += 2
                try:
                    r = stub.Recommend(gateway_pb2.RecommendRequest(student_id=ids[i % len(ids)], k=5), timeout=5)
                    self.records.append((time.monotonic(), tuple(r.degraded), None if len(r.items) == 5 else "short"))
                except grpc.RpcError as e:
                    self.records.append((time.monotonic(), (), f"{e.code().name}: {e.details()}"))

    def wait_answered(self, n: int) -> None:
        start = len(self.records)
        wait_until(lambda: len(self.records) >= start + n, 60, f"{n} answers")

    def answered_since(self, since: float, clean: bool, n: int) -> bool:
        """Whether `n` answers without degradation arrive after `since` (waits for them, briefly)."""
        end = time.monotonic() + 2
        while time.monotonic() < end:
            recent = [r for r in self.records if r[0] > since and (not clean or not r[1]) and r[2] is None]
            if len(recent) >= n:
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> "RecommendLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
