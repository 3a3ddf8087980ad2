"""The model lifecycle: job table, configuration checks, auth, cancel, restart, triggers, registry watch.

Real pieces throughout: a tiny generated dataset with a trained champion (shared through the
session's base temp folder with tests/test_trainer_e2e.py), the trainer server in-process on a
loopback port with real worker processes, and — for restarts — the trainer as a subprocess that
is killed the way a crashed pod is.

Every test that changes a system (jobs, registrations, activations, rollbacks, trigger checks)
does so on its own copy (`system`, and the `trainer` serving it); servers bind the ports they get
and report them; every wait is on a condition.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import grpc
import pandas as pd
import pytest

from models.training import diagnostics
from models.bundle.format import write_bundle
from models.lifecycle.jobs import RESTART_MESSAGE, JobStopped, JobStore, normalise_config
from models.bundle.registry import Registry, RegistryError
from pmis.v1 import common_pb2, content_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.common.errors import field_violations
from services.common.listening import read_ports
from tests.support.systems import copy_bundles
from tests.support.waiting import wait_serving, wait_until

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "trainer-tests-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WRONG = (("authorization", "Bearer not-the-token"),)
T = trainer_pb2
FAST = {"success": {"algorithms": ["logistic_regression"], "search_budget": 1}}  # small search budgets
TRAINER = "pmis.v1.TrainerService"


# --------------------------------------------------------------------------- shared set-up


@pytest.fixture(scope="session")
def tiny_system(tmp_path_factory) -> SimpleNamespace:
    """600 students x 120 internships and a trained champion of every component (about 15 s).

    Built once per session in the base temp folder, so test_trainer_e2e.py reuses it.
    """
    base = tmp_path_factory.getbasetemp() / "trainer-tiny"
    system = SimpleNamespace(root=base, data=base / "data", bundles=base / "bundles", runs=base / "runs")
    if not (base / "ready").exists():
        from models.data.generate import generate
        from models.training.train import TrainConfig, train

        shutil.rmtree(base, ignore_errors=True)
        generate(system.data, students=600, internships=120, seed=11, progress=False, catalog=False)
        train(TrainConfig(data_dir=system.data, bundles_dir=system.bundles, runs_dir=system.runs, search_budget=1,
                          success_algorithms=("logistic_regression",), progress=False,
                          als_grid=[{"factors": 16, "regularization": 0.05, "alpha": 1.0, "iterations": 10}],
                          ease_grid=[{"lambda": 200.0}], collab_trials=2))
        (base / "ready").write_text("ok")
    return system


def copy_system(tiny: SimpleNamespace, dest: Path) -> SimpleNamespace:
    """Private bundles/registry/runs (jobs, activations and rollbacks stay in this copy); shared data."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_bundles(tiny.bundles, dest / "bundles")
    shutil.copytree(tiny.runs, dest / "runs")
    return SimpleNamespace(root=dest, data=tiny.data, bundles=dest / "bundles", runs=dest / "runs")


