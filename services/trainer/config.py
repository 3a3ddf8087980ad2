"""The trainer service's configuration: its command line, with environment defaults (PMIS_*).

Used by the server (services/trainer/server.py), the job runner and the servicer.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from models.lifecycle import triggers
from services.common import tls
from services.common.server import ServerConfig, add_listen_args, env


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
        return self.bundles / "registry.db"


def parse_config(argv=None) -> TrainerConfig:
    p = argparse.ArgumentParser(prog="pmis-trainer", description="PMIS trainer gRPC server (model lifecycle)")
    add_listen_args(p, 50055, 9105)
    p.add_argument("--bundles", type=Path, default=Path(env("BUNDLES", "var/bundles")),
                   help="bundle root holding registry.db, where jobs and versions are recorded (env PMIS_BUNDLES)")
    p.add_argument("--runs", type=Path, default=Path(env("RUNS", "var/runs")),
                   help="where run reports and plots go (env PMIS_RUNS)")
    p.add_argument("--data", type=Path, default=Path(env("DATA", "var/data")),
                   help="default data source (env PMIS_DATA)")
    p.add_argument("--data-roots", default=env("DATA_ROOTS", ""),
                   help=f"'{os.pathsep}'-separated folders data sources must be inside (env PMIS_DATA_ROOTS; "
                        "default: the folder holding --data)")
    p.add_argument("--max-jobs", type=int, default=int(env("MAX_JOBS", 1)), help="jobs running at once (env PMIS_MAX_JOBS)")
    p.add_argument("--kill-after", type=float, default=float(env("CANCEL_GRACE_SECONDS", 3)),
                   help="seconds a cancelled worker gets after SIGTERM before SIGKILL (env PMIS_CANCEL_GRACE_SECONDS)")
    p.add_argument("--poll", type=float, default=float(env("WATCH_POLL_SECONDS", 0.25)),
                   help="WatchJob's poll of the job table (env PMIS_WATCH_POLL_SECONDS)")
    p.add_argument("--min-new-interactions", type=int, default=int(env("RETRAIN_MIN_INTERACTIONS",
                                                                      triggers.DEFAULT_MIN_NEW_INTERACTIONS)))
    p.add_argument("--min-new-outcomes", type=int, default=int(env("RETRAIN_MIN_OUTCOMES",
                                                                  triggers.DEFAULT_MIN_NEW_OUTCOMES)))
    p.add_argument("--max-age-hours", type=float, default=float(env("RETRAIN_MAX_AGE_HOURS",
                                                                   triggers.DEFAULT_MAX_AGE_HOURS)))
    p.add_argument("--grace", type=float, default=float(env("GRACE_SECONDS", 5)), help="stop grace for in-flight calls")
    p.add_argument("--drain", type=float, default=float(env("DRAIN_SECONDS", 0)),
                   help="seconds NOT_SERVING before stopping (env PMIS_DRAIN_SECONDS)")
    p.add_argument("--workers", type=int, default=int(env("WORKERS", 16)),
                   help="RPC threads; every open WatchJob stream holds one")
    p.add_argument("--max-connection-age-ms", type=int, default=int(env("MAX_CONNECTION_AGE_MS", 600_000)))
    a = p.parse_args(argv)
    if a.max_jobs < 1:
        p.error("--max-jobs must be at least 1")
    roots = [Path(r) for r in a.data_roots.split(os.pathsep) if r] or [Path(a.data).resolve().parent]
    server = ServerConfig("trainer", a.host, a.port, a.metrics_port, a.bundles, "", None, None, a.grace, a.drain,
                          a.workers, a.max_connection_age_ms, ports_file=a.ports_file, tls=tls.server_tls(a, p))
    return TrainerConfig(server, a.data, a.runs, roots, a.max_jobs, a.kill_after, a.poll, a.min_new_interactions,
                         a.min_new_outcomes, a.max_age_hours)
