"""`pmis up`: prepare what is missing, start the four component servers, the gateway and the trainer on
loopback, wait until every health check says SERVING, answer a real request, and stop them all cleanly."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.listening import read_ports
from services.components import COMPONENT_MODULES, SERVERS, SERVICE_NAMES



@dataclass
class Ports:
    """gRPC and metrics port per server; 0 = the server picks a free one and reports it
    (services/common/listening.py), and the cluster records what it got."""
    grpc: dict
    metrics: dict

    @classmethod
    def consecutive(cls, gateway: int = 50050, metrics: int = 9100) -> "Ports":
        """Gateway on `gateway`, content/collaborative/success/ranker on the next four, the trainer on
        the one after (50055 / 9105 by default); the same for metrics. `gateway` 0: `any()`."""
        if gateway == 0:
            return cls.any()
        order = ["gateway", *COMPONENT_MODULES, "trainer"]
        return cls({n: gateway + i for i, n in enumerate(order)}, {n: metrics + i for i, n in enumerate(order)})

    @classmethod
    def any(cls) -> "Ports":
        """Every server binds ports the OS picks (tests, several clusters on one machine)."""
        return cls({n: 0 for n in SERVERS}, {n: 0 for n in SERVERS})

    def of(self, name: str) -> int:
        return self.grpc[name]

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.grpc[name]}"


def wait_serving(target: str, service: str, timeout: float, proc: subprocess.Popen | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    """Poll grpc.health.v1 until `service` is SERVING; fail early if the process died."""
    end = time.monotonic() + timeout
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{service} exited with status {proc.returncode}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{service} at {target} not SERVING after {timeout:.0f}s")


class Cluster:
    """The six server processes of one loopback deployment.

    Admin RPCs (Reload, the trainer's StartTraining/CancelJob/Activate/Rollback) need a bearer
    token: the cluster's servers share `admin_token` (PMIS_ADMIN_TOKEN from the environment, or a
    fresh random one); `admin_metadata` is what a client sends.
    """

    def __init__(self, home: Path, bundles: Path, catalog: Path, ports: Ports, log_dir: Path | None = None,
                 extra_env: dict | None = None, runs: Path | None = None, server_env: dict | None = None):
        """`extra_env`: for every server; `server_env`: {server name: environment of that one}."""
        self.home, self.bundles, self.catalog, self.ports = home, bundles, catalog, ports
        self.runs = runs or home / "runs"
        self.log_dir = log_dir or home / "logs"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1", **(extra_env or {})}
        self.admin_token = self.env.get("PMIS_ADMIN_TOKEN") or secrets.token_urlsafe(24)
        self.env["PMIS_ADMIN_TOKEN"] = self.admin_token
        self.server_env = server_env or {}
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)

    def command(self, name: str) -> list[str]:
        p = self.ports
        listen = ["--port", str(p.of(name)), "--metrics-port", str(p.metrics[name] or "auto"),
                  "--ports-file", str(self.ports_file(name))]
        if name == "gateway":
            cmd = [sys.executable, "-m", "gateway.server", *listen, "--catalog", str(self.catalog)]
            for c in COMPONENT_MODULES:
                cmd += [f"--{c}-target", f"127.0.0.1:{p.of(c)}"]
            return cmd
        if name == "trainer":
            return [sys.executable, "-m", "services.trainer.server", *listen, "--bundles", str(self.bundles),
                    "--runs", str(self.runs), "--data", str(Path(self.catalog).parent)]
        return [sys.executable, "-m", COMPONENT_MODULES[name], *listen, "--bundles", str(self.bundles)]

    def ports_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.ports"

    def start(self, name: str, timeout: float = 60) -> subprocess.Popen:
        """Start one server and wait until it listens; its ports are then in `self.ports` (a
        restarted server asks for the ports it had)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ports_file(name).unlink(missing_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.command(name), stdout=log, stderr=subprocess.STDOUT,
                                    env={**self.env, **self.server_env.get(name, {})},
                                    cwd=Path(__file__).resolve().parents[1])
        self.procs[name] = proc
        listening_on = self._wait_listening(name, proc, timeout)
        self.ports.grpc[name], self.ports.metrics[name] = listening_on["grpc"], listening_on["metrics"]
        return proc

    def _wait_listening(self, name: str, proc: subprocess.Popen, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while (ports := read_ports(self.ports_file(name))) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}; see {self.log_dir}/{name}.log")
            if time.monotonic() > end:
                raise TimeoutError(f"{name} not listening after {timeout:.0f}s; see {self.log_dir}/{name}.log")
            time.sleep(0.05)
        return ports

    def start_all(self, timeout: float = 120, servers: list[str] | None = None,
                  probe: grpc.ChannelCredentials | None = None) -> None:
        """Components and trainer first: the gateway is started with the ports they got. `probe`:
        credentials of the health checks, when the servers speak TLS."""
        try:
            for name in servers or [*COMPONENT_MODULES, "trainer", "gateway"]:
                self.start(name, timeout)
            for name, proc in self.procs.items():
                wait_serving(f"127.0.0.1:{self.ports.of(name)}", SERVICE_NAMES[name], timeout, proc, probe)
        except BaseException:
            self.stop_all()  # nothing left running when start-up fails
            raise

    def stop(self, name: str, timeout: float = 15) -> int:
        return self._stop_together([name], timeout)[name]

    def stop_all(self, timeout: float = 15) -> None:
        """The gateway first (no new requests), then every other server at once."""
        for group in (["gateway"], ["trainer", *COMPONENT_MODULES]):
            self._stop_together([n for n in group if n in self.procs], timeout)

    def _stop_together(self, names: list[str], timeout: float) -> dict[str, int]:
        """SIGTERM to each (graceful: NOT_SERVING, drain, grace), then wait; SIGKILL after `timeout`."""
        procs = {name: self.procs.pop(name) for name in names}
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for proc in procs.values():
            try:
                proc.wait(max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {name: proc.returncode for name, proc in procs.items()}


class Supervisor:
    """Restarts a server of the cluster that exits, on the ports it had (so the gateway's targets
    stay right), after a back-off that doubles with each restart in a row (0.5 s up to 30 s) and
    resets once the server has stayed up for a minute. The others keep serving meanwhile: the
    gateway degrades around a missing component."""

    FIRST_DELAY, MAX_DELAY, STABLE_AFTER = 0.5, 30.0, 60.0

    def __init__(self, cluster: Cluster, clock=time.monotonic, say=print):
        self.cluster, self.clock, self.say = cluster, clock, say
        self.restarts: dict[str, int] = {}        # restarts in a row, per server
        self.started_at = {name: clock() for name in cluster.procs}
        self.due: dict[str, float] = {}           # server -> when to restart it

    def check(self) -> None:
        """One pass: notice exits, restart what is due."""
        now = self.clock()
        for name, proc in list(self.cluster.procs.items()):
            if name in self.due:
                if now >= self.due[name]:
                    self._restart(name)
            elif proc.poll() is not None:
                if now - self.started_at[name] >= self.STABLE_AFTER:
                    self.restarts[name] = 0
                delay = min(self.FIRST_DELAY * 2 ** self.restarts.get(name, 0), self.MAX_DELAY)
                self.due[name] = now + delay
                self.say(f"{name} exited with status {proc.returncode}; restarting it in {delay:.1f}s "
                         f"(see {self.cluster.log_dir}/{name}.log)", flush=True)

    def _restart(self, name: str) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        del self.due[name]
        try:
            proc = self.cluster.start(name)
        except (RuntimeError, TimeoutError) as e:  # exited again before listening: the next check backs off
            self.say(f"{name} failed to restart: {e}", flush=True)
            self.started_at[name] = self.clock()
            return
        self.started_at[name] = self.clock()
        self.say(f"{name} restarted (pid {proc.pid}, restart {self.restarts[name]} in a row) on "
                 f"127.0.0.1:{self.cluster.ports.of(name)}", flush=True)


def ensure_ready(home: Path, data: Path, bundles: Path, runs: Path, pmis: Callable[[list], int]) -> None:
    """Generate the default dataset and train bundles when they are missing, with `pmis` (the
    CLI's main: `pmis generate`, `pmis train`)."""
    if not (data / "catalog.db").exists():
        print(f"no dataset in {data}: generating the default one", flush=True)
        _step(pmis(["generate", "--data", str(data), "--quiet"]), "generating the dataset")
    from models.bundle.registry import open_registry, registry_exists

    have = set()
    if registry_exists(bundles):
        reg = open_registry(bundles)
        for c in COMPONENT_MODULES:
            try:
                reg.resolve(c, "champion")
                have.add(c)
            except KeyError:
                pass
    if have != set(COMPONENT_MODULES):
        print("no champion bundles: training (about two minutes)", flush=True)
        _step(pmis(["train", "--data", str(data), "--bundles", str(bundles), "--runs", str(runs), "--quiet"]),
              "training")
    elif (problem := _champion_problem(reg)) is not None:
        print(f"the champion bundles cannot be served ({problem}): retraining (about a minute)", flush=True)
        _step(pmis(["train", "--data", str(data), "--bundles", str(bundles), "--runs", str(runs), "--quiet"]),
              "training")


def _step(status: int, what: str) -> None:
    if status != 0:
        raise SystemExit(f"pmis up: {what} failed (exit status {status}); see the messages above")


def _champion_problem(registry) -> str | None:
    """Why the champions could not be served (unsigned or tampered, or a ranker trained on an
    older feature schema), or None."""
    from models.bundle.format import BundleError
    from models.bundle.reading import load_bundle, verify_bundle
    from models.components.ranker import FEATURES

    try:
        for component in COMPONENT_MODULES:
            verify_bundle(registry.resolve(component, "champion")["path"])
        ranker = load_bundle(registry.resolve("ranker", "champion")["path"])
    except BundleError as e:
        return str(e)
    if ranker.documents["model"]["features"] != FEATURES:
        return "the ranker was trained on an older feature schema"
    return None


def up(home: Path, data: Path, bundles: Path, runs: Path, ports: Ports, pmis: Callable[[list], int], demo: bool = True,
       exit_after: bool = False) -> int:
    from services.client import demo_requests

    ensure_ready(home, data, bundles, runs, pmis)
    cluster = Cluster(home, bundles, data / "catalog.db", ports, runs=runs)
    token_file = home / "admin-token"
    if "PMIS_ADMIN_TOKEN" not in os.environ:  # a fresh token for this session, readable only by its owner
        token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cluster.admin_token + "\n")
    try:
        started = time.perf_counter()
        cluster.start_all()
        target = ports.target("gateway")
        admin = (f"$(cat {token_file})" if "PMIS_ADMIN_TOKEN" not in os.environ else "$PMIS_ADMIN_TOKEN")
        print(f"\nAll six servers SERVING in {time.perf_counter() - started:.1f}s "
              f"(logs in {cluster.log_dir}). Try:\n"
              f"  grpcurl -plaintext {target} list\n"
              f"  grpcurl -plaintext -d '{{\"student_id\": \"S0000001\", \"k\": 5}}' {target} "
              f"pmis.v1.RecommendationGateway/Recommend\n"
              f"  pmis recommend --student S0000001\n"
              f"  grpcurl -plaintext {ports.target('trainer')} pmis.v1.TrainerService/Status\n"
              f"  grpcurl -plaintext -H \"authorization: Bearer {admin}\" -d '{{\"config\": {{}}}}' "
              f"{ports.target('trainer')} pmis.v1.TrainerService/StartTraining\n", flush=True)
        if demo:
            demo_requests(target)
        if exit_after:
            return 0
        print("Serving; Ctrl-C stops everything.", flush=True)
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        # Ctrl-C stops everything even where SIGINT arrived ignored (a script's background job
        # inherits SIG_IGN, and Python then never raises KeyboardInterrupt).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        supervisor = Supervisor(cluster)
        try:
            while not stop:
                supervisor.check()
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        print("stopping all servers", flush=True)
        cluster.stop_all()
