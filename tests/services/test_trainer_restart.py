"""Restarts, with the trainer as a real process killed the way a crashed pod is: the orphaned worker
stops itself, the new trainer marks what the dead one left RUNNING as FAILED, and SIGTERM stops a
running job and marks it before the trainer exits. Nothing the interrupted jobs wrote remains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc

from models.bundle.registry import Registry
from models.lifecycle.store import RESTART_MESSAGE, JobStore
from pmis.v1 import trainer_pb2_grpc
from tests.support.processes import has_exited, is_stopped, spawn_server
from tests.support.trainer import AUTH, TOKEN, TRAINER, T, config, job_table_held
from tests.support.waiting import wait_until


def _start_trainer(system, tiny, root: Path) -> tuple[subprocess.Popen, str]:
    """The trainer as a process on a port it binds itself; (process, target) once SERVING."""
    return spawn_server("services.trainer.server", TRAINER, [
        "--bundles", str(system.bundles), "--runs", str(system.runs), "--data", str(system.data),
        "--data-roots", str(tiny.root), "--poll", "0.1", "--kill-after", "3", "--max-jobs", "2"],
        root / "trainer.ports", root / "trainer.log", env={"PMIS_ADMIN_TOKEN": TOKEN})


def _running_jobs(stub, store: JobStore, n: int) -> list[str]:
    """Start n jobs and wait until each is RUNNING inside its worker (a stage has started)."""
    ids = [stub.StartTraining(T.StartTrainingRequest(config=config()), metadata=AUTH, timeout=10).job_id
           for _ in range(n)]
    wait_until(lambda: all(any(e["kind"] == "stage_started" for e in store.events(j)) for j in ids), 120,
               f"{n} job(s) running in their workers", interval=0.01)
    return ids


def _early(store: JobStore, job_id: str) -> dict:
    """The job's row, checked to be RUNNING and short of its last two stages: with the job table
    held, it is seconds of training away from registering anything."""
    from models.training.train import STAGE_WEIGHTS

    row = store.get(job_id)
    late = ("test window: components refitted up to c2, every model evaluated", "final refit on all data and bundles")
    assert row["status"] == "RUNNING" and not row["committed"], row["message"]
    assert row["percent"] < sum(STAGE_WEIGHTS.values()) - sum(STAGE_WEIGHTS[s] for s in late), \
        f"job {job_id} already at {row['percent']}% when the test held the job table"
    return row


def test_trainer_restart_and_shutdown_mark_jobs_honestly(tiny_system, tiny_copy, tmp_path):
    store = JobStore(tiny_copy.bundles / "registry.db")
    procs = []
    try:
        proc, target = _start_trainer(tiny_copy, tiny_system, tmp_path)
        procs.append(proc)
        with grpc.insecure_channel(target) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            crashed, orphaned = _running_jobs(stub, store, 2)  # two workers at once (--max-jobs 2)
        # The trainer dies hard and one worker with it (as in a pod restart); the other is orphaned.
        # Neither job can move on meanwhile (the job table is held), and the trainer is frozen
        # before the worker is killed, so it cannot see that death and record it: as far as the
        # job table can tell, both went at the same instant.
        with job_table_held(tiny_copy.bundles / "registry.db"):
            pids = {j: _early(store, j)["pid"] for j in (crashed, orphaned)}
            assert all(pids.values()) and len(set(pids.values())) == 2
            proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: is_stopped(proc.pid), 10, "the trainer stopped")
            os.kill(pids[crashed], signal.SIGKILL)
            proc.kill()
            proc.wait(10)
            wait_until(lambda: has_exited(pids[crashed]), 10, "the killed worker gone")
        # the orphan notices its trainer is gone, stops itself and says why
        wait_until(lambda: has_exited(pids[orphaned]), 60, "the orphaned worker to stop itself")
        row = store.get(orphaned)
        assert row["status"] == "FAILED" and "trainer that ran the job exited" in row["message"], row["message"]
        assert store.get(crashed)["status"] == "RUNNING"  # nobody left to say otherwise ...
        proc, target = _start_trainer(tiny_copy, tiny_system, tmp_path)
        procs.append(proc)
        with grpc.insecure_channel(target) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            job = stub.GetJob(T.GetJobRequest(job_id=crashed), timeout=10)  # ... until the new trainer starts
            assert job.status == T.JOB_STATUS_FAILED and job.message.startswith(RESTART_MESSAGE + " during '")
            assert job.finished_at.seconds > 0 and not job.versions
            listed = {j.job_id: j.status for j in stub.ListJobs(T.ListJobsRequest(), timeout=10).jobs}
            assert listed[crashed] == listed[orphaned] == T.JOB_STATUS_FAILED
            # SIGTERM with a job running: the job is stopped and marked, the trainer exits cleanly
            (last,) = _running_jobs(stub, store, 1)
        with job_table_held(tiny_copy.bundles / "registry.db"):
            pid = _early(store, last)["pid"]
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert has_exited(pid)  # the trainer waited for its worker
        row = store.get(last)
        assert row["status"] == "FAILED" and row["message"] == "interrupted: trainer shut down"
        registry = Registry(tiny_copy.bundles / "registry.db")
        run_ids = {store.get(j)["run_id"] for j in (crashed, orphaned, last)} - {None}
        assert all(v["run_id"] not in run_ids for c in registry.components() for v in registry.versions(c))
        leftovers = [p for p in tiny_copy.bundles.glob("*/*") if p.name.startswith(".tmp-") or (
            (p / "manifest.json").exists() and json.loads((p / "manifest.json").read_text())["run_id"] in run_ids)]
        assert leftovers == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL ends a stopped process too
            p.wait()
