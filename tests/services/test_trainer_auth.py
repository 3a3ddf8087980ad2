"""The trainer's admin token: every mutating RPC (and a component server's Reload) needs it, a
missing configuration refuses them all, read-only RPCs need none.

On the trainer in this process (`trainer`, tests/conftest.py) over this test's own copy of the tiny
system, with a content server watching its registry (`content_server`).
"""

from __future__ import annotations

import grpc
import pytest

from models.bundle.registry import Registry
from pmis.v1 import common_pb2
from tests.support.trainer import AUTH, TOKEN, WRONG, T, code_of, config


def test_every_mutating_rpc_needs_the_admin_token(trainer, content_server):
    stub = trainer.stub
    champion = Registry(trainer.system.bundles / "registry.db").resolve("content")["version"]
    calls = {
        "StartTraining": lambda md: stub.StartTraining(T.StartTrainingRequest(config=config()), metadata=md, timeout=10),
        "CancelJob": lambda md: stub.CancelJob(T.CancelJobRequest(job_id="job-none"), metadata=md, timeout=10),
        "Activate": lambda md: stub.Activate(T.ActivateRequest(component="content", version=champion), metadata=md,
                                             timeout=30),
        "Rollback": lambda md: stub.Rollback(T.RollbackRequest(component="content"), metadata=md, timeout=10),
        "CheckTriggers(start)": lambda md: stub.CheckTriggers(T.CheckTriggersRequest(start_if_needed=True),
                                                              metadata=md, timeout=30),
        "content Reload": lambda md: content_server.Reload(common_pb2.ReloadRequest(alias="champion"), metadata=md,
                                                           timeout=30),
    }
    for name, call in calls.items():
        assert code_of(lambda: call(())) == grpc.StatusCode.UNAUTHENTICATED, name
        assert code_of(lambda: call((("authorization", "Basic dXNlcjpwYXNz"),))) == \
            grpc.StatusCode.UNAUTHENTICATED, name
        assert code_of(lambda: call(WRONG)) == grpc.StatusCode.PERMISSION_DENIED, name
    # The right token gets through to the RPC itself (which then answers on its merits).
    job = calls["StartTraining"](AUTH)
    assert job.status == T.JOB_STATUS_QUEUED and job.job_id.startswith("job-")
    cancelled = stub.CancelJob(T.CancelJobRequest(job_id=job.job_id), metadata=AUTH, timeout=30)
    assert cancelled.status == T.JOB_STATUS_CANCELLED
    assert code_of(lambda: calls["CancelJob"](AUTH)) == grpc.StatusCode.NOT_FOUND
    assert calls["Activate"](AUTH).current.version == champion
    assert code_of(lambda: calls["Rollback"](AUTH)) == grpc.StatusCode.FAILED_PRECONDITION  # nothing earlier
    assert calls["content Reload"](AUTH).current.component == "content"
    decision = calls["CheckTriggers(start)"](AUTH)  # same data, fresh champion: nothing to do
    assert decision.should_train is False and decision.job_id == ""


def test_admin_rpcs_refused_when_no_token_is_configured(trainer, content_server, monkeypatch):
    monkeypatch.delenv("PMIS_ADMIN_TOKEN")
    with pytest.raises(grpc.RpcError) as info:
        trainer.stub.Rollback(T.RollbackRequest(component="content"), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "disabled" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        content_server.Reload(common_pb2.ReloadRequest(alias="champion"), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "PMIS_ADMIN_TOKEN" in info.value.details()
    # a mounted secret file works as well as the variable
    token_file = trainer.system.root / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("PMIS_ADMIN_TOKEN_FILE", str(token_file))
    assert content_server.Reload(common_pb2.ReloadRequest(alias="champion"), metadata=AUTH, timeout=30).current.version


def test_read_only_rpcs_need_no_token(trainer, content_server):
    stub = trainer.stub
    assert stub.Status(T.StatusRequest(), timeout=10).max_concurrent_jobs == 1
    stub.ListJobs(T.ListJobsRequest(), timeout=10)
    assert stub.ListModels(T.ListModelsRequest(component="success"), timeout=10).models
    assert stub.GetModel(T.GetModelRequest(component="ranker"), timeout=10).summary.champion
    assert stub.DataQuality(T.DataQualityRequest(), timeout=60).ok
    assert stub.CheckTriggers(T.CheckTriggersRequest(), timeout=60).check_id > 0
    assert content_server.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10).component == "content"
