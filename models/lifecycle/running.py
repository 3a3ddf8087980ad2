"""Running one training job: in this process (``run_job``; `pmis retrain` uses it directly) or in
one of the worker processes the trainer service spawns (``run_in_worker``, whose process entry
point is services/trainer/worker.py).

A job trains through models.training.train, reporting progress into the job table
(models/lifecycle/store.py) and registering its versions under the table's guard; it stops as soon
as the table says it is no longer RUNNING. Whatever way it ends, its outcome is recorded and, unless
its versions were registered, what it wrote is removed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from models.lifecycle.config import train_config
from models.lifecycle.schema import ACTIVE
from models.lifecycle.store import JobStopped, JobStore
from models.lifecycle.versions import auto_activate

log = logging.getLogger("pmis.jobs")


def run_job(db_path: Path | str, job_id: str, bundles_dir: Path, runs_dir: Path,
            echo: Callable[[Any], None] | None = None, state: dict | None = None) -> str:
    """Run one queued job (or one this process created already claimed) here; returns its final
    status. ``db_path``: where the job table is (``JobStore.location``: a file or a database URL).

    ``state`` (shared with a watchdog) gets ``finishing=True`` once the outcome is being
    written, and ``run_id`` as soon as it is known.
    """
    state = state if state is not None else {}
    store = JobStore(db_path, bundles=bundles_dir)
    if not _claim(store, job_id):
        return store.status(job_id)
    config = store.get(job_id)["config"]
    try:
        report = _train(store, job_id, config, bundles_dir, runs_dir, echo, state)
        decisions = _activate_if_better(store, job_id, config, report)
        state["finishing"] = True
        _record_success(store, job_id, report, decisions)
        return "SUCCEEDED"
    except JobStopped as e:
        state["finishing"] = True
        _record_stop(store, job_id, e)
    except Exception as e:  # noqa: BLE001 - any failure ends the job with its reason
        state["finishing"] = True
        _record_failure(store, job_id, e)
    _cleanup(store, job_id, bundles_dir, runs_dir)
    return store.status(job_id)


def _claim(store: JobStore, job_id: str) -> bool:
    """Whether this process runs the job: it created it already claimed, or it starts it now
    (False when it is no longer queued: cancelled meanwhile, or another process took it)."""
    mine = (os.getpid(), socket.gethostname())
    claimed = store.get(job_id)
    return (claimed["status"], claimed["pid"], claimed["host"]) == ("RUNNING", *mine) or store.start(job_id, *mine)


def _train(store: JobStore, job_id: str, config: dict, bundles_dir: Path, runs_dir: Path,
           echo: Callable[[Any], None] | None, state: dict) -> dict:
    """The training run itself, reporting into the job table; its report."""
    from models.training.train import Trainer

    cfg = train_config(config, bundles_dir, runs_dir)
    cfg.on_progress = _progress_reporter(store, job_id, echo)
    cfg.register_guard = store.guard(job_id)
    trainer = Trainer(cfg)
    state["run_id"] = trainer.run_id
    store.set_run(job_id, trainer.run_id)
    return trainer.run()


def _progress_reporter(store: JobStore, job_id: str, echo: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """The run's progress callback: records each report; stops the run once the job has been
    ended from outside (the table refuses the report)."""
    def on_progress(p) -> None:
        status = store.progress(job_id, p.kind, p.stage, p.percent, p.message, p.metrics)
        if echo is not None:
            echo(p)
        if status != "RUNNING":
            raise JobStopped(f"job is {status}")

    return on_progress


def _registered_versions(report: dict) -> dict[str, int]:
    return {c: b["version"] for c, b in report["bundles"].items()}


def _activate_if_better(store: JobStore, job_id: str, config: dict, report: dict) -> list[dict]:
    """When the job asks for it: each new version activated if it beats its champion; the decisions."""
    versions = _registered_versions(report)
    if not (config["auto_activate"] and versions):
        return []
    decisions = auto_activate(store.registry, job_id, versions, config["margin"], report.get("evaluation_window"))
    for d in decisions:
        store.note(job_id, f"{d['component']} v{d['version']}: "
                           f"{'activated' if d['activate'] else 'not activated'} ({d['reason']})")
    return decisions


def _record_success(store: JobStore, job_id: str, report: dict, decisions: list[dict]) -> None:
    versions = _registered_versions(report)
    skipped = report.get("success", {}).get("skipped")
    text = ("registered " + ", ".join(f"{c} v{v}" for c, v in versions.items())) if versions else \
        "finished; no bundle was written"
    if skipped:
        text += f"; success predictor skipped: {skipped}"
    store.progress(job_id, "metrics", "done", 100.0, "final metrics", headline_metrics(report))
    store.finish(job_id, "SUCCEEDED", text, run_dir=report.get("run_dir"), activation=decisions)


def _record_stop(store: JobStore, job_id: str, e: JobStopped) -> None:
    # Someone else ended the job (cancel, restart) or we were told to stop (SIGTERM):
    # if it is still marked RUNNING, say so honestly (the caller then removes what the run wrote).
    registered = store.get(job_id)["committed"]
    store.stop(job_id, "FAILED", f"interrupted: {e}" + (" after registering its versions" if registered else ""),
               force=True)


def _record_failure(store: JobStore, job_id: str, e: Exception) -> None:
    """The job FAILED with its reason: a data problem as the contract words it, anything else
    with its type (and logged with its traceback)."""
    from models.data.contract import DataError

    if isinstance(e, DataError):
        text = str(e)
    else:
        log.exception("job %s failed", job_id, exc_info=e)
        text = f"{type(e).__name__}: {e}"
    if not store.finish(job_id, "FAILED", text.splitlines()[0][:500], error=text[:4000]):
        store.stop(job_id, "FAILED", text[:500], force=True)


def headline_metrics(report: dict) -> dict[str, float]:
    """The few numbers a job shows for its run: ranking quality at 10, the success predictor's scores."""
    k = 10
    out: dict[str, float] = {}
    for name, block in report.get("ranking", {}).items():
        if isinstance(block, dict) and f"ndcg@{k}" in block:
            out[f"{name}.ndcg@{k}"] = float(block[f"ndcg@{k}"])
            out[f"{name}.recall@{k}"] = float(block[f"recall@{k}"])
    for m in ("roc_auc", "pr_auc", "ece", "log_loss", "brier"):
        if m in report.get("success", {}):
            out[f"success.{m}"] = float(report["success"][m])
    return out


