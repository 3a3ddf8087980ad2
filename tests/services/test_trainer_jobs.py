"""The job table and one job's run: recovery after a trainer restart, registration all or nothing
(and refused after a cancel), a job that fails with its reason, and `pmis retrain` running a
recorded job that auto-activates.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from models.bundle.writing import write_bundle
from models.bundle.registry import Registry, RegistryError
from models.lifecycle.config import normalise_config
from models.lifecycle.store import RESTART_MESSAGE, JobStopped, JobStore
from tests.support.trainer import T, copy_system


def test_job_table_recovery_after_restart(tmp_path):
    """What a new trainer does with the table a dead one left behind."""
    store = JobStore(tmp_path / "registry.db")
    cfg = {"components": ["content"]}
    running, queued, done, committed = (store.create(cfg)["job_id"] for _ in range(4))
    for job_id in (running, done, committed):
        assert store.start(job_id, pid=123, host="old-pod")
    store.progress(running, "stage_started", "ranker: trained on the validation window", 21.0, "started: ranker")
    store.finish(done, "SUCCEEDED", "registered content v1")
    with closing(sqlite3.connect(store.db_path)) as con:
        store.guard(committed)(con, [])
        con.commit()
    again = JobStore(tmp_path / "registry.db")  # the new trainer
    assert sorted(again.recover()) == sorted([running, committed])
    r = again.get(running)
    assert r["status"] == "FAILED" and r["finished_at"]
    assert r["message"] == f"{RESTART_MESSAGE} during 'ranker: trained on the validation window' at 21%"
    assert "after the job had registered" in again.get(committed)["message"]
    assert again.get(queued)["status"] == "QUEUED"  # never started: the new trainer runs it
    assert again.get(done)["status"] == "SUCCEEDED"
    assert again.events(running)[-1]["status"] == "FAILED"
    assert again.recover() == []
    jobs, _ = again.list()
    assert {j["job_id"] for j in jobs} == {running, queued, done, committed}


def test_registration_is_all_or_nothing_and_refused_after_cancel(tmp_path):
    root = tmp_path / "bundles"
    store = JobStore(root / "registry.db")
    registry = store.registry
    job = store.create({"components": ["content", "ranker"]})["job_id"]
    store.start(job, os.getpid(), "here")
    store.set_run(job, "run-cancelled")
    refs = [write_bundle(root, c, documents={"x": 1}, metadata={"run_id": "run-cancelled"}) for c in ("content", "ranker")]
    (root / "content" / ".tmp-halfwritten").mkdir()
    assert store.stop(job, "CANCELLED", "cancelled by request")[0]
    with pytest.raises(JobStopped):
        registry.register_many([(r, {}) for r in refs], alias="champion", guard=store.guard(job))
    assert registry.components() == []  # not one of them
    removed = store.cleanup(store.get(job), root, tmp_since=time.time() - 60)
    assert len(removed) == 3 and not any((root / c / "1").exists() for c in ("content", "ranker"))
    assert not (root / "content" / ".tmp-halfwritten").exists()

    # a clash on the second version rolls back the first one too
    ok = store.create({"components": ["content", "ranker"]})["job_id"]
    store.start(ok, os.getpid(), "here")
    first = write_bundle(root, "content", documents={"x": 2}, metadata={"run_id": "r2"})
    registry.register(write_bundle(root, "ranker", documents={"x": 3}, metadata={"run_id": "other"}))
    clash = write_bundle(root, "ranker", documents={"x": 4}, metadata={"run_id": "r2"})
    from dataclasses import replace
    with pytest.raises(RegistryError):
        registry.register_many([(first, {}), (replace(clash, version=1), {})], guard=store.guard(ok))
    assert registry.versions("content") == [] and store.get(ok)["committed"] is False

    # once registered, a cancel is refused: the versions are complete and recorded on the job
    registry.register_many([(first, {}), (clash, {})], alias="champion", guard=store.guard(ok))
    assert store.get(ok)["committed"] and store.get(ok)["versions"] == {"content": first.version,
                                                                        "ranker": clash.version}
    changed, row = store.stop(ok, "CANCELLED", "too late")
    assert not changed and row["status"] == "RUNNING"


def test_job_with_cutoffs_outside_the_data_fails_with_the_reason(tiny_system, tmp_path):
    """Explicit cutoffs reach the trainer; a split that leaves a window empty stops the job early, saying so."""
    from models.lifecycle.running import run_job

    system = copy_system(tiny_system, tmp_path / "sys")
    store = JobStore(system.bundles / "registry.db")
    times = pd.to_datetime(pd.read_parquet(system.data / "interactions.parquet")["timestamp"])
    end = int(times.max().timestamp())
    config_, violations = normalise_config({"split": {"train_until": end + 3600, "valid_until": end + 7200}},
                                           system.data, [tiny_system.root])
    assert violations == []
    job = store.create(config_)["job_id"]
    progress = []
    assert run_job(store.db_path, job, system.bundles, system.runs, echo=progress.append) == "FAILED"
    row = store.get(job)
    assert "leaves the valid and test window empty" in row["message"] and row["finished_at"]
    assert [p.kind for p in progress] == ["stage_started", "stage_finished"]  # load and validate, then stop
    assert not row["committed"] and row["versions"] == {}


def test_pmis_retrain_runs_a_recorded_job_and_auto_activates(trainer, capsys):
    """The CronJob's path end to end: a job in the same table, auto-activation decided on the same window."""
    from services.cli import main

    system = trainer.system
    registry = Registry(system.bundles / "registry.db")
    champion = registry.resolve("content")["version"]
    code = main(["retrain", "--data", str(system.data), "--bundles", str(system.bundles), "--runs", str(system.runs),
                 "--components", "content", "--algorithms", "logistic_regression", "--search-budget", "1",
                 "--margin", "0", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = out.split()[1]
    job = trainer.stub.GetJob(T.GetJobRequest(job_id=job_id), timeout=10)  # the trainer lists the CLI's job
    assert job.status == T.JOB_STATUS_SUCCEEDED and job.source == "cli" and set(job.versions) == {"content"}
    (decision,) = job.activation
    assert decision.component == "content" and decision.metric == "ndcg@10"
    assert decision.champion_version == champion and decision.HasField("champion_value")
    # the same data and split: the same window, so the decision is made on the numbers
    print(f"\nretrain: content ndcg@10 {decision.new_value:.5f} vs champion {decision.champion_value:.5f}: {decision.reason}")
    # same data, same split, a deterministic model: the same number, which meets a zero margin
    assert decision.new_value == pytest.approx(decision.champion_value) and decision.activated
    assert registry.resolve("content")["version"] == job.versions["content"] != champion
    assert f"content v{job.versions['content']}: activated - " in out
    assert Path(job.run_dir, "report.json").exists()
