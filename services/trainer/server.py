"""Trainer service: the model lifecycle over gRPC (pmis.v1.TrainerService, port 50055).

Training jobs run in worker processes (multiprocessing, spawn context: a fresh interpreter, no
inherited gRPC threads or locks), never in the server's threads; at most ``--max-jobs`` at a
time, the rest wait QUEUED. Everything durable is in ``registry.db`` under the bundles root
(models/lifecycle/jobs.py): the job table, the progress events WatchJob streams, the trigger log, and the
registry whose ``champion`` alias the component servers follow (they poll it: see
services/common/server.py, PMIS_WATCH_SECONDS). The server has no bundle of its own: it is
SERVING once the job table is open and jobs a previous trainer left RUNNING are marked FAILED.

Same plumbing as every server: health, reflection, Prometheus metrics, JSON logs, SIGTERM
(NOT_SERVING, running jobs stopped and marked "interrupted: trainer shut down", then stop with
grace). Admin RPCs need `authorization: Bearer <PMIS_ADMIN_TOKEN>` (services/common/auth.py).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge, Histogram

from models.lifecycle import triggers
from models.training import diagnostics
from models.bundle.format import BundleError, verify_bundle
from models.components import COMPONENTS
from models.lifecycle.jobs import (ACTIVE, STATUSES, TERMINAL, JobNotFound, JobStore, decode_token, encode_token,
                         manifest_of, normalise_config, parse_iso)
from models.bundle.registry import RegistryError, flatten_metrics
from models.training.report import plots_for
from pmis.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.common import tls
from services.common.auth import admin_only, check_admin
from services.common.errors import failed_precondition, invalid_argument, not_found, unavailable
from services.common.server import ComponentServer, ServerConfig, add_listen_args, env
from services.common.validation import Violations
from services.components import SERVICE_NAMES
from services.trainer.worker import worker_main

log = logging.getLogger("pmis.trainer")

SERVICE = SERVICE_NAMES["trainer"]
STATUS_PB = {s: trainer_pb2.JobStatus.Value(f"JOB_STATUS_{s}") for s in STATUSES}
STATUS_NAME = {v: k for k, v in STATUS_PB.items()}
PICKUP = ("component servers serving the 'champion' alias poll the registry every PMIS_WATCH_SECONDS "
          "(default 2 s) and reload when it moves; the previous version answers until the new one is warm")
MAX_PAGE = 100

JOBS = Gauge("pmis_trainer_jobs", "Training jobs by status", ["status"])
JOBS_STARTED = Counter("pmis_trainer_jobs_started_total", "Worker processes started for jobs")
JOB_SECONDS = Histogram("pmis_trainer_job_seconds", "Duration of finished jobs", ["status"],
                        buckets=(10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 14400))
CANCEL_SECONDS = Histogram("pmis_trainer_cancel_seconds", "From CancelJob to the worker gone",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))


@dataclass
class TrainerConfig:
    server: ServerConfig
    data: Path
    runs: Path
    data_roots: list[Path]
    max_jobs: int
    kill_after: float
    poll: float
    min_new_interactions: int
    min_new_outcomes: int
    max_age_hours: float

    @property
    def bundles(self) -> Path:
        return Path(self.server.bundles)

    @property
    def db(self) -> Path:
        return self.bundles / "registry.db"


def parse_config(argv=None) -> TrainerConfig:
    p = argparse.ArgumentParser(prog="pmis-trainer", description="PMIS trainer gRPC server (model lifecycle)")
    add_listen_args(p, 50055, 9105)
    p.add_argument("--bundles", type=Path, default=Path(env("BUNDLES", "var/bundles")),
                   help="bundle root holding registry.db, where jobs and versions are recorded (env PMIS_BUNDLES)")
    p.add_argument("--runs", type=Path, default=Path(env("RUNS", "var/runs")),
                   help="where run reports and plots go (env PMIS_RUNS)")
    p.add_argument("--data", type=Path, default=Path(env("DATA", "var/data")),
                   help="default data source (env PMIS_DATA)")
    p.add_argument("--data-roots", default=env("DATA_ROOTS", ""),
                   help=f"'{os.pathsep}'-separated folders data sources must be inside (env PMIS_DATA_ROOTS; "
                        "default: the folder holding --data)")
    p.add_argument("--max-jobs", type=int, default=int(env("MAX_JOBS", 1)), help="jobs running at once (env PMIS_MAX_JOBS)")
    p.add_argument("--kill-after", type=float, default=float(env("CANCEL_GRACE_SECONDS", 3)),
                   help="seconds a cancelled worker gets after SIGTERM before SIGKILL (env PMIS_CANCEL_GRACE_SECONDS)")
    p.add_argument("--poll", type=float, default=float(env("WATCH_POLL_SECONDS", 0.25)),
                   help="WatchJob's poll of the job table (env PMIS_WATCH_POLL_SECONDS)")
    p.add_argument("--min-new-interactions", type=int, default=int(env("RETRAIN_MIN_INTERACTIONS",
                                                                      triggers.DEFAULT_MIN_NEW_INTERACTIONS)))
    p.add_argument("--min-new-outcomes", type=int, default=int(env("RETRAIN_MIN_OUTCOMES",
                                                                  triggers.DEFAULT_MIN_NEW_OUTCOMES)))
    p.add_argument("--max-age-hours", type=float, default=float(env("RETRAIN_MAX_AGE_HOURS",
                                                                   triggers.DEFAULT_MAX_AGE_HOURS)))
    p.add_argument("--grace", type=float, default=float(env("GRACE_SECONDS", 5)), help="stop grace for in-flight calls")
    p.add_argument("--drain", type=float, default=float(env("DRAIN_SECONDS", 0)),
                   help="seconds NOT_SERVING before stopping (env PMIS_DRAIN_SECONDS)")
    p.add_argument("--workers", type=int, default=int(env("WORKERS", 16)),
                   help="RPC threads; every open WatchJob stream holds one")
    p.add_argument("--max-connection-age-ms", type=int, default=int(env("MAX_CONNECTION_AGE_MS", 600_000)))
    a = p.parse_args(argv)
    if a.max_jobs < 1:
        p.error("--max-jobs must be at least 1")
    roots = [Path(r) for r in a.data_roots.split(os.pathsep) if r] or [Path(a.data).resolve().parent]
    server = ServerConfig("trainer", a.host, a.port, a.metrics_port, a.bundles, "", None, None, a.grace, a.drain,
                          a.workers, a.max_connection_age_ms, ports_file=a.ports_file, tls=tls.server_tls(a, p))
    return TrainerConfig(server, a.data, a.runs, roots, a.max_jobs, a.kill_after, a.poll, a.min_new_interactions,
                         a.min_new_outcomes, a.max_age_hours)


# --------------------------------------------------------------------------- worker processes


class JobRunner:
    """Starts QUEUED jobs in worker processes (at most ``max_jobs``), reaps them, cancels them."""

    def __init__(self, cfg: TrainerConfig, store: JobStore):
        self.cfg, self.store = cfg, store
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[str, tuple[multiprocessing.Process, float]] = {}
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="job-runner")
        self._gauges_at = 0.0

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self.wakeup.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._reap()
                self._launch()
                if time.monotonic() - self._gauges_at > 5:
                    for status, n in self.store.counts().items():
                        JOBS.labels(status).set(n)
                    self._reap_foreign()
                    self._gauges_at = time.monotonic()
            except Exception:  # noqa: BLE001 - the runner must survive a transient database error
                log.exception("job runner iteration failed")
            self.wakeup.wait(0.5)
            self.wakeup.clear()

    def _launch(self) -> None:
        with self.lock:
            free = self.cfg.max_jobs - len(self.procs)
            if self.stopping.is_set() or free <= 0:
                return
            # A launched job stays QUEUED until its worker has started up: skip those.
            waiting = [j for j in self.store.queued(free + len(self.procs)) if j["job_id"] not in self.procs]
            for job in waiting[:free]:
                proc = self.ctx.Process(target=worker_main, name=f"pmis-{job['job_id']}", daemon=True,
                                        args=(str(self.cfg.db), job["job_id"], str(self.cfg.bundles),
                                              str(self.cfg.runs), os.getpid()))
                proc.start()
                self.procs[job["job_id"]] = (proc, time.time())
                JOBS_STARTED.inc()
                log.info("job started", extra={"fields": {"job_id": job["job_id"], "pid": proc.pid}})

    def _reap(self) -> None:
        with self.lock:
            done = [(j, p, t) for j, (p, t) in self.procs.items() if not p.is_alive()]
            for job_id, _, _ in done:
                del self.procs[job_id]
            others = bool(self.procs)
        for job_id, proc, started in done:
            proc.join(0)
            self._after_exit(job_id, proc.exitcode, started, others, pid=proc.pid)

    def _reap_foreign(self) -> None:
        """Jobs RUNNING in a process of this host that is not ours (`pmis retrain`) and is gone
        without recording an outcome (killed with -9): say so instead of running forever."""
        host = socket.gethostname()
        with self.lock:
            ours = set(self.procs)
        for job in self.store.list(["RUNNING"], MAX_PAGE)[0]:
            if job["job_id"] in ours or job["host"] != host or not job["pid"]:
                continue
            try:
                os.kill(job["pid"], 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, someone else's
            self.store.stop(job["job_id"], "FAILED", f"its process {job['pid']} exited without recording an outcome",
                            force=True)

    def _after_exit(self, job_id: str, code, started: float, others: bool, pid: int | None = None) -> None:
        job = self.store.get(job_id)
        if pid is not None and job["pid"] and (job["pid"], job["host"]) != (pid, socket.gethostname()):
            # Our worker lost the start to another process (`pmis retrain` records its job QUEUED,
            # then starts it itself): the job, its outcome and its folders are that process's.
            log.info("job taken by another process", extra={"fields": {"job_id": job_id, "pid": job["pid"],
                                                                       "host": job["host"]}})
            return
        if job["status"] in ACTIVE:  # the worker died without recording an outcome
            text = f"worker exited unexpectedly (exit code {code})"
            if job["committed"]:
                text += " after registering its versions"
            self.store.stop(job_id, "FAILED", text, force=True)
            job = self.store.get(job_id)
        if job["status"] != "SUCCEEDED" and not job["committed"]:
            removed = self.store.cleanup(job, self.cfg.bundles, self.cfg.runs, tmp_since=None if others else started)
            if removed:
                self.store.note(job_id, f"removed {len(removed)} unregistered folder(s) the job wrote")
        if job["started_at"] and job["finished_at"]:
            seconds = (parse_iso(job["finished_at"]) - parse_iso(job["started_at"])).total_seconds()
            JOB_SECONDS.labels(job["status"]).observe(seconds)
        log.info("job ended", extra={"fields": {"job_id": job_id, "status": job["status"], "exit_code": code}})

    @staticmethod
    def _signal(proc, sig) -> None:
        try:
            os.killpg(proc.pid, sig)  # the worker leads its own process group
        except (ProcessLookupError, PermissionError, OSError):
            try:
                os.kill(proc.pid, sig)  # not yet in its own group (still starting)
            except ProcessLookupError:
                pass

    def _stop_worker(self, proc, started: float, others: bool, job_id: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        how = "SIGTERM"
        self._signal(proc, signal.SIGTERM)
        proc.join(self.cfg.kill_after)
        if proc.is_alive():
            how = "SIGKILL"
            self._signal(proc, signal.SIGKILL)
            proc.join(10)
        seconds = time.perf_counter() - t0
        job = self.store.get(job_id)
        if not job["committed"]:
            removed = self.store.cleanup(job, self.cfg.bundles, self.cfg.runs, tmp_since=None if others else started)
            self.store.note(job_id, f"worker stopped in {seconds:.2f}s ({how}); removed {len(removed)} "
                                    "unregistered folder(s) the job wrote")
        return seconds, how

    def cancel(self, job_id: str) -> dict:
        changed, job = self.store.stop(job_id, "CANCELLED", "cancelled by request")
        if not changed:
            if job["status"] in ACTIVE and job["committed"]:
                raise failed_precondition(
                    f"job {job_id} has already registered its versions ({_versions_text(job)}); too late to cancel. "
                    "It will finish; use Rollback if a version was activated")
            raise failed_precondition(f"job {job_id} has already ended: {job['status']}")
        with self.lock:
            entry = self.procs.pop(job_id, None)
            others = bool(self.procs)
        if entry is not None:
            proc, started = entry
            seconds, how = self._stop_worker(proc, started, others, job_id)
            CANCEL_SECONDS.observe(seconds)
            log.info("job cancelled", extra={"fields": {"job_id": job_id, "stop_seconds": round(seconds, 3),
                                                        "signal": how}})
        elif job["pid"]:
            self.store.note(job_id, f"its worker (pid {job['pid']} on {job['host']}) is not this trainer's; "
                                    "its watchdog stops it within a second")
        self.wake()
        return self.store.get(job_id)

    def shutdown(self) -> None:
        """Stop running jobs honestly: FAILED "interrupted: trainer shut down" (queued ones stay queued)."""
        self.stopping.set()
        self.wake()
        with self.lock:
            entries = dict(self.procs)
            self.procs.clear()
        for job_id, (proc, started) in entries.items():
            changed, job = self.store.stop(job_id, "FAILED", "interrupted: trainer shut down")
            if not changed and job["status"] in ACTIVE and job["committed"]:
                proc.join(self.cfg.server.grace)  # registered already: let it write its report
            if proc.is_alive():
                self._stop_worker(proc, started, True, job_id)
            proc.join(0)
            if self.store.get(job_id)["status"] in ACTIVE:  # it died without saying how
                self._after_exit(job_id, proc.exitcode, started, True)

    def running(self) -> list[str]:
        with self.lock:
            return list(self.procs)


def _versions_text(job: dict) -> str:
    return ", ".join(f"{c} v{v}" for c, v in job["versions"].items()) or "none"


# --------------------------------------------------------------------------- messages


def _ts(value) -> timestamp_pb2.Timestamp | None:
    if value is None or value == "":
        return None
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, (int, float)):
        ts.FromSeconds(int(value))
    else:
        ts.FromDatetime(parse_iso(value) if isinstance(value, str) else value)
    return ts


def config_message(c: dict) -> trainer_pb2.TrainingConfig:
    split = trainer_pb2.TimeSplit()
    if c.get("train_until") is not None:
        split.train_until.CopyFrom(_ts(c["train_until"]))
        split.valid_until.CopyFrom(_ts(c["valid_until"]))
    else:
        split.valid_fraction, split.test_fraction = c["valid_fraction"], c["test_fraction"]
        split.random = bool(c.get("split_random"))
    return trainer_pb2.TrainingConfig(
        components=c["components"], data_source=c["data_source"],
        success=trainer_pb2.SuccessSearch(algorithms=c["success_algorithms"], search_budget=c["search_budget"]),
        collaborative=trainer_pb2.CollaborativeSearch(trials=c.get("collab_trials") or 0),
        cv_folds=c["cv_folds"], split=split,
        auto_activation=trainer_pb2.AutoActivation(enabled=c["auto_activate"], margin=c["margin"]),
        seed=c["seed"], max_eval_students=c["max_eval_students"], description=c["description"])


def config_dict(m: trainer_pb2.TrainingConfig) -> dict:
    split = {"valid_fraction": m.split.valid_fraction, "test_fraction": m.split.test_fraction,
             "train_until": m.split.train_until.ToSeconds() if m.split.HasField("train_until") else None,
             "valid_until": m.split.valid_until.ToSeconds() if m.split.HasField("valid_until") else None,
             "random": m.split.random}
    return {"components": list(m.components), "data_source": m.data_source,
            "success": {"algorithms": list(m.success.algorithms), "search_budget": m.success.search_budget},
            "collaborative": {"trials": m.collaborative.trials}, "cv_folds": m.cv_folds, "split": split,
            "auto_activation": {"enabled": m.auto_activation.enabled, "margin": m.auto_activation.margin},
            "seed": m.seed, "max_eval_students": m.max_eval_students, "description": m.description}


def decision_message(d: dict) -> trainer_pb2.ActivationDecision:
    out = trainer_pb2.ActivationDecision(component=d["component"], version=d["version"], activated=d["activate"],
                                         metric=d["metric"], champion_version=d.get("champion_version") or 0,
                                         margin=d["margin"], reason=d["reason"])
    if d.get("new_value") is not None:
        out.new_value = d["new_value"]
    if d.get("champion_value") is not None:
        out.champion_value = d["champion_value"]
    return out


def job_message(job: dict) -> trainer_pb2.Job:
    out = trainer_pb2.Job(
        job_id=job["job_id"], status=STATUS_PB[job["status"]], config=config_message(job["config"]),
        stage=job["stage"], percent=job["percent"], message=job["message"], error=job["error"],
        created_at=_ts(job["created_at"]), started_at=_ts(job["started_at"]), finished_at=_ts(job["finished_at"]),
        run_id=job["run_id"] or "", versions=job["versions"], metrics=job["metrics"],
        activation=[decision_message(d) for d in job["activation"]], source=job["source"], reason=job["reason"],
        run_dir=job["run_dir"] or "")
    return out


def update_message(job_id: str, e: dict) -> trainer_pb2.JobUpdate:
    return trainer_pb2.JobUpdate(job_id=job_id, sequence=e["id"], at=_ts(e["at"]), status=STATUS_PB[e["status"]],
                                 kind=e["kind"], stage=e["stage"], percent=e["percent"], message=e["message"],
                                 metrics=e["metrics"])


def window_message(w: dict | None) -> trainer_pb2.EvaluationWindow:
    if not w:
        return trainer_pb2.EvaluationWindow()
    return trainer_pb2.EvaluationWindow(data_version=w.get("data_version") or "", train_until=_ts(w.get("train_until")),
                                        valid_until=_ts(w.get("valid_until")), k=w.get("k") or 0,
                                        candidates=w.get("candidates") or 0, test_students=w.get("test_students") or 0,
                                        fingerprint=diagnostics.window_fingerprint(w))


def numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in flatten_metrics(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_message(row: dict, manifest: dict | None = None) -> trainer_pb2.ModelSummary:
    manifest = manifest if manifest is not None else manifest_of(row["path"])
    return trainer_pb2.ModelSummary(
        component=row["component"], version=row["version"], created_at=_ts(row["created_at"]),
        registered_at=_ts(row["registered_at"]), run_id=row["run_id"] or "", data_version=row["data_version"] or "",
        content_hash=row["content_hash"], aliases=row["aliases"], champion="champion" in row["aliases"],
        metrics=numeric(row["metrics"]), window=window_message(manifest.get("metadata", {}).get("evaluation_window")))


def version_message(row: dict | None) -> common_pb2.ModelVersion | None:
    if row is None:
        return None
    return common_pb2.ModelVersion(component=row["component"], version=row["version"],
                                   data_version=row["data_version"] or "", content_hash=row["content_hash"],
                                   run_id=row["run_id"] or "")


# --------------------------------------------------------------------------- the servicer


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        self.recovered: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open (create) the job table and recover from a previous trainer; then start the runner."""
        self.store = JobStore(self.cfg.db)
        self.recovered = self.store.recover()
        if self.recovered:
            log.warning("jobs interrupted by a restart marked FAILED", extra={"fields": {"jobs": self.recovered}})
        self.runner = JobRunner(self.cfg, self.store)
        self.runner.start()

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()

    def _store(self) -> JobStore:
        if self.store is None:
            raise unavailable("trainer: job table not open yet")
        return self.store

    # ------------------------------------------------------------------ helpers
    def _job_id(self, job_id: str) -> str:
        v = Violations()
        v.check_id("job_id", job_id)
        v.raise_if_any()
        return job_id

    def _get_job(self, job_id: str) -> dict:
        try:
            return self._store().get(self._job_id(job_id))
        except JobNotFound:
            raise not_found(f"no job {job_id!r}") from None

    def _component(self, v: Violations, component: str) -> None:
        if component not in COMPONENTS:
            v.add("component", f"must be one of {', '.join(COMPONENTS)}" + (f", got {component!r}" if component else ""))

    def _page(self, v: Violations, size: int, token: str) -> tuple[int, int | None]:
        if not 0 <= size <= MAX_PAGE:
            v.add("page_size", f"must be in 1..{MAX_PAGE} (0 = 20), got {size}")
        after = None
        if token:
            try:
                after = decode_token(token)
            except ValueError:
                v.add("page_token", "is not a page token this server issued")
        return size or 20, after

    def _data_source(self, v: Violations, field: str, value: str) -> Path:
        _, violations = normalise_config({"data_source": value}, self.cfg.data, self.cfg.data_roots)
        for f, d in violations:
            if f == "data_source":
                v.add(field, d)
        return (Path(value) if value else self.cfg.data).resolve()

    def _registry_row(self, component: str, version: int) -> dict:
        registry = self._store().registry
        try:
            if version == 0:
                return registry.resolve(component, "champion")
            return registry.get(component, version)
        except RegistryError as e:
            raise not_found(str(e)) from None

    # ------------------------------------------------------------------ jobs
    @admin_only
    def StartTraining(self, request, context):
        config, violations = normalise_config(config_dict(request.config), self.cfg.data, self.cfg.data_roots)
        if violations:
            raise invalid_argument([(f"config.{f}", d) for f, d in violations])
        job = self._store().create(config, source="api", reason=request.config.description or "started through the API")
        self.runner.wake()
        log.info("job queued", extra={"fields": {"job_id": job["job_id"], "components": config["components"]}})
        return job_message(job)

    def GetJob(self, request, context):
        return job_message(self._get_job(request.job_id))

    def ListJobs(self, request, context):
        v = Violations()
        statuses = []
        for i, s in enumerate(request.statuses):
            if s not in STATUS_NAME:
                v.add(f"statuses[{i}]", "must be a job status other than JOB_STATUS_UNSPECIFIED")
            else:
                statuses.append(STATUS_NAME[s])
        size, after = self._page(v, request.page_size, request.page_token)
        v.raise_if_any()
        jobs, next_after = self._store().list(statuses or None, size, after)
        return trainer_pb2.ListJobsResponse(jobs=[job_message(j) for j in jobs],
                                            next_page_token=encode_token(next_after) if next_after else "")

    @admin_only
    def CancelJob(self, request, context):
        self._get_job(request.job_id)
        return job_message(self.runner.cancel(request.job_id))

    def WatchJob(self, request, context):
        self._get_job(request.job_id)
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "must be >= 0")])
        return self._watch(request.job_id, request.after_sequence, context)

    def _watch(self, job_id: str, after: int, context):
        store = self._store()
        while True:
            events = store.events(job_id, after)
            for e in events:
                yield update_message(job_id, e)
                after = e["id"]
            if len(events) >= 1000:
                continue
            if store.status(job_id) in TERMINAL:
                # The terminal event is written in the same transaction as the status: one more
                # read has everything.
                for e in store.events(job_id, after):
                    yield update_message(job_id, e)
                return
            if not context.is_active():
                return
            time.sleep(self.cfg.poll)

    # ------------------------------------------------------------------ models
    def ListModels(self, request, context):
        v = Violations()
        self._component(v, request.component)
        size, after = self._page(v, request.page_size, request.page_token)
        v.raise_if_any()
        rows = self._store().registry.versions(request.component)  # newest first
        if request.active_only:
            rows = [r for r in rows if r["aliases"]]
        if after is not None:
            rows = [r for r in rows if r["version"] < after]
        page = rows[:size]
        token = encode_token(page[-1]["version"]) if len(rows) > size else ""
        return trainer_pb2.ListModelsResponse(models=[summary_message(r) for r in page], next_page_token=token)

    def GetModel(self, request, context):
        v = Violations()
        self._component(v, request.component)
        if request.version < 0:
            v.add("version", "must be >= 1, or 0 for the champion")
        v.raise_if_any()
        row = self._registry_row(request.component, request.version)
        manifest = manifest_of(row["path"])
        meta = manifest.get("metadata", {})
        out = trainer_pb2.ModelDetail(summary=summary_message(row, manifest))
        out.manifest.update(manifest)
        out.feature_importance.extend(trainer_pb2.FeatureImportance(feature=f, importance=float(i))
                                      for f, i in (meta.get("feature_importance") or {}).items())
        run_dir = Path(self.cfg.runs) / (row["run_id"] or "-")
        if row["run_id"] and run_dir.is_dir():
            out.run_dir = str(run_dir.resolve())
            for name, description in plots_for(request.component):
                path = run_dir / name
                if path.is_file():
                    out.plots.add(name=name, description=description, path=str(path.resolve()),
                                  png=path.read_bytes() if request.include_plot_bytes else b"")
        for h in self._store().registry.history(request.component):
            out.champion_history.add(version=h["version"], previous_version=h["previous_version"] or 0,
                                     action=h["action"], changed_at=_ts(h["changed_at"]), reason=h["reason"])
        return out

    def CompareModels(self, request, context):
        v = Violations()
        self._component(v, request.component)
        versions = list(dict.fromkeys(request.versions))
        if any(x < 1 for x in versions):
            v.add("versions", "every version must be >= 1")
        v.raise_if_any()
        if request.include_champion:
            champion = self._registry_row(request.component, 0)["version"]
            if champion not in versions:
                versions.append(champion)
        if not 2 <= len(versions) <= 10:
            raise invalid_argument([("versions", f"compare 2..10 distinct versions (include_champion adds the "
                                                 f"champion), got {len(versions)}")])
        rows = [self._registry_row(request.component, x) for x in versions]
        manifests = [manifest_of(r["path"]) for r in rows]
        windows = [m.get("metadata", {}).get("evaluation_window") for m in manifests]
        differences = []
        for r, w in zip(rows[1:], windows[1:]):
            differences += [f"v{rows[0]['version']} vs v{r['version']}: {d}"
                            for d in diagnostics.window_differences(windows[0], w)]
        same = not differences
        if request.require_same_window and not same:
            raise failed_precondition("the versions were evaluated on different windows: " + "; ".join(differences))
        table = self._store().registry.compare(request.component, versions)["metrics"]
        out = trainer_pb2.CompareModelsResponse(
            component=request.component, models=[summary_message(r, m) for r, m in zip(rows, manifests)],
            same_window=same, window_differences=differences,
            note=("stored test-window metrics; the windows are identical (same data version, cutoffs, k, candidates "
                  "and students), so the numbers are directly comparable") if same else
                 ("stored test-window metrics of DIFFERENT evaluation windows: differences reflect the data as much "
                  "as the models; compare with care"))
        for metric, values in table.items():
            present = {ver: float(val) for ver, val in values.items()
                       if isinstance(val, (int, float)) and not isinstance(val, bool)}
            if not present:
                continue
            d = diagnostics.direction(metric)
            best = 0
            if d and len(present) >= 2:
                top = max(d * x for x in present.values())
                winners = [ver for ver, x in present.items() if d * x == top]
                best = winners[0] if len(winners) == 1 else 0
            out.metrics.add(metric=metric, values=present, direction=d, best_version=best)
        return out

    def _alias_change(self, component: str, previous: dict | None, current: dict) -> trainer_pb2.AliasChange:
        return trainer_pb2.AliasChange(component=component, alias="champion", previous=version_message(previous),
                                       current=version_message(current), model=summary_message(current), pickup=PICKUP)

    @admin_only
    def Activate(self, request, context):
        v = Violations()
        self._component(v, request.component)
        if request.version < 1:
            v.add("version", "must be >= 1")
        if len(request.reason) > 500:
            v.add("reason", "must be at most 500 characters")
        v.raise_if_any()
        registry = self._store().registry
        row = self._registry_row(request.component, request.version)
        try:
            verify_bundle(Path(row["path"]))  # never point servers (and new replicas) at a bad bundle
        except BundleError as e:
            raise failed_precondition(f"refusing to activate {request.component} v{request.version}: {e}") from None
        try:
            previous = registry.resolve(request.component, "champion")
        except RegistryError:
            previous = None
        registry.set_alias(request.component, request.version, "champion",
                           reason=request.reason or "activated through the trainer API")
        log.info("activated", extra={"fields": {"model": request.component, "version": request.version,
                                                "previous": previous["version"] if previous else None}})
        return self._alias_change(request.component, previous, registry.get(request.component, request.version))

    @admin_only
    def Rollback(self, request, context):
        v = Violations()
        self._component(v, request.component)
        if len(request.reason) > 500:
            v.add("reason", "must be at most 500 characters")
        v.raise_if_any()
        registry = self._store().registry
        try:
            previous = registry.resolve(request.component, "champion")
            current = registry.rollback(request.component, "champion",
                                        reason=request.reason or "rolled back through the trainer API")
        except RegistryError as e:
            raise failed_precondition(str(e)) from None
        log.info("rolled back", extra={"fields": {"model": request.component, "from": previous["version"],
                                                  "to": current["version"]}})
        return self._alias_change(request.component, previous, current)

    # ------------------------------------------------------------------ data and triggers
    def DataQuality(self, request, context):
        from models.data.contract import data_version, validate

        v = Violations()
        path = self._data_source(v, "data_source", request.data_source)
        v.raise_if_any()
        report = validate(path)
        out = trainer_pb2.DataQualityReport(data_source=str(path), ok=report.ok, rows=report.rows, notes=report.notes,
                                            data_version=data_version(path) if report.ok else "")
        for p in report.errors:
            e = out.errors.add(file=p.file, column=p.column or "", message=p.message)
            if p.row is not None:
                e.row = p.row
        return out

    def _decision_message(self, d: dict) -> trainer_pb2.TriggerDecision:
        return trainer_pb2.TriggerDecision(
            should_train=d["should_train"], reasons=d["reasons"], new_interactions=d.get("new_interactions", 0),
            new_outcomes=d.get("new_outcomes", 0), champion_age_hours=d.get("champion_age_hours", 0.0),
            champion_data_version=d.get("champion_data_version", ""),
            current_data_version=d.get("current_data_version", ""),
            min_new_interactions=d.get("min_new_interactions", 0), min_new_outcomes=d.get("min_new_outcomes", 0),
            max_age_hours=d.get("max_age_hours", 0.0), job_id=d.get("job_id") or "",
            checked_at=_ts(d.get("checked_at")), check_id=d.get("check_id", 0), source=d.get("source", ""))

    def CheckTriggers(self, request, context):
        if request.start_if_needed:
            check_admin(context, "CheckTriggers(start_if_needed)")
        v = Violations()
        path = self._data_source(v, "data_source", request.data_source)
        for name in ("min_new_interactions", "min_new_outcomes", "max_age_hours"):
            if getattr(request, name) < 0:
                v.add(name, "must be >= 0 (0 = the server's default)")
        config = None
        if request.start_if_needed:
            raw = config_dict(request.config)
            raw["data_source"] = str(path)
            config, violations = normalise_config(raw, self.cfg.data, self.cfg.data_roots)
            for f, d in violations:
                if f != "data_source":
                    v.add(f"config.{f}", d)
        v.raise_if_any()
        store = self._store()
        decision = triggers.check_and_record(
            store, path, "rpc", min_new_interactions=request.min_new_interactions or self.cfg.min_new_interactions,
            min_new_outcomes=request.min_new_outcomes or self.cfg.min_new_outcomes,
            max_age_hours=request.max_age_hours or self.cfg.max_age_hours)
        decision["checked_at"] = datetime.now(timezone.utc)
        if decision["should_train"] and config is not None:
            active, _ = store.list(["QUEUED", "RUNNING"], 1)
            if active:
                decision["reasons"].append(f"not starting another job: {active[0]['job_id']} is {active[0]['status']}")
            else:
                job = store.create(config, source="trigger", reason="; ".join(decision["reasons"]))
                store.link_trigger(decision["check_id"], job["job_id"])
                decision["job_id"] = job["job_id"]
                self.runner.wake()
        return self._decision_message(decision)

    def Status(self, request, context):
        store = self._store()
        out = trainer_pb2.StatusResponse(jobs_by_status=store.counts(), bundles_root=str(self.cfg.bundles.resolve()),
                                         max_concurrent_jobs=self.cfg.max_jobs)
        running, _ = store.list(["RUNNING"], MAX_PAGE)
        out.running.extend(job_message(j) for j in running)
        registry = store.registry
        for component in registry.components():
            out.versions_by_component[component] = len(registry.versions(component))
            try:
                out.champions.append(summary_message(registry.resolve(component, "champion")))
            except RegistryError:
                pass
        last = store.triggers(1)
        if last:
            t = last[0]
            out.last_trigger_check.CopyFrom(self._decision_message({
                **t["details"], "should_train": t["should_train"], "reasons": t["reasons"], "job_id": t["job_id"],
                "checked_at": t["checked_at"], "check_id": t["id"], "source": t["source"]}))
        return out


# --------------------------------------------------------------------------- the server


class TrainerServer(ComponentServer):
    """ComponentServer's plumbing; "loaded" means the job table is open and recovered."""

    def _initial_load(self) -> None:
        try:
            self.servicer.open()
        except Exception as e:  # noqa: BLE001 - without its job table the trainer must not pretend to be healthy
            self.load_error = e
            log.error("cannot open the job table: %s", e)
            self.stop()
            return
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.health.enter_graceful_shutdown()  # NOT_SERVING first
        self.servicer.shutdown()               # running jobs: stopped, marked interrupted (watchers see it)
        super().stop()


def build(cfg: TrainerConfig) -> TrainerServer:
    servicer = TrainerServicer(cfg)
    return TrainerServer(cfg.server, SERVICE, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server)


def main(argv=None) -> int:
    from services.common.logs import setup_logging

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the workers (BLAS reads it at start)
    cfg = parse_config(argv)
    setup_logging("trainer")
    server = build(cfg)
    server.install_signal_handlers()
    server.start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
