"""What the trainer's tests (tests/test_trainer_*.py) share: the admin token, the in-process trainer
and content servers, a tiny trained system and private copies of it, helpers that call RPCs and
read their errors, and ways to hold the job table still.

The fixtures built on these (`tiny_system`, `tiny_copy`, `admin_env`, `trainer`, `content_server`)
are in tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from models.bundle.registry import Registry
from pmis.v1 import common_pb2, content_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.common.errors import field_violations
from tests.support.systems import copy_bundles
from tests.support.waiting import wait_serving

TOKEN = "trainer-tests-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WRONG = (("authorization", "Bearer not-the-token"),)
T = trainer_pb2
FAST = {"success": {"algorithms": ["logistic_regression"], "search_budget": 1}}  # small search budgets
TRAINER = "pmis.v1.TrainerService"
FINAL_STAGE = "final refit on all data and bundles"


def build_tiny_system(base: Path) -> SimpleNamespace:
    """600 students x 120 internships and a trained champion of every component (about 15 s), in
    `base`; built once (a `ready` marker), whoever asks first."""
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


@contextmanager
def running_trainer(system: SimpleNamespace, tiny: SimpleNamespace):
    """The trainer server in this process, on `system` (data roots: the tiny system's and the
    copy's); yields its server, stub, system, configuration and job table. Stopped on exit:
    running jobs stopped and marked, workers gone."""
    from services.trainer.config import parse_config
    from services.trainer.server import build

    cfg = parse_config([
        "--port", "0", "--metrics-port", "0", "--bundles", str(system.bundles), "--runs", str(system.runs),
        "--data", str(system.data), "--data-roots", f"{tiny.root}{os.pathsep}{system.root}",
        "--kill-after", "3", "--poll", "0.1", "--grace", "1"])
    server = build(cfg).start()
    channel = None
    try:
        wait_serving(f"127.0.0.1:{server.port}", TRAINER, failed=lambda: server.load_error)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        yield SimpleNamespace(server=server, stub=trainer_pb2_grpc.TrainerServiceStub(channel), system=system,
                              cfg=cfg, store=server.servicer.store)
    finally:
        if channel is not None:
            channel.close()
        server.stop()


@contextmanager
def running_content_server(bundles: Path):
    """A content component server in this process on `bundles`' registry, watching its champion
    alias; yields its stub."""
    from services.common.server import ComponentServer, ServerConfig
    from services.content import server as content_server_module

    cfg = ServerConfig(component="content", host="127.0.0.1", port=0, metrics_port=0, bundles=bundles,
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


def served(content_server) -> int:
    """The version the content server answers with."""
    return content_server.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10).version


def config(**kw) -> T.TrainingConfig:
    """A training configuration with small search budgets (plus `kw`)."""
    return T.TrainingConfig(**{**FAST, **kw})


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