@pytest.fixture()
def system(tiny_system, tmp_path) -> SimpleNamespace:
    """This test's own copy of the tiny system: what it registers, activates, rolls back or runs stays here."""
    return copy_system(tiny_system, tmp_path / "system")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout`; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def launch_server(module: str, args: list[str], ports_file: Path, log_path: Path,
                  env: dict | None = None) -> subprocess.Popen:
    """`python -m module` on ports it binds itself, reported in `ports_file` once it listens."""
    ports_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", module, "--port", "0", "--metrics-port", "auto",
                                 "--ports-file", str(ports_file), *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def await_server(proc: subprocess.Popen, service: str, ports_file: Path, timeout: float = 60.0) -> str:
    """The gRPC target of a launched server, once it has reported its ports and its health check
    says SERVING; fails at once if the process exits meanwhile."""
    ports = wait_until(lambda: read_ports(ports_file), timeout, f"{service} to report its ports", proc)
    assert ports["pid"] == proc.pid, ports
    target = f"127.0.0.1:{ports['grpc']}"
    wait_serving(target, service, timeout, proc)
    return target


def spawn_server(module: str, service: str, args: list[str], ports_file: Path, log_path: Path,
                 env: dict | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Launch and await one server: (process, target). A server that fails to get there is killed."""
    proc = launch_server(module, args, ports_file, log_path, env)
    try:
        return proc, await_server(proc, service, ports_file, timeout)
    except BaseException:
        stop_process(proc, 5)
        raise


@pytest.fixture(scope="module")
def admin_env():
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PMIS_ADMIN_TOKEN", TOKEN)
        mp.delenv("PMIS_ADMIN_TOKEN_FILE", raising=False)
        yield
    finally:
        mp.undo()


@pytest.fixture()
def trainer(system, tiny_system, admin_env):
    """The trainer server in this process, on this test's own copy of the tiny system."""
    from services.trainer import server as trainer_server

    cfg = trainer_server.parse_config([
        "--port", "0", "--metrics-port", "0", "--bundles", str(system.bundles), "--runs", str(system.runs),
        "--data", str(system.data), "--data-roots", f"{tiny_system.root}{os.pathsep}{system.root}",
        "--kill-after", "3", "--poll", "0.1", "--grace", "1"])
    server = trainer_server.build(cfg).start()
    channel = None
    try:
        wait_serving(f"127.0.0.1:{server.port}", TRAINER, failed=lambda: server.load_error)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        yield SimpleNamespace(server=server, stub=trainer_pb2_grpc.TrainerServiceStub(channel), system=system,
                              cfg=cfg, store=server.servicer.store)
    finally:
        if channel is not None:
            channel.close()
        server.stop()  # running jobs stopped and marked, workers gone


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def violations_of(call) -> set[str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    fields = {f for f, _ in field_violations(info.value)}
    assert fields, f"INVALID_ARGUMENT without BadRequest field violations: {info.value.details()}"
    return fields


def watch_until(stub, job_id: str, predicate, timeout: float = 120.0) -> list:
    """Updates of the job's WatchJob stream until `predicate(update)` holds; fails if the stream
    ends first (the job ended without getting there)."""
    seen = []
    call = stub.WatchJob(T.WatchJobRequest(job_id=job_id), timeout=timeout)
    for update in call:
        seen.append(update)
        if predicate(update):
            call.cancel()
            return seen
    raise AssertionError(f"job {job_id} ended before the awaited update: {[u.message for u in seen][-5:]}")


@contextmanager
def job_table_held(db: Path):
    """The job table's write lock, held: no process records anything (progress, a registration, a
    stop) until it is released; reads go on (WAL)."""
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def content_version(system, run_id: str) -> int:
    """Write (and register) one more content bundle: a version to activate, compare, watch."""
    from models.components.content import ContentModel
    from models.data.contract import load_dataset
    from models.components.features import FeatureSpace

    ds = load_dataset(system.data)
    ref = ContentModel.fit(ds.internships).save(system.bundles, {"run_id": run_id, "data_version": ds.data_version},
                                                FeatureSpace.build(ds.students, ds.internships).arrays())
    Registry(system.bundles / "registry.db").register(ref)
    return ref.version


def config(**kw) -> T.TrainingConfig:
    return T.TrainingConfig(**{**FAST, **kw})


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("raw,fields", [
    ({"components": ["content", "bogus", "content"]}, {"components[1]", "components[2]"}),
    ({"cv_folds": 2}, {"cv_folds"}),
    ({"cv_folds": 11}, {"cv_folds"}),
    ({"success": {"algorithms": ["svm", "random_forest", "random_forest"], "search_budget": 51}},
     {"success.algorithms[0]", "success.algorithms[2]", "success.search_budget"}),
    ({"split": {"valid_fraction": 0.5, "test_fraction": 0.3}}, {"split.valid_fraction", "split"}),
    ({"split": {"valid_fraction": 0.01}}, {"split.valid_fraction"}),
    ({"split": {"train_until": 2000}}, {"split.valid_until"}),
    ({"split": {"train_until": 2000, "valid_until": 1000}}, {"split.valid_until"}),
    ({"split": {"train_until": 1000, "valid_until": 2000, "test_fraction": 0.2}}, {"split"}),
    ({"split": {"train_until": 1000, "valid_until": 2000, "random": True}}, {"split.random"}),
    ({"auto_activation": {"enabled": True, "margin": 1.5}}, {"auto_activation.margin"}),
    ({"auto_activation": {"enabled": True, "margin": float("nan")}}, {"auto_activation.margin"}),
    ({"max_eval_students": 5, "description": "x" * 201}, {"max_eval_students", "description"}),
    ({"collaborative": {"trials": 201}}, {"collaborative.trials"}),
    ({"data_source": "/"}, {"data_source"}),                      # outside the data roots
    ({"data_source": "{root}/nope"}, {"data_source"}),            # does not exist
    ({"data_source": "{root}/bundles"}, {"data_source"}),         # no students table
])
def test_config_violations_name_the_fields(tiny_system, raw, fields):
    if "data_source" in raw:
        raw = {"data_source": raw["data_source"].format(root=tiny_system.root)}
    _, violations = normalise_config(raw, tiny_system.data, [tiny_system.root])
    assert {f for f, _ in violations} == fields
    assert all(d for _, d in violations)


def test_config_defaults_and_normalisation(tiny_system):
    config_, violations = normalise_config({"components": ["ranker", "content"]}, tiny_system.data, [tiny_system.root])
    assert violations == []
    assert config_["components"] == ["content", "ranker"]  # canonical order
    assert config_["data_source"] == str(tiny_system.data.resolve())
    assert (config_["cv_folds"], config_["search_budget"], config_["valid_fraction"], config_["test_fraction"]) == \
        (3, 4, 0.15, 0.15)
    assert config_["auto_activate"] is False and config_["success_algorithms"] == []
    cut, violations = normalise_config({"split": {"train_until": 10, "valid_until": 20}}, tiny_system.data,
                                       [tiny_system.root])
    assert violations == [] and (cut["train_until"], cut["valid_until"]) == (10, 20)
    # a random split: the fractions, held out per student; the job's TrainConfig says so
    from models.lifecycle.jobs import train_config

    shuffled, violations = normalise_config({"split": {"random": True}}, tiny_system.data, [tiny_system.root])
    assert violations == [] and shuffled["split_random"] is True
    assert train_config(shuffled, tiny_system.root / "b", tiny_system.root / "r").split == "random"
    assert train_config(config_, tiny_system.root / "b", tiny_system.root / "r").split == "time"
    # the collaborative search: scaled to the data unless a number of trials is given
    assert train_config(config_, tiny_system.root / "b", tiny_system.root / "r").collab_trials is None
    fixed, violations = normalise_config({"collaborative": {"trials": 12}}, tiny_system.data, [tiny_system.root])
    assert violations == [] and train_config(fixed, tiny_system.root / "b", tiny_system.root / "r").collab_trials == 12


def test_start_training_rejects_bad_configs_with_field_violations(trainer):
    stub = trainer.stub
    bad = T.TrainingConfig(components=["content", "everything"], cv_folds=12,
                           success=T.SuccessSearch(algorithms=["xgboost"]),
                           split=T.TimeSplit(valid_fraction=0.5),
                           auto_activation=T.AutoActivation(enabled=True, margin=-0.1), data_source="/etc")
    jobs_before = sum(trainer.store.counts().values())
    fields = violations_of(lambda: stub.StartTraining(T.StartTrainingRequest(config=bad), metadata=AUTH, timeout=10))
    assert fields == {"config.components[1]", "config.cv_folds", "config.success.algorithms[0]",
                      "config.split.valid_fraction", "config.split", "config.auto_activation.margin",
                      "config.data_source"}
    assert sum(trainer.store.counts().values()) == jobs_before  # nothing was queued


# --------------------------------------------------------------------------- auth


@pytest.fixture()
def content_server(trainer):
    """A content component server in this process, on the trainer's registry, watching it."""
    from services.common.server import ComponentServer, ServerConfig
    from services.content import server as content_server_module

    cfg = ServerConfig(component="content", host="127.0.0.1", port=0, metrics_port=0, bundles=trainer.system.bundles,
                       alias="champion", version=None, path=None, grace=0.5, drain=0.0, workers=4,
                       max_connection_age_ms=60_000, watch=0.2)
    server = ComponentServer(cfg, content_server_module.SERVICE, content_server_module.make_servicer(cfg),
                             content_pb2_grpc.add_ContentServiceServicer_to_server).start()
    channel = None
    try:
        wait_serving(f"127.0.0.1:{server.port}", content_server_module.SERVICE, failed=lambda: server.load_error)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        yield content_pb2_grpc.ContentServiceStub(channel)
    finally:
        if channel is not None:
            channel.close()
        server.stop()


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


# --------------------------------------------------------------------------- models


def test_list_get_compare_activate_rollback(trainer, content_server):
    stub, system = trainer.stub, trainer.system
    champion = stub.GetModel(T.GetModelRequest(component="content"), timeout=10).summary.version
    extra = content_version(system, "compare-test")
    listed = stub.ListModels(T.ListModelsRequest(component="content", page_size=1), timeout=10)
    assert [m.version for m in listed.models] == [extra] and listed.next_page_token
    rest = stub.ListModels(T.ListModelsRequest(component="content", page_size=1, page_token=listed.next_page_token),
                           timeout=10)
    assert rest.models[0].version < extra
    active = stub.ListModels(T.ListModelsRequest(component="content", active_only=True), timeout=10)
    assert [m.version for m in active.models] == [champion] and active.models[0].champion
    assert violations_of(lambda: stub.ListModels(T.ListModelsRequest(component="content", page_token="garbage"),
                                                 timeout=10)) == {"page_token"}
    assert violations_of(lambda: stub.ListModels(T.ListModelsRequest(component="gateway"), timeout=10)) == {"component"}

    # plots of the champion's run, as paths and bytes; feature importance of the ranker
    detail = stub.GetModel(T.GetModelRequest(component="success", include_plot_bytes=True), timeout=10)
    plots = {p.name: p for p in detail.plots}
    assert {"reliability.png", "roc.png", "pr.png", "feature_importance_success.png"} <= set(plots)
    for p in plots.values():
        assert Path(p.path).is_file() and p.png.startswith(b"\x89PNG") and p.description
    assert detail.feature_importance and detail.manifest["component"] == "success"
    assert detail.summary.window.fingerprint and detail.summary.window.test_students > 0
    ranker = stub.GetModel(T.GetModelRequest(component="ranker"), timeout=10)
    assert {"feature_importance_ranker.png", "fairness_groups.png"} <= {p.name for p in ranker.plots}
    assert all(p.png == b"" for p in ranker.plots) and len(ranker.feature_importance) > 5
    assert code_of(lambda: stub.GetModel(T.GetModelRequest(component="content", version=999), timeout=10)) == \
        grpc.StatusCode.NOT_FOUND

    # the hand-made version records no evaluation window: not comparable, and said so
    cmp = stub.CompareModels(T.CompareModelsRequest(component="content", versions=[extra], include_champion=True),
                             timeout=10)
    assert [m.version for m in cmp.models] == [extra, champion]
    assert cmp.same_window is False and any("not recorded" in d for d in cmp.window_differences)
    ndcg = next(m for m in cmp.metrics if m.metric == "ndcg@10")
    assert set(ndcg.values) == {champion} and ndcg.direction == 1  # only the champion has test-window metrics
    assert code_of(lambda: stub.CompareModels(T.CompareModelsRequest(
        component="content", versions=[extra, champion], require_same_window=True), timeout=10)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert violations_of(lambda: stub.CompareModels(T.CompareModelsRequest(component="content", versions=[extra]),
                                                    timeout=10)) == {"versions"}

    # activation moves the alias; the watching content server follows it; rollback moves it back
    change = stub.Activate(T.ActivateRequest(component="content", version=extra, reason="test"), metadata=AUTH,
                           timeout=30)
    assert (change.previous.version, change.current.version) == (champion, extra) and "PMIS_WATCH_SECONDS" in change.pickup
    wait_until(lambda: served(content_server) == extra, 30, f"the content server serving v{extra} after Activate")
    back = stub.Rollback(T.RollbackRequest(component="content"), metadata=AUTH, timeout=30)
    assert (back.previous.version, back.current.version) == (extra, champion)
    wait_until(lambda: served(content_server) == champion, 30, f"the content server serving v{champion} after Rollback")
    history = stub.GetModel(T.GetModelRequest(component="content"), timeout=10).champion_history
    assert [h.action for h in history][-2:] == ["set", "rollback"]

    # a version whose files were tampered with is never activated
    bad = content_version(system, "tampered")
    row = Registry(system.bundles / "registry.db").get("content", bad)
    victim = Path(row["path"]) / "item_stipend.npy"
    with open(victim, "ab") as f:
        f.write(b"\0")
    with pytest.raises(grpc.RpcError) as info:
        stub.Activate(T.ActivateRequest(component="content", version=bad), metadata=AUTH, timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and victim.name in info.value.details()
    assert Registry(system.bundles / "registry.db").resolve("content")["version"] == champion
    assert code_of(lambda: stub.Activate(T.ActivateRequest(component="content", version=999), metadata=AUTH,
                                         timeout=10)) == grpc.StatusCode.NOT_FOUND


def served(content_server) -> int:
    """The version the content server answers with."""
    return content_server.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10).version


def test_model_slot_follows_moves_of_its_alias_only(system):
    """The registry watch reloads when the alias moves, not when someone pinned another version."""
    from services.common.server import ModelSlot, ServerConfig
    from services.content.server import ContentRuntime

    registry = Registry(system.bundles / "registry.db")
    champion = registry.resolve("content")["version"]
    other = content_version(system, "watch-test")
    cfg = ServerConfig("content", "127.0.0.1", 0, 0, system.bundles, "champion", None, None, 0.5, 0.0, 1, 60_000,
                       watch=1.0)
    slot = ModelSlot("content", ContentRuntime.from_bundle, cfg)
    slot.load()
    assert slot.check_alias() is False and slot.get().bundle.ref.version == champion
    slot.load(version=other)  # a manual Reload to another version ...
    assert slot.check_alias() is False and slot.get().bundle.ref.version == other  # ... stays put
    slot.load(alias="champion")
    registry.set_alias("content", other, reason="watch test")
    try:
        assert slot.check_alias() is True and slot.get().bundle.ref.version == other
        assert slot.check_alias() is False
    finally:
        registry.rollback("content", reason="watch test done")
    assert slot.check_alias() is True and slot.get().bundle.ref.version == champion
    pinned = ModelSlot("content", ContentRuntime.from_bundle, ServerConfig(
        "content", "127.0.0.1", 0, 0, system.bundles, "champion", champion, None, 0.5, 0.0, 1, 60_000, watch=1.0))
    assert pinned.watching is False


# --------------------------------------------------------------------------- data and triggers


def test_data_quality_reports_file_row_column(trainer):
    stub, system = trainer.stub, trainer.system
    ok = stub.DataQuality(T.DataQualityRequest(data_source=str(system.data)), timeout=60)
    assert ok.ok and ok.rows["students"] == 600 and ok.data_version and not ok.errors
    broken = system.root / "broken"
    shutil.copytree(system.data, broken)
    inter = pd.read_parquet(broken / "interactions.parquet")
    inter.loc[4, "student_id"] = "S9999999"
    inter.to_parquet(broken / "interactions.parquet", index=False)
    report = stub.DataQuality(T.DataQualityRequest(data_source=str(broken)), timeout=60)
    assert not report.ok and report.data_version == ""
    problem = next(e for e in report.errors if e.column == "student_id")
    assert problem.file == "interactions.parquet" and problem.row == 5 and "S9999999" in problem.message
    assert violations_of(lambda: stub.DataQuality(T.DataQualityRequest(data_source="/usr"), timeout=10)) == \
        {"data_source"}


def _grow(data: Path, dest: Path, interactions: int, outcomes: int) -> Path:
    """A copy of `data` with later interactions (and outcomes for applications among them)."""
    shutil.copytree(data, dest)
    inter = pd.read_parquet(dest / "interactions.parquet")
    extra = inter.sample(interactions, random_state=0).copy()
    latest = pd.to_datetime(inter["timestamp"]).max()
    extra["timestamp"] = latest + pd.to_timedelta(range(1, interactions + 1), unit="min")
    extra["event"] = "apply"
    extra = extra.drop_duplicates(["student_id", "internship_id"])
    pd.concat([inter, extra]).to_parquet(dest / "interactions.parquet", index=False)
    out = pd.read_parquet(dest / "outcomes.parquet")
    new = extra[["student_id", "internship_id"]].merge(out[["student_id", "internship_id"]], how="left",
                                                      indicator=True)
    new = new[new["_merge"] == "left_only"].drop(columns="_merge").head(outcomes)
    template = out.iloc[[0] * len(new)].reset_index(drop=True)
    template[["student_id", "internship_id"]] = new.reset_index(drop=True)
    pd.concat([out, template]).to_parquet(dest / "outcomes.parquet", index=False)
    return dest


def test_retraining_triggers_count_new_rows_and_age(system, tmp_path):
    from models.lifecycle.triggers import check

    registry = Registry(system.bundles / "registry.db")
    same = check(system.data, registry, min_new_interactions=10, min_new_outcomes=10, max_age_hours=24)
    assert same["should_train"] is False and same["new_interactions"] == 0
    assert "no new data" in same["reasons"][0]
    old = check(system.data, registry, min_new_interactions=10, min_new_outcomes=10, max_age_hours=24,
                now=datetime.now(timezone.utc) + timedelta(hours=30))
    assert old["should_train"] and any("old" in r for r in old["reasons"])

    grown = _grow(system.data, tmp_path / "grown", interactions=120, outcomes=40)
    added = len(pd.read_parquet(grown / "interactions.parquet")) - len(pd.read_parquet(system.data / "interactions.parquet"))
    more = check(grown, registry, min_new_interactions=added, min_new_outcomes=1000, max_age_hours=24)
    assert more["should_train"] and more["new_interactions"] == added and more["new_outcomes"] == 40
    assert more["current_data_version"] != more["champion_data_version"]
    assert f"{added} new interactions" in more["reasons"][0]
    fewer = check(grown, registry, min_new_interactions=added + 1, min_new_outcomes=41, max_age_hours=24)
    assert fewer["should_train"] is False and f"only {added} new interactions" in fewer["reasons"][0]
    by_outcomes = check(grown, registry, min_new_interactions=10_000, min_new_outcomes=40, max_age_hours=24)
    assert by_outcomes["should_train"] and "40 new outcomes" in by_outcomes["reasons"][0]
    empty = Registry(tmp_path / "empty" / "registry.db")
    assert check(system.data, empty)["reasons"] == ["no champion is active for any component"]


def test_pmis_retrain_if_needed_logs_its_decision(system, tmp_path, capsys):
    from services.cli import main

    args = ["retrain", "--if-needed", "--data", str(system.data), "--bundles", str(system.bundles), "--runs",
            str(system.runs), "--min-new-interactions", "50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("no retraining needed") and "no new data" in out
    grown = _grow(system.data, tmp_path / "grown", interactions=80, outcomes=5)
    assert main(["retrain", "--dry-run", "--data", str(grown), "--bundles", str(system.bundles), "--runs",
                 str(system.runs), "--min-new-interactions", "50"]) == 0
    assert capsys.readouterr().out.startswith("retraining (check")
    log = JobStore(system.bundles / "registry.db").triggers(2)
    assert [t["should_train"] for t in log] == [True, False] and all(t["source"] == "cli" for t in log)
    assert log[0]["details"]["new_interactions"] >= 50 and log[0]["job_id"] is None  # dry run: no job


def test_check_triggers_rpc_starts_one_job_when_needed(trainer):
    stub = trainer.stub
    first = stub.CheckTriggers(T.CheckTriggersRequest(max_age_hours=1e-6, start_if_needed=True, config=config()),
                               metadata=AUTH, timeout=60)
    assert first.should_train and first.job_id and first.source == "rpc"
    second = stub.CheckTriggers(T.CheckTriggersRequest(max_age_hours=1e-6, start_if_needed=True, config=config()),
                                metadata=AUTH, timeout=60)
    assert second.should_train and second.job_id == "" and any(first.job_id in r for r in second.reasons)
    job = stub.GetJob(T.GetJobRequest(job_id=first.job_id), timeout=10)
    assert job.source == "trigger" and "old" in job.reason
    stub.CancelJob(T.CancelJobRequest(job_id=first.job_id), metadata=AUTH, timeout=30)
    log = trainer.store.triggers(2)
    assert log[1]["job_id"] == first.job_id and log[0]["job_id"] is None
    status = stub.Status(T.StatusRequest(), timeout=10)
    assert status.last_trigger_check.check_id == second.check_id
    assert violations_of(lambda: stub.CheckTriggers(T.CheckTriggersRequest(min_new_outcomes=-1), timeout=10)) == \
        {"min_new_outcomes"}


# --------------------------------------------------------------------------- jobs


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


FINAL_STAGE = "final refit on all data and bundles"


def _bundles_of(bundles: Path, run_id: str, component: str) -> list[Path]:
    """The published bundle folders of `component` that run `run_id` wrote (published = renamed
    complete into place, so a manifest is never half-written)."""
    return [m.parent for m in (bundles / component).glob("*/manifest.json")
            if json.loads(m.read_text())["run_id"] == run_id]


def _states(pid: int) -> list[str]:
    """The scheduler state of every thread of the process ([] once it is gone)."""
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a thread that just ended
    return states


def _stopped(pid: int) -> bool:
    """SIGSTOP has landed: every thread of the process is stopped."""
    states = _states(pid)
    return bool(states) and all(s in ("T", "t") for s in states)


def _exited(pid: int) -> bool:
    """The process has exited (a zombie awaiting its new parent's reaping counts as exited)."""
    return all(s in ("Z", "X") for s in _states(pid))


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
            wait_until(lambda: _stopped(pid), 10, "the worker stopped")
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


def test_decide_activation_rules():
    window = {"data_version": "d1", "train_until": 1, "valid_until": 2, "k": 10, "candidates": 100,
              "test_students": 50, "sample_seed": None}
    champion = {"version": 3, "metrics": {"ndcg@10": 0.30, "roc_auc": 0.80}}
    decide = diagnostics.decide_activation
    yes = decide("ranker", 4, {"ndcg@10": 0.32}, window, champion, dict(window), margin=0.01)
    assert yes["activate"] and "vs champion v3" in yes["reason"] and "gain +0.0200" in yes["reason"]
    no = decide("ranker", 4, {"ndcg@10": 0.305}, window, champion, dict(window), margin=0.01)
    assert not no["activate"] and "< margin" in no["reason"]
    other = decide("success", 4, {"roc_auc": 0.95}, window, champion, {**window, "data_version": "d0"}, margin=0.0)
    assert not other["activate"] and "different window" in other["reason"] and "data_version" in other["reason"]
    assert decide("content", 1, {"ndcg@10": 0.1}, window, None, None, margin=0.5)["activate"]
    assert diagnostics.direction("log_loss") == -1 and diagnostics.direction("students") == 0
    assert diagnostics.direction("ndcg@10") == 1


# --------------------------------------------------------------------------- restarts (real processes)


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


def test_trainer_restart_and_shutdown_mark_jobs_honestly(tiny_system, system, tmp_path):
    store = JobStore(system.bundles / "registry.db")
    procs = []
    try:
        proc, target = _start_trainer(system, tiny_system, tmp_path)
        procs.append(proc)
        with grpc.insecure_channel(target) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            crashed, orphaned = _running_jobs(stub, store, 2)  # two workers at once (--max-jobs 2)
        # The trainer dies hard and one worker with it (as in a pod restart); the other is orphaned.
        # Neither job can move on meanwhile (the job table is held), and the trainer is frozen
        # before the worker is killed, so it cannot see that death and record it: as far as the
        # job table can tell, both went at the same instant.
        with job_table_held(system.bundles / "registry.db"):
            pids = {j: _early(store, j)["pid"] for j in (crashed, orphaned)}
            assert all(pids.values()) and len(set(pids.values())) == 2
            proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: _stopped(proc.pid), 10, "the trainer stopped")
            os.kill(pids[crashed], signal.SIGKILL)
            proc.kill()
            proc.wait(10)
            wait_until(lambda: _exited(pids[crashed]), 10, "the killed worker gone")
        # the orphan notices its trainer is gone, stops itself and says why
        wait_until(lambda: _exited(pids[orphaned]), 60, "the orphaned worker to stop itself")
        row = store.get(orphaned)
        assert row["status"] == "FAILED" and "trainer that ran the job exited" in row["message"], row["message"]
        assert store.get(crashed)["status"] == "RUNNING"  # nobody left to say otherwise ...
        proc, target = _start_trainer(system, tiny_system, tmp_path)
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
        with job_table_held(system.bundles / "registry.db"):
            pid = _early(store, last)["pid"]
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert _exited(pid)  # the trainer waited for its worker
        row = store.get(last)
        assert row["status"] == "FAILED" and row["message"] == "interrupted: trainer shut down"
        registry = Registry(system.bundles / "registry.db")
        run_ids = {store.get(j)["run_id"] for j in (crashed, orphaned, last)} - {None}
        assert all(v["run_id"] not in run_ids for c in registry.components() for v in registry.versions(c))
        leftovers = [p for p in system.bundles.glob("*/*") if p.name.startswith(".tmp-") or (
            (p / "manifest.json").exists() and json.loads((p / "manifest.json").read_text())["run_id"] in run_ids)]
        assert leftovers == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL ends a stopped process too
            p.wait()


def test_runner_launches_each_queued_job_once(tiny_system, tmp_path, admin_env):
    """A launched job stays QUEUED until its worker has started up; it must not be launched again."""
    from services.trainer import server as trainer_server

    system = copy_system(tiny_system, tmp_path / "sys")
    cfg = trainer_server.parse_config(["--bundles", str(system.bundles), "--runs", str(system.runs), "--data",
                                       str(system.data), "--max-jobs", "3", "--kill-after", "2"])
    store = JobStore(cfg.db)
    config_, _ = normalise_config({}, system.data, [system.root])
    job = store.create(config_)["job_id"]
    runner = trainer_server.JobRunner(cfg, store)  # not started: we drive it by hand
    try:
        for _ in range(3):
            runner._launch()
        assert runner.running() == [job]
        (proc, _), = runner.procs.values()
        assert runner.cancel(job)["status"] == "CANCELLED"
        assert not proc.is_alive() and runner.running() == []
    finally:
        runner.shutdown()  # no worker left behind when an assertion fails


def test_runner_leaves_a_job_another_process_started_alone(system, admin_env, monkeypatch):
    """`pmis retrain` records its job QUEUED and starts it a moment later, in its own process; a
    trainer on the same table may launch a worker for it in between. That worker finds the job
    taken and exits: the job is the other process's — not failed, its files not removed."""
    from services.trainer import server as trainer_server

    cfg = trainer_server.parse_config(["--bundles", str(system.bundles), "--runs", str(system.runs), "--data",
                                       str(system.data), "--kill-after", "2"])
    store = JobStore(cfg.db)
    config_, _ = normalise_config({"components": ["content"]}, system.data, [system.root])
    job = store.create(config_, source="cli")["job_id"]
    runner = trainer_server.JobRunner(cfg, store)  # not started: we drive it by hand
    seen = store.queued(cfg.max_jobs)  # the runner reads the queue ...
    assert [j["job_id"] for j in seen] == [job]
    assert store.start(job, os.getpid(), socket.gethostname())  # ... the CLI starts its job ...
    store.set_run(job, "run-of-the-cli")
    bundle = write_bundle(system.bundles, "content", documents={"x": 1}, metadata={"run_id": "run-of-the-cli"})
    writing = system.bundles / "content" / ".tmp-the-cli-is-writing"
    writing.mkdir()
    (system.runs / "run-of-the-cli").mkdir()
    monkeypatch.setattr(store, "queued", lambda limit: seen)
    try:
        runner._launch()  # ... and the runner launches a worker for what it read
        (proc, _), = runner.procs.values()
        wait_until(lambda: not proc.is_alive(), 60, "the launched worker to find the job taken", interval=0.1)
        runner._reap()
        row = store.get(job)
        assert (row["status"], row["pid"], row["finished_at"]) == ("RUNNING", os.getpid(), None), row["message"]
        assert not [e["message"] for e in store.events(job) if "exited" in e["message"] or "removed" in e["message"]]
        assert bundle.path.is_dir() and writing.is_dir() and (system.runs / "run-of-the-cli").is_dir()
    finally:
        runner.shutdown()


def test_auto_activate_moves_the_champion_only_on_the_same_window(tmp_path):
    from models.lifecycle.jobs import auto_activate

    root = tmp_path / "bundles"
    registry = Registry(root / "registry.db")
    window = {"data_version": "d1", "train_until": 1, "valid_until": 2, "k": 10, "candidates": 100,
              "test_students": 50, "sample_seed": None}

    def version(ndcg: float, w: dict) -> int:
        ref = write_bundle(root, "ranker", documents={"n": ndcg}, metadata={
            "run_id": f"r{ndcg}", "evaluation_window": w, "metrics": {"ndcg@10": ndcg}})
        registry.register(ref)
        return ref.version

    first = version(0.30, window)
    (d,) = auto_activate(registry, "job-a", {"ranker": first}, 0.01, window)
    assert d["activate"] and d["reason"] == "no champion yet" and registry.resolve("ranker")["version"] == first
    better = version(0.35, window)
    (d,) = auto_activate(registry, "job-b", {"ranker": better}, 0.01, window)
    assert d["activate"] and registry.resolve("ranker")["version"] == better
    assert "auto-activated by job job-b" in registry.history("ranker")[-1]["reason"]
    marginal = version(0.355, window)
    (d,) = auto_activate(registry, "job-c", {"ranker": marginal}, 0.01, window)
    assert not d["activate"] and d["champion_version"] == better and registry.resolve("ranker")["version"] == better
    newer_data = {**window, "data_version": "d2"}
    elsewhere = version(0.9, newer_data)
    (d,) = auto_activate(registry, "job-d", {"ranker": elsewhere}, 0.0, newer_data)
    assert not d["activate"] and "different window" in d["reason"] and registry.resolve("ranker")["version"] == better


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


def test_runner_fails_jobs_whose_foreign_process_died(tmp_path, admin_env):
    """A `pmis retrain` killed with -9 leaves its job RUNNING; the trainer on that host notices."""
    import socket

    from services.trainer import server as trainer_server

    cfg = trainer_server.parse_config(["--bundles", str(tmp_path / "bundles"), "--data", str(tmp_path)])
    store = JobStore(cfg.db)
    dead = subprocess.Popen(["true"])
    dead.wait()
    job = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(job, dead.pid, socket.gethostname())
    alive = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(alive, os.getpid(), socket.gethostname())
    elsewhere = store.create({"components": ["content"]}, source="cli")["job_id"]
    store.start(elsewhere, dead.pid, "another-host")
    trainer_server.JobRunner(cfg, store)._reap_foreign()
    assert store.get(job)["status"] == "FAILED" and f"process {dead.pid} exited" in store.get(job)["message"]
    assert store.get(alive)["status"] == store.get(elsewhere)["status"] == "RUNNING"


def test_job_with_cutoffs_outside_the_data_fails_with_the_reason(tiny_system, tmp_path):
    """Explicit cutoffs reach the trainer; a split that leaves a window empty stops the job early, saying so."""
    from models.lifecycle.jobs import run_job

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


def test_config_round_trips_through_its_message(tiny_system):
    """A job's configuration as StartTraining takes it and as GetJob shows it: the same job."""
    from services.trainer.server import config_dict, config_message

    raw = {"collaborative": {"trials": 7}, "split": {"random": True}, "cv_folds": 4, "seed": 3}
    config_, violations = normalise_config(raw, tiny_system.data, [tiny_system.root])
    assert violations == []
    again, violations = normalise_config(config_dict(config_message(config_)), tiny_system.data, [tiny_system.root])
    assert violations == [] and again == config_ and again["collab_trials"] == 7