def _cleanup(store: JobStore, job_id: str, bundles_dir: Path, runs_dir: Path) -> None:
    job = store.get(job_id)
    if job["committed"]:
        return  # its versions are registered and complete; nothing is partial
    removed = store.cleanup(job, bundles_dir, runs_dir)
    if removed:
        store.note(job_id, f"removed {len(removed)} unregistered folder(s) the job wrote")


# --------------------------------------------------------------------------- worker processes


def run_in_worker(db_path: str, job_id: str, bundles_dir: str, runs_dir: str, parent_pid: int) -> None:
    """A job in its own worker process (multiprocessing, spawn context; the process's entry point,
    with the servers' logging, is services/trainer/worker.py).

    Own process group (the trainer signals the group, so nothing the job started survives a
    cancel); SIGTERM stops the job between two Python steps; a watchdog thread stops it too
    when the job is ended from outside (cancelled through another trainer, failed by a restart)
    or when the trainer that started it is gone — and exits hard if a stop does not land.
    """
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer decides; a terminal's Ctrl-C goes to it
    # The heavy imports first: until the handler below is installed, SIGTERM simply ends the
    # process, which is right while it has done nothing yet.
    for module in ("models.data.contract", "models.training.train"):
        importlib.import_module(module)

    state: dict = {"stopping": False, "finishing": False}

    def on_term(signum, frame):
        if state["stopping"] or state["finishing"]:
            return
        state["stopping"] = True
        raise JobStopped("stopped by signal")

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=_watchdog, args=(db_path, job_id, parent_pid, state, Path(bundles_dir)),
                     daemon=True, name="job-watchdog").start()
    try:
        run_job(db_path, job_id, Path(bundles_dir), Path(runs_dir), state=state)
    except JobStopped:
        pass  # stopped before the job's own handling began; whoever stopped it recorded why


def _watchdog(db_path: Path | str, job_id: str, parent_pid: int, state: dict, bundles_dir: Path,
              every: float = 0.5, grace: float = 5.0) -> None:
    store = JobStore(db_path, bundles=bundles_dir)
    started = time.time()
    while not state["finishing"]:
        time.sleep(every)
        try:
            status = store.status(job_id)
        except Exception:  # noqa: BLE001 - a transient read error is not a reason to stop
            continue
        orphaned = os.getppid() != parent_pid
        if orphaned and status in ACTIVE:
            store.stop(job_id, "FAILED", "interrupted: the trainer that ran the job exited")
            status = "FAILED"
        if status in ACTIVE or state["finishing"]:
            continue
        os.kill(os.getpid(), signal.SIGTERM)  # unwinds the job in the main thread (cleans up)
        deadline = time.time() + grace
        while time.time() < deadline and not state["finishing"]:
            time.sleep(0.1)
        if not state["finishing"]:  # stuck in native code: clean up from here and leave now
            try:
                job = store.get(job_id)
                if not job["committed"]:
                    store.cleanup(job, bundles_dir, tmp_since=started)
            finally:
                os._exit(3)
        return
