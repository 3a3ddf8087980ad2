"""The trainer and a component server with the registry and the job table on PostgreSQL
(PMIS_DATABASE_URL=postgresql://...): the job is recorded there, its worker process registers its
version there, and an activation moves the champion that a component server reads from there; the
bundles stay files under the bundles folder, the SQLite registry beside them is left alone."""

from __future__ import annotations

import time

import pytest

from models.bundle.registry import Registry, open_registry
from models.lifecycle.store import JobStore
from tests.support.trainer import AUTH, T, config, running_content_server, running_trainer, served


def _wait_ended(stub, job_id: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(T.GetJobRequest(job_id=job_id), timeout=10)
        if job.status in (T.JOB_STATUS_SUCCEEDED, T.JOB_STATUS_FAILED, T.JOB_STATUS_CANCELLED):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def test_trainer_and_server_share_the_registry_in_postgres(tiny_copy, tiny_system, admin_env, pg_url,
                                                           monkeypatch) -> None:
    sqlite_before = Registry(tiny_copy.bundles / "registry.db").versions("content")
    monkeypatch.setenv("PMIS_DATABASE_URL", pg_url)  # inherited by the trainer's worker processes
    with running_trainer(tiny_copy, tiny_system) as trainer:
        assert isinstance(trainer.store, JobStore) and trainer.store.registry.db.postgres
        started = trainer.stub.StartTraining(T.StartTrainingRequest(config=config(components=["content"])),
                                             metadata=AUTH, timeout=10)
        job = _wait_ended(trainer.stub, started.job_id)
        assert job.status == T.JOB_STATUS_SUCCEEDED, job.message
        version = job.versions["content"]
        registry = open_registry(tiny_copy.bundles)
        assert registry.get("content", version)["run_id"] == job.run_id
        assert registry.get("content", version)["path"] == tiny_copy.bundles / "content" / str(version)
        trainer.stub.Activate(T.ActivateRequest(component="content", version=version, reason="on postgres"),
                              metadata=AUTH, timeout=30)
        assert registry.resolve("content")["version"] == version
        assert registry.history("content")[-1]["reason"] == "on postgres"
        with running_content_server(tiny_copy.bundles) as content:  # a replica reading the database
            assert served(content) == version
    # the SQLite registry beside the bundles knows nothing of it; the job is in the database only
    assert Registry(tiny_copy.bundles / "registry.db").versions("content") == sqlite_before
    with pytest.raises(Exception, match="no job"):
        JobStore(tiny_copy.bundles / "registry.db").get(started.job_id)
    assert JobStore(pg_url, bundles=tiny_copy.bundles).get(started.job_id)["status"] == "SUCCEEDED"
