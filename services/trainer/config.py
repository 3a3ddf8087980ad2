"""The trainer service's configuration: its command line, with environment defaults (PMIS_*).

Used by the server (services/trainer/server.py), the job runner and the servicer.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from services.common import tls
from services.common.config import add_listen_flags, add_shutdown_flags, add_trigger_flags, flag
from services.common.server import ServerConfig


@dataclass
class TrainerConfig:
    server: ServerConfig
    data: Path
    runs: Path
    data_roots: list[Path]
    max_jobs: int
    kill_after: float
    poll: float
    min_new_interactions: int
    min_new_outcomes: int
    max_age_hours: float

    @property
    def bundles(self) -> Path:
        return Path(self.server.bundles)

    @property
    def db(self) -> Path:
        """The SQLite job table; the trainer opens ``open_job_store(bundles)``, which is PostgreSQL instead
        when PMIS_DATABASE_URL names one."""
        return self.bundles / "registry.db"


def parse_config(argv=None) -> TrainerConfig:
    p = argparse.ArgumentParser(prog="pmis-trainer", description="PMIS trainer gRPC server (model lifecycle)")
    add_listen_flags(p, 50055, 9105)
    tls.add_server_args(p)
    flag(p, "--bundles", "BUNDLES", "var/bundles", type=Path,
         help="bundle root holding registry.db, where jobs and versions are recorded")
    flag(p, "--runs", "RUNS", "var/runs", type=Path, help="where run reports and plots go")
    flag(p, "--data", "DATA", "var/data", type=Path, help="default data source")
    flag(p, "--data-roots", "DATA_ROOTS", "",
         help=f"'{os.pathsep}'-separated folders data sources must be inside; default: the folder holding --data")
    flag(p, "--max-jobs", "MAX_JOBS", 1, type=int, help="jobs running at once")
    flag(p, "--kill-after", "CANCEL_GRACE_SECONDS", 3.0, type=float,
         help="seconds a cancelled worker gets after SIGTERM before SIGKILL")
    flag(p, "--poll", "WATCH_POLL_SECONDS", 0.25, type=float, help="WatchJob's poll of the job table")
    add_trigger_flags(p)
    add_shutdown_flags(p, grace=5.0, max_connection_age_ms=600_000)
    flag(p, "--workers", "WORKERS", 16, type=int, help="RPC threads; every open WatchJob stream holds one")
    a = p.parse_args(argv)
    if a.max_jobs < 1:
        p.error("--max-jobs must be at least 1")
    roots = [Path(r) for r in a.data_roots.split(os.pathsep) if r] or [Path(a.data).resolve().parent]
    server = ServerConfig("trainer", a.host, a.port, a.metrics_port, a.bundles, "", None, None, a.grace, a.drain,
                          a.workers, a.max_connection_age_ms, ports_file=a.ports_file, tls=tls.server_tls(a, p))
    return TrainerConfig(server, a.data, a.runs, roots, a.max_jobs, a.kill_after, a.poll, a.min_new_interactions,
                         a.min_new_outcomes, a.max_age_hours)
