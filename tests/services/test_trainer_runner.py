"""The job runner: worker processes started once per job, cancelled (a cancel during bundle writing
leaves no version and no file), a job another process started left alone, and jobs whose foreign
process died marked FAILED. ListJobs' filters and pages on the jobs the cancel test leaves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from models.bundle.writing import write_bundle
from models.bundle.registry import Registry
from models.lifecycle.config import normalise_config
from models.lifecycle.store import JobStore
from services.trainer.config import parse_config
from services.trainer.runner import JobRunner
from tests.support.processes import is_stopped
from tests.support.trainer import AUTH, FINAL_STAGE, T, code_of, config, copy_system, job_table_held, violations_of
from tests.support.waiting import wait_until


def _bundles_of(bundles: Path, run_id: str, component: str) -> list[Path]:
    """The published bundle folders of `component` that run `run_id` wrote (published = renamed
    complete into place, so a manifest is never half-written)."""
    return [m.parent for m in (bundles / component).glob("*/manifest.json")
            if json.loads(m.read_text())["run_id"] == run_id]


def test_cancel_during_bundle_writing_leaves_no_version(trainer):
    """Cancel once the first bundle of the run is on disk, before the run registers: nothing
    registered, nothing left.

    Held at that point by construction, not by timing: the bundles are written in the run's last
    stage with nothing recorded in the job table in between, and every record — the registration
    too — needs the table's write lock. The test takes that lock once the stage has started, so the
    worker writes its content bundle and then waits to record it; it is frozen there (SIGSTOP)
    while CancelJob marks the job, and let go once the cancel is recorded.
    """
    stub, system, store = trainer.stub, trainer.system, trainer.store
    registry = Registry(system.bundles / "registry.db")
    before = {c: [v["version"] for v in registry.versions(c)] for c in registry.components()}
    # an earlier cancelled job, for ListJobs' pages below
    earlier = stub.StartTraining(T.StartTrainingRequest(config=config(description="cancelled early")), metadata=AUTH,
                                 timeout=10)
    assert stub.CancelJob(T.CancelJobRequest(job_id=earlier.job_id), metadata=AUTH, timeout=30).status == \
        T.JOB_STATUS_CANCELLED
    job = stub.StartTraining(T.StartTrainingRequest(config=config(description="cancel me")), metadata=AUTH, timeout=10)
    started = time.perf_counter()
    wait_until(lambda: any(e["kind"] == "stage_started" and e["stage"] == FINAL_STAGE
                           for e in store.events(job.job_id)), 180, f"the run's last stage ({FINAL_STAGE})",
               interval=0.01)
    row = store.get(job.job_id)
    pid, run_id = row["pid"], row["run_id"]
    assert pid and run_id
    frozen = False
    try:
        with job_table_held(system.bundles / "registry.db"):  # the worker records nothing, registers nothing
            held = time.perf_counter()
            row = store.get(job.job_id)
            assert row["status"] == "RUNNING" and not row["committed"], \
                f"the run registered before the test held the job table: {row['message']}"
            content = wait_until(lambda: _bundles_of(system.bundles, run_id, "content"), 60,
                                 "the run's content bundle on disk")
            os.kill(pid, signal.SIGSTOP)  # waiting for the lock to say "bundle written: content"
            frozen = True
            wait_until(lambda: is_stopped(pid), 10, "the worker stopped")
        assert not store.get(job.job_id)["committed"]
        with ThreadPoolExecutor(1) as pool:
            t0 = time.perf_counter()
            pending = pool.submit(stub.CancelJob, T.CancelJobRequest(job_id=job.job_id), metadata=AUTH, timeout=30)
            wait_until(lambda: pending.done() or store.status(job.job_id) == "CANCELLED", 30,
                       "CancelJob to mark the job", interval=0.01)
            os.kill(pid, signal.SIGCONT)  # the worker goes on, sees the cancel (and the trainer's SIGTERM)
            frozen = False
            cancelled = pending.result()
            latency = time.perf_counter() - t0
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
    print(f"\njob ran {held - started:.1f}s to its last stage; CancelJob returned in {latency:.2f}s")
    assert cancelled.status == T.JOB_STATUS_CANCELLED and cancelled.message == "cancelled by request"
    assert latency < 10
    assert not cancelled.versions and cancelled.run_id == run_id
    after = {c: [v["version"] for v in registry.versions(c)] for c in registry.components()}
    assert after == before
    assert not any(p.exists() for p in content)  # the bundle that was on disk is gone ...
    on_disk = [p for p in system.bundles.glob("*/*") if p.is_dir()
               and (p.name.startswith(".tmp-") or json.loads((p / "manifest.json").read_text())["run_id"] == run_id)]
    assert on_disk == []  # ... with everything else the run wrote
    assert not (system.runs / run_id).exists()
    # the stream of a finished job replays to its end: the last update says CANCELLED
    updates = list(stub.WatchJob(T.WatchJobRequest(job_id=job.job_id), timeout=30))
    assert updates[-1].status == T.JOB_STATUS_CANCELLED
    assert not any(u.message.startswith("registered ") for u in updates)
    events = store.events(job.job_id)
    assert any(e["message"].startswith("worker stopped in") for e in events)
    assert code_of(lambda: stub.CancelJob(T.CancelJobRequest(job_id=job.job_id), metadata=AUTH, timeout=10)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    # ListJobs: filter by status, page by page (a failed job in the table, which the filter leaves out)
    failed_config, _ = normalise_config({"components": ["content"]}, system.data, [system.data.parent])
    failed = store.create(failed_config, reason="a job that failed")["job_id"]
    assert store.stop(failed, "FAILED", "failed for the test")[0]
    mine = stub.ListJobs(T.ListJobsRequest(statuses=[T.JOB_STATUS_CANCELLED], page_size=1), timeout=10)
    assert [j.job_id for j in mine.jobs] == [job.job_id] and mine.next_page_token
    rest = stub.ListJobs(T.ListJobsRequest(statuses=[T.JOB_STATUS_CANCELLED], page_size=100,
                                           page_token=mine.next_page_token), timeout=10)
    assert [j.job_id for j in rest.jobs] == [earlier.job_id] and not rest.next_page_token
    assert all(j.status == T.JOB_STATUS_CANCELLED for j in rest.jobs)
    assert failed in {j.job_id for j in stub.ListJobs(T.ListJobsRequest(), timeout=10).jobs}
    assert violations_of(lambda: stub.ListJobs(T.ListJobsRequest(statuses=[T.JOB_STATUS_UNSPECIFIED]), timeout=10)) \
        == {"statuses[0]"}


def test_runner_launches_each_queued_job_once(tiny_system, tmp_path, admin_env):
    """A launched job stays QUEUED until its worker has started up; it must not be launched again."""
    system = copy_system(tiny_system, tmp_path / "sys")
    cfg = parse_config(["--bundles", str(system.bundles), "--runs", str(system.runs), "--data",
                        str(system.data), "--max-jobs", "3", "--kill-after", "2"])
    store = JobStore(cfg.db)
    config_, _ = normalise_config({}, system.data, [system.root])
    job = store.create(config_)["job_id"]
    runner = JobRunner(cfg, store)  # not started: we drive it by hand
    try:
        for _ in range(3):
            runner._launch()
        assert runner.running() == [job]
        (proc, _), = runner.procs.values()
        assert runner.cancel(job)["status"] == "CANCELLED"
        assert not proc.is_alive() and runner.running() == []
    finally:
        runner.shutdown()  # no worker left behind when an assertion fails


def test_runner_leaves_a_job_another_process_started_alone(tiny_copy, admin_env, monkeypatch):
    """`pmis retrain` records its job QUEUED and starts it a moment later, in its own process; a
    trainer on the same table may launch a worker for it in between. That worker finds the job
    taken and exits: the job is the other process's — not failed, its files not removed."""
    cfg = parse_config(["--bundles", str(tiny_copy.bundles), "--runs", str(tiny_copy.runs), "--data",
                        str(tiny_copy.data), "--kill-after", "2"])
    store = JobStore(cfg.db)
    config_, _ = normalise_config({"components": ["content"]}, tiny_copy.data, [tiny_copy.root])
    job = store.create(config_, source="cli")["job_id"]
    runner = JobRunner(cfg, store)  # not started: we drive it by hand
    seen = store.queued(cfg.max_jobs)  # the runner reads the queue ...
    assert [j["job_id"] for j in seen] == [job]
    assert store.start(job, os.getpid(), socket.gethostname())  # ... the CLI starts its job ...
    store.set_run(job, "run-of-the-cli")
    bundle = write_bundle(tiny_copy.bundles, "content", documents={"x": 1}, metadata={"run_id": "run-of-the-cli"})
    writing = tiny_copy.bundles / "content" / ".tmp-the-cli-is-writing"
    writing.mkdir()
    (tiny_copy.runs / "run-of-the-cli").mkdir()
    monkeypatch.setattr(store, "queued", lambda limit: seen)
    try:
        runner._launch()  # ... and the runner launches a worker for what it read
        (proc, _), = runner.procs.values()
        wait_until(lambda: not proc.is_alive(), 60, "the launched worker to find the job taken", interval=0.1)
        runner._reap()
        row = store.get(job)
        assert (row["status"], row["pid"], row["finished_at"]) == ("RUNNING", os.getpid(), None), row["message"]
        assert not [e["message"] for e in store.events(job) if "exited" in e["message"] or "removed" in e["message"]]
        assert bundle.path.is_dir() and writing.is_dir() and (tiny_copy.runs / "run-of-the-cli").is_dir()
    finally:
        runner.shutdown()


def test_runner_fails_jobs_whose_foreign_process_died(tmp_path, admin_env):
    """A `pmis retrain` killed with -9 leaves its job RUNNING; the trainer on that host notices."""
    import socket

    cfg = parse_config(["--bundles", str(tmp_path / "bundles"), "--data", str(tmp_path)])
    store = JobStore(cfg.db)
    dead = subprocess.Popen(["true"])
    dead.wait()
    job = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(job, dead.pid, socket.gethostname())
    alive = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(alive, os.getpid(), socket.gethostname())
    elsewhere = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(elsewhere, dead.pid, "another-host")
    JobRunner(cfg, store)._reap_foreign()
    assert store.get(job)["status"] == "FAILED" and f"process {dead.pid} exited" in store.get(job)["message"]
    assert store.get(alive)["status"] == store.get(elsewhere)["status"] == "RUNNING"
