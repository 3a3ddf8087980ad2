"""The entry point of a training job's worker process (multiprocessing, spawn context; started by
services/trainer/runner.py): the servers' structured logging, then the job
(models/lifecycle/running.py `run_in_worker`)."""

from __future__ import annotations

from models.lifecycle.running import run_in_worker
from services.common.logs import setup_logging


def worker_main(db_path: str, job_id: str, bundles_dir: str, runs_dir: str, parent_pid: int) -> None:
    setup_logging("trainer-worker")
    run_in_worker(db_path, job_id, bundles_dir, runs_dir, parent_pid)
