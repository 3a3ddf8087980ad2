"""End to end, through grpcurl alone, as an operator would: start a training job, watch its progress
stream to the end, compare the new version with the champion, activate it, see a running component
server answer ModelInfo with the new version, roll back, see the old one again.

The trainer and the success component server run as real processes on loopback; the success
server follows the registry's champion alias (PMIS_WATCH_SECONDS=0.5).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.grpcurl import GRPCURL, grpcurl, messages, ok
from tests.support.waiting import wait_until
from tests.support.processes import await_server, launch_server, stop_process
from tests.support.trainer import TOKEN, TRAINER, copy_system

AUTH = f"authorization: Bearer {TOKEN}"
TS = TRAINER
SUCCESS = "pmis.v1.SuccessService"


@pytest.fixture(scope="module")
def lifecycle(tiny_system, tmp_path_factory):
    """The trainer and a success server following the champion alias, as processes on ports they
    bind and report, on this module's own copy of the tiny system."""
    system = copy_system(tiny_system, tmp_path_factory.mktemp("trainer-e2e"))
    root, env = system.root, {"PMIS_ADMIN_TOKEN": TOKEN}
    procs = {}
    try:
        procs["trainer"] = launch_server("services.trainer.server", [
            "--bundles", str(system.bundles), "--runs", str(system.runs), "--data", str(system.data),
            "--data-roots", str(tiny_system.root)], root / "trainer.ports", root / "trainer.log", env)
        procs["success"] = launch_server("services.success.server", ["--bundles", str(system.bundles),
                                                                     "--watch", "0.5"],
                                         root / "success.ports", root / "success.log", env)
        yield {"trainer": await_server(procs["trainer"], TS, root / "trainer.ports"),
               "success": await_server(procs["success"], SUCCESS, root / "success.ports")}
    finally:
        for proc in procs.values():  # both told at once, then each waited for (killed if it hangs)
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            stop_process(proc, 20)


def served_version(target: str) -> int:
    return int(ok(target, f"{SUCCESS}/ModelInfo", {})["version"])


def wait_for_version(target: str, version: int, timeout: float = 60.0) -> float:
    """Seconds until the success server answers with `version`."""
    start = time.monotonic()
    wait_until(lambda: served_version(target) == version, timeout, f"the success server serving v{version}",
               interval=0.1)
    return time.monotonic() - start


def test_model_lifecycle_through_grpcurl(lifecycle):
    trainer, success = lifecycle["trainer"], lifecycle["success"]
    assert Path(GRPCURL).exists()
    listed = grpcurl(trainer, "list")
    assert listed.returncode == 0 and TS in listed.stdout.split()
    described = grpcurl(trainer, f"describe {TS}", timeout=30)
    assert described.returncode == 0, described.stderr
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
