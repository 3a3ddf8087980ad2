"""End to end, through grpcurl alone, as an operator would: start a training job, watch its progress
stream to the end, compare the new version with the champion, activate it, see a running component
server answer ModelInfo with the new version, roll back, see the old one again.

The trainer and the success component server run as real processes on loopback; the success
server follows the registry's champion alias (PMIS_WATCH_SECONDS=0.5).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_trainer import TOKEN, copy_system, tiny_system, wait_serving  # noqa: F401 - tiny_system is a fixture

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
AUTH = f"authorization: Bearer {TOKEN}"
TS = "pmis.v1.TrainerService"


def grpcurl(target: str, method: str, data: dict | None = None, *flags: str, timeout: float = 60
            ) -> subprocess.CompletedProcess:
    cmd = [GRPCURL, "-plaintext", *flags]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run(cmd + [target, method], capture_output=True, text=True, timeout=timeout)


def ok(target: str, method: str, data: dict | None = None, *flags: str, timeout: float = 60) -> dict:
    out = grpcurl(target, method, data, *flags, timeout=timeout)
    assert out.returncode == 0, f"{method}: {out.stderr}"
    return json.loads(out.stdout or "{}")


def messages(text: str) -> list[dict]:
    """grpcurl prints one JSON document per streamed message."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)


@pytest.fixture(scope="module")
def lifecycle(tiny_system, tmp_path_factory):  # noqa: F811 - the fixture imported above
    system = copy_system(tiny_system, tmp_path_factory.mktemp("trainer-e2e"))
    env = {**os.environ, "PMIS_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
    ports = {"trainer": free_port(), "success": free_port()}
    logs = open(system.root / "servers.log", "ab")
    procs = {
        "trainer": subprocess.Popen([sys.executable, "-m", "services.trainer.server", "--port", str(ports["trainer"]),
                                     "--metrics-port", "0", "--bundles", str(system.bundles), "--runs",
                                     str(system.runs), "--data", str(system.data), "--data-roots",
                                     str(tiny_system.root)], cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT),
        "success": subprocess.Popen([sys.executable, "-m", "services.success.server", "--port", str(ports["success"]),
                                     "--metrics-port", "0", "--bundles", str(system.bundles), "--watch", "0.5"],
                                    cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT),
    }
    try:
        wait_serving(ports["trainer"], TS)
        wait_serving(ports["success"], "pmis.v1.SuccessService")
        yield {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logs.close()


def served_version(target: str) -> int:
    return int(ok(target, "pmis.v1.SuccessService/ModelInfo", {})["version"])


def wait_for_version(target: str, version: int, timeout: float = 15.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if served_version(target) == version:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"the success server still serves v{served_version(target)}, not v{version}")


def test_model_lifecycle_through_grpcurl(lifecycle):
    trainer, success = lifecycle["trainer"], lifecycle["success"]
    assert Path(GRPCURL).exists()
    listed = grpcurl(trainer, "list")
    assert listed.returncode == 0 and TS in listed.stdout.split()
    described = subprocess.run([GRPCURL, "-plaintext", trainer, "describe", TS], capture_output=True, text=True,
                               timeout=30)
    assert "rpc StartTraining" in described.stdout and "stream .pmis.v1.JobUpdate" in described.stdout
    old = served_version(success)

    config = {"config": {"components": ["success"], "description": "e2e: retrain the success predictor",
                         "success": {"algorithms": ["logistic_regression"], "search_budget": 1}, "cv_folds": 3}}
    refused = grpcurl(trainer, f"{TS}/StartTraining", config)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    bad = grpcurl(trainer, f"{TS}/StartTraining", {"config": {"cv_folds": 1}}, "-H", AUTH)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "config.cv_folds" in bad.stderr

    # start, and watch the stream to its end
    job = ok(trainer, f"{TS}/StartTraining", config, "-H", AUTH)
    assert job["status"] == "JOB_STATUS_QUEUED"
    started = time.monotonic()
    watched = grpcurl(trainer, f"{TS}/WatchJob", {"job_id": job["job_id"]}, "-max-time", "280", timeout=300)
    elapsed = time.monotonic() - started
    assert watched.returncode == 0, watched.stderr
    updates = messages(watched.stdout)
    statuses = [u["status"] for u in updates]
    assert statuses[0] == "JOB_STATUS_QUEUED" and statuses[-1] == "JOB_STATUS_SUCCEEDED", updates[-3:]
    assert "JOB_STATUS_RUNNING" in statuses
    percents = [u.get("percent", 0) for u in updates]
    assert percents == sorted(percents) and percents[-1] == 100
    finished = [u["stage"] for u in updates if u.get("kind") == "stage_finished"]
    assert finished[0] == "load and validate" and finished[-1] == "final refit on all data and bundles"
    assert len(finished) == 7
    assert any("success.roc_auc" in u.get("metrics", {}) for u in updates)
    sequences = [int(u["sequence"]) for u in updates]
    assert sequences == sorted(set(sequences))
    print(f"\njob {job['job_id']}: {elapsed:.1f}s from StartTraining to the end of WatchJob, {len(updates)} updates")

    done = ok(trainer, f"{TS}/GetJob", {"job_id": job["job_id"]})
    assert done["status"] == "JOB_STATUS_SUCCEEDED" and set(done["versions"]) == {"success"}
    new = int(done["versions"]["success"])
    assert new != old and served_version(success) == old  # registered, not activated

    # compare on the same evaluation window (same data version and cutoffs)
    cmp = ok(trainer, f"{TS}/CompareModels", {"component": "success", "versions": [new], "include_champion": True,
                                              "require_same_window": True})
    assert [int(m["version"]) for m in cmp["models"]] == [new, old]
    assert cmp["same_window"] is True and "window_differences" not in cmp
    assert cmp["models"][0]["window"]["fingerprint"] == cmp["models"][1]["window"]["fingerprint"]
    auc = next(m for m in cmp["metrics"] if m["metric"] == "roc_auc")
    assert set(auc["values"]) == {str(new), str(old)} and auc["direction"] == 1
    detail = ok(trainer, f"{TS}/GetModel", {"component": "success", "version": new, "include_plot_bytes": True})
    assert {"reliability.png", "roc.png", "pr.png"} <= {p["name"] for p in detail["plots"]}
    assert all(p["png"] for p in detail["plots"]) and detail["feature_importance"]

    # activate: the running success server picks it up; roll back: the old one again
    activated = ok(trainer, f"{TS}/Activate", {"component": "success", "version": new, "reason": "e2e"}, "-H", AUTH)
    assert int(activated["current"]["version"]) == new and int(activated["previous"]["version"]) == old
    pickup = wait_for_version(success, new)
    rolled = ok(trainer, f"{TS}/Rollback", {"component": "success"}, "-H", AUTH)
    assert int(rolled["current"]["version"]) == old
    wait_for_version(success, old)
    print(f"the success server answered with v{new} {pickup:.1f}s after Activate, then v{old} after Rollback")

    jobs = ok(trainer, f"{TS}/ListJobs", {"statuses": ["JOB_STATUS_SUCCEEDED"]})
    assert job["job_id"] in {j["job_id"] for j in jobs["jobs"]}
    status = ok(trainer, f"{TS}/Status", {})
    assert int(status["jobs_by_status"]["SUCCEEDED"]) >= 1
    assert {c["component"]: int(c["version"]) for c in status["champions"]}["success"] == old
