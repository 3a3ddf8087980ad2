"""Configuration of every server: command-line flags, each with an environment twin `PMIS_<NAME>`.

A flag given on the command line wins; otherwise its variable; otherwise the default. An empty
variable means unset (a manifest may leave one empty). Every server (the components, the
gateway, the trainer) builds its parser from these helpers, so a flag common to several of them
is defined once, and its help always names its variable.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from models.lifecycle import thresholds
from services.common import listening


def env(name: str, default=None):
    """PMIS_<name>, or `default` when unset or empty."""
    value = os.environ.get(f"PMIS_{name}")
    return default if value is None or value == "" else value


def flag(p: argparse.ArgumentParser, option: str, env_name: str, default=None, *, help: str = "", **kwargs) -> None:
    """`option`, defaulting to PMIS_<env_name> or `default`. A default read from the environment
    is a string, which argparse converts with the option's `type` as if it had been typed."""
    note = f"env PMIS_{env_name}"
    p.add_argument(option, default=env(env_name, default), help=f"{help} ({note})" if help else note, **kwargs)


def add_listen_flags(p: argparse.ArgumentParser, port: int, metrics_port: int) -> None:
    """Where a server listens and reports its ports: the same flags for every server."""
    flag(p, "--host", "HOST", "127.0.0.1", help="bind address")
    flag(p, "--port", "PORT", port, type=int, help="gRPC port, 0 = any free one")
    flag(p, "--metrics-port", "METRICS_PORT", str(metrics_port), type=listening.metrics_port_arg,
         help="Prometheus port, 0 = off, auto = any free one")
    flag(p, "--ports-file", "PORTS_FILE", type=Path, help='once listening, write {"grpc": PORT, "metrics": PORT} here')


def add_shutdown_flags(p: argparse.ArgumentParser, *, grace: float, max_connection_age_ms: int,
                       drain: bool = True) -> None:
    """How a server stops (drain, then grace for in-flight calls) and how long a client's
    connection lives (clients re-resolve, and new replicas get traffic, at least this often)."""
    flag(p, "--grace", "GRACE_SECONDS", grace, type=float, help="seconds in-flight calls get to finish on stop")
    if drain:
        flag(p, "--drain", "DRAIN_SECONDS", 0.0, type=float,
             help="seconds NOT_SERVING before stopping, so balancers notice")
    flag(p, "--max-connection-age-ms", "MAX_CONNECTION_AGE_MS", max_connection_age_ms, type=int,
         help="clients reconnect at least this often, spreading over replicas")


def add_admission_flags(p: argparse.ArgumentParser, *, max_in_flight: int | None, min_deadline_ms: int,
                        max_in_flight_note: str = "") -> None:
    """Load shedding (services/common/admission.py)."""
    flag(p, "--max-in-flight", "MAX_IN_FLIGHT", max_in_flight, type=int,
         help="calls admitted at once (running or queued); more are refused at once with RESOURCE_EXHAUSTED; "
              "0 = unlimited" + max_in_flight_note)
    flag(p, "--min-deadline-ms", "MIN_DEADLINE_MS", min_deadline_ms, type=int,
         help="refuse (DEADLINE_EXCEEDED), before any work, a call with less time than this left; 0 = off")


def add_trigger_flags(p: argparse.ArgumentParser) -> None:
    """The retraining triggers' thresholds (models/lifecycle/triggers.py): the trainer's
    CheckTriggers and `pmis retrain --if-needed` read the same flags and variables."""
    flag(p, "--min-new-interactions", "RETRAIN_MIN_INTERACTIONS", thresholds.DEFAULT_MIN_NEW_INTERACTIONS, type=int,
         help="retraining trigger: new interactions since the champion's data")
    flag(p, "--min-new-outcomes", "RETRAIN_MIN_OUTCOMES", thresholds.DEFAULT_MIN_NEW_OUTCOMES, type=int,
         help="retraining trigger: new outcomes since the champion's data")
    flag(p, "--max-age-hours", "RETRAIN_MAX_AGE_HOURS", thresholds.DEFAULT_MAX_AGE_HOURS, type=float,
         help="retraining trigger: the champion's age")
