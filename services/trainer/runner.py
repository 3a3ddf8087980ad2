"""The job runner: starts QUEUED jobs in worker processes, reaps them, cancels them.

Jobs run in worker processes (multiprocessing, spawn context: a fresh interpreter, no inherited
gRPC threads or locks; the process's entry point is services/trainer/worker.py), never in the
server's threads; at most ``--max-jobs`` at a time, the rest wait QUEUED. Whatever way a worker
ends, the job's outcome is in the job table (models/lifecycle/store.py) and what an unfinished job
wrote is removed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

from prometheus_client import Counter, Gauge, Histogram

from models.lifecycle.schema import ACTIVE
from models.lifecycle.store import JobError, JobStore, parse_iso
from services.trainer.config import TrainerConfig
from services.trainer.worker import worker_main

log = logging.getLogger("pmis.trainer")

# RUNNING jobs examined per look for jobs whose foreign process died (one ListJobs page's worth)
RUNNING_SCAN = 100

JOBS = Gauge("pmis_trainer_jobs", "Training jobs by status", ["status"])
JOBS_STARTED = Counter("pmis_trainer_jobs_started_total", "Worker processes started for jobs")
JOB_SECONDS = Histogram("pmis_trainer_job_seconds", "Duration of finished jobs", ["status"],
                        buckets=(10, 30, 60, 120, 300, 600, 1200, 3600, 7200, 14400))
CANCEL_SECONDS = Histogram("pmis_trainer_cancel_seconds", "From CancelJob to the worker gone",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))


class CancelRefused(JobError):
    """A cancel that cannot be done: the job has ended, or has registered its versions already."""


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
                                        args=(str(self.store.location), job["job_id"], str(self.cfg.bundles),
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
        for job in self.store.list(["RUNNING"], RUNNING_SCAN)[0]:
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
        """Mark the job CANCELLED and stop its worker (SIGTERM, then SIGKILL after ``--kill-after``);
        the job as it is now. CancelRefused when it has ended or registered its versions already."""
        changed, job = self.store.stop(job_id, "CANCELLED", "cancelled by request")
        if not changed:
            if job["status"] in ACTIVE and job["committed"]:
                raise CancelRefused(
                    f"job {job_id} has already registered its versions ({_versions_text(job)}); too late to cancel. "
                    "It will finish; use Rollback if a version was activated")
            raise CancelRefused(f"job {job_id} has already ended: {job['status']}")
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

