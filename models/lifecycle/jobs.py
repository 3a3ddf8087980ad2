"""Training jobs: their table in the registry database, their configuration, and how one runs.

The job table lives in the same SQLite file as the model registry (``registry.db`` under the
bundles root). That is what makes the lifecycle honest:

- a job registers its versions in ONE registry transaction at its very end; the same
  transaction checks that the job is still RUNNING and marks it ``committed``. A cancel is a
  transaction too, so the two serialise: either the cancel wins (registration is refused and
  nothing is registered) or the registration wins (the cancel is refused: too late);
- a trainer that restarts finds the jobs that were RUNNING and marks them FAILED
  ("interrupted: trainer restarted"); a worker left over from the dead trainer cannot register
  anything afterwards, because its job is no longer RUNNING, and it stops itself;
- progress is written by the worker as rows of ``job_events``; watchers read them, from any
  process, live or after the fact.

``run_job`` runs one job in the current process (the CLI uses it directly); ``run_in_worker`` runs
one in the worker processes the trainer service spawns (services/trainer/worker.py).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from models.bundle.format import MANIFEST
from models.components import COMPONENTS
from models.bundle.registry import Registry, RegistryError

log = logging.getLogger("pmis.jobs")

STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE = ("QUEUED", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
RESTART_MESSAGE = "interrupted: trainer restarted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT    NOT NULL UNIQUE,
    status       TEXT    NOT NULL CHECK (status IN ('QUEUED','RUNNING','SUCCEEDED','FAILED','CANCELLED')),
    config       TEXT    NOT NULL,              -- JSON, validated and normalised
    source       TEXT    NOT NULL DEFAULT 'api',
    reason       TEXT    NOT NULL DEFAULT '',   -- why it was started
    created_at   TEXT    NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    stage        TEXT    NOT NULL DEFAULT '',
    percent      REAL    NOT NULL DEFAULT 0,
    message      TEXT    NOT NULL DEFAULT '',
    error        TEXT    NOT NULL DEFAULT '',
    run_id       TEXT,
    run_dir      TEXT,
    pid          INTEGER,
    host         TEXT,
    committed    INTEGER NOT NULL DEFAULT 0,    -- its versions are registered: no cancel any more
    versions     TEXT    NOT NULL DEFAULT '{}', -- component -> version registered
    metrics      TEXT    NOT NULL DEFAULT '{}', -- latest metrics reported
    activation   TEXT    NOT NULL DEFAULT '[]'  -- auto-activation decisions
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS job_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT    NOT NULL,
    at       TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    stage    TEXT    NOT NULL DEFAULT '',
    percent  REAL    NOT NULL DEFAULT 0,
    message  TEXT    NOT NULL DEFAULT '',
    metrics  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS trigger_checks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    checked_at   TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    data_source  TEXT    NOT NULL,
    should_train INTEGER NOT NULL,
    reasons      TEXT    NOT NULL,              -- JSON list
    details      TEXT    NOT NULL,              -- JSON: counts, ages, thresholds
    job_id       TEXT
);
"""


class JobError(Exception):
    """A job operation that cannot be done (unknown job, wrong state)."""


class JobNotFound(JobError):
    pass


class JobStopped(BaseException):
    """Raised inside a running job to stop it (cancelled, trainer gone, SIGTERM).

    A BaseException so that no ``except Exception`` on the way (libraries, our own error
    handling) can swallow a cancellation.
    """


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _new_job_id() -> str:
    return "job-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The keyset position in a page token; ValueError for anything that is not one of ours."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    kind, _, value = raw.partition(":")
    if kind != "after" or not value.isdigit():
        raise ValueError("not a page token")
    return int(value)


# --------------------------------------------------------------------------- configuration

DEFAULTS = {"search_budget": 4, "cv_folds": 3, "valid_fraction": 0.15, "test_fraction": 0.15, "margin": 0.0,
            "seed": 0, "max_eval_students": 20_000}


def _check_choices(v: list[tuple[str, str]], field: str, values: list, allowed, noun: str) -> None:
    """A violation per value that is unknown or repeated, at its index (`field[i]`)."""
    for i, x in enumerate(values):
        if x not in allowed:
            v.append((f"{field}[{i}]", f"unknown {noun} {x!r}; choose from {', '.join(allowed)}"))
        elif x in values[:i]:
            v.append((f"{field}[{i}]", f"{x!r} is listed twice"))


MAX_COLLAB_TRIALS = 200


def collab_trials_problem(trials: int) -> str | None:
    """Why a collaborative search budget is refused (the CLI's flag and StartTraining alike)."""
    return None if 1 <= trials <= MAX_COLLAB_TRIALS else f"must be in 1..{MAX_COLLAB_TRIALS}, got {trials}"


def normalise_config(raw: dict, default_data: Path, data_roots: list[Path]) -> tuple[dict, list[tuple[str, str]]]:
    """Validate a training configuration; returns (normalised config, field violations).

    ``raw`` mirrors the TrainingConfig message (nested ``success``, ``split``,
    ``auto_activation``); zero/empty values mean "default". Violation paths are relative to
    the config (``components[1]``, ``split.valid_fraction`` ...).
    """
    from models.components.success import ALGORITHMS

    v: list[tuple[str, str]] = []
    components = list(raw.get("components") or [])
    _check_choices(v, "components", components, COMPONENTS, "component")
    explicit_components = bool(components)
    components = [c for c in COMPONENTS if c in components] if components else list(COMPONENTS)

    data = str(raw.get("data_source") or "").strip()
    data_path = Path(data) if data else Path(default_data)
    if len(data) > 1024:
        v.append(("data_source", "must be at most 1024 characters"))
    else:
        resolved = data_path.resolve()
        roots = [Path(r).resolve() for r in data_roots]
        if not any(resolved == r or r in resolved.parents for r in roots):
            v.append(("data_source", f"must be inside one of the trainer's data roots: "
                                     f"{', '.join(str(r) for r in roots)}"))
        elif not resolved.exists():
            v.append(("data_source", f"{resolved} does not exist"))
        elif not resolved.is_dir():
            v.append(("data_source", f"{resolved} is not a folder"))
        elif not any((resolved / f"students.{ext}").exists() for ext in ("parquet", "csv")):
            v.append(("data_source", f"{resolved} holds no students table (students.parquet or students.csv)"))
        elif (explicit_components and "success" in components
              and not any((resolved / f"outcomes.{ext}").exists() for ext in ("parquet", "csv"))):
            v.append(("components", "success needs an outcomes table in the data source, which has none"))
        data_path = resolved

    success = raw.get("success") or {}
    algorithms = list(success.get("algorithms") or [])
    _check_choices(v, "success.algorithms", algorithms, ALGORITHMS, "algorithm")
    budget = int(success.get("search_budget") or 0) or DEFAULTS["search_budget"]
    if not 1 <= budget <= 50:
        v.append(("success.search_budget", f"must be in 1..50, got {budget}"))

    collab_trials = int((raw.get("collaborative") or {}).get("trials") or 0) or None  # None: scaled to the data
    if collab_trials is not None and (problem := collab_trials_problem(collab_trials)):
        v.append(("collaborative.trials", problem))

    folds = int(raw.get("cv_folds") or 0) or DEFAULTS["cv_folds"]
    if not 3 <= folds <= 10:
        v.append(("cv_folds", f"must be in 3..10, got {folds}"))

    split = raw.get("split") or {}
    vf, tf = float(split.get("valid_fraction") or 0), float(split.get("test_fraction") or 0)
    train_until, valid_until = split.get("train_until"), split.get("valid_until")
    if (train_until is not None or valid_until is not None) and (vf or tf):
        v.append(("split", "set either the fractions or the cutoffs, not both"))
    random_split = bool(split.get("random"))
    if random_split and (train_until is not None or valid_until is not None):
        v.append(("split.random", "a random split takes the fractions, not cutoffs"))
    if (train_until is None) != (valid_until is None):
        missing = "valid_until" if valid_until is None else "train_until"
        v.append((f"split.{missing}", "required when the other cutoff is set"))
    elif train_until is not None and int(train_until) >= int(valid_until):
        v.append(("split.valid_until", "must be later than split.train_until"))
    vf = vf or DEFAULTS["valid_fraction"]
    tf = tf or DEFAULTS["test_fraction"]
    for name, value in (("valid_fraction", vf), ("test_fraction", tf)):
        if not (math.isfinite(value) and 0.05 <= value <= 0.4):
            v.append((f"split.{name}", f"must be in 0.05..0.4, got {value}"))
    if math.isfinite(vf + tf) and vf + tf > 0.6:
        v.append(("split", f"valid_fraction + test_fraction must be at most 0.6, got {vf + tf:.2f}"))

    auto = raw.get("auto_activation") or {}
    margin = float(auto.get("margin") or 0.0)
    if not (math.isfinite(margin) and 0.0 <= margin <= 1.0):
        v.append(("auto_activation.margin", f"must be in 0..1, got {margin}"))

    seed = int(raw.get("seed") or 0)
    if seed < 0:
        v.append(("seed", "must be >= 0"))
    max_eval = int(raw.get("max_eval_students") or 0) or DEFAULTS["max_eval_students"]
    if not 100 <= max_eval <= 1_000_000:
        v.append(("max_eval_students", f"must be in 100..1000000, got {max_eval}"))
    description = str(raw.get("description") or "")
    if len(description) > 200:
        v.append(("description", "must be at most 200 characters"))

    config = {"components": components, "data_source": str(data_path), "success_algorithms": algorithms,
              "search_budget": budget, "collab_trials": collab_trials, "cv_folds": folds, "valid_fraction": vf, "test_fraction": tf,
              "train_until": None if train_until is None else int(train_until),
              "valid_until": None if valid_until is None else int(valid_until), "split_random": random_split,
              "auto_activate": bool(auto.get("enabled")), "margin": margin, "seed": seed,
              "max_eval_students": max_eval, "description": description}
    return config, v


def train_config(config: dict, bundles_dir: Path, runs_dir: Path):
    """The models.training.train.TrainConfig of a normalised job configuration."""
    from models.training.train import TrainConfig

    split = {"valid_fraction": config["valid_fraction"], "test_fraction": config["test_fraction"]}
    if config.get("train_until") is not None:
        split = {"train_until": config["train_until"], "valid_until": config["valid_until"]}
    elif config.get("split_random"):
        split["split"] = "random"
    return TrainConfig(data_dir=Path(config["data_source"]), bundles_dir=Path(bundles_dir), runs_dir=Path(runs_dir),
                       seed=config["seed"], cv_folds=config["cv_folds"], search_budget=config["search_budget"],
                       collab_trials=config.get("collab_trials"),
                       max_eval_students=config["max_eval_students"], activate=False, progress=False,
                       components=tuple(config["components"]),
                       success_algorithms=tuple(config["success_algorithms"]) or None, **split)


# --------------------------------------------------------------------------- the store


class JobStore:
    """The jobs, their events and the trigger log, in ``registry.db``.

    Like the registry, every call opens a short-lived connection, so one store can be shared
    by threads and several processes (server, workers, CLI) use the file at once.
    """

    def __init__(self, db_path: Path) -> None:
        self.registry = Registry(db_path)  # creates/validates the registry schema first
        self.db_path = self.registry.db_path
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            con.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")  # idempotent
        finally:
            con.close()

    def _tx(self, immediate: bool = False):
        """The registry's own short-lived connection and transaction (same file, same rules)."""
        return self.registry._transaction(immediate)

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _job(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for key in ("config", "versions", "metrics", "activation"):
            out[key] = json.loads(out[key])
        out["committed"] = bool(out["committed"])
        return out

    def _get(self, con: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = con.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return self._job(row)

    def _event(self, con, job_id: str, kind: str, status: str, stage: str = "", percent: float = 0.0,
               message: str = "", metrics: dict | None = None) -> None:
        con.execute("INSERT INTO job_events (job_id, at, kind, status, stage, percent, message, metrics)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, utc_now_iso(), kind, status, stage, percent, message,
                     json.dumps(metrics or {}, sort_keys=True)))

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> dict[str, Any]:
        with self._tx() as con:
            return self._get(con, job_id)

    def list(self, statuses: list[str] | None = None, page_size: int = 20,
             after: int | None = None) -> tuple[list[dict], int | None]:
        """Newest first; returns (jobs, the keyset position of the next page or None)."""
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if after is not None:
            where.append("seq < ?")
            args.append(after)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._tx() as con:
            rows = con.execute(sql, (*args, page_size + 1)).fetchall()
        jobs = [self._job(r) for r in rows[:page_size]]
        return jobs, (jobs[-1]["seq"] if len(rows) > page_size else None)

    def queued(self, limit: int) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM jobs WHERE status = 'QUEUED' ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._tx() as con:
            rows = con.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in rows}

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM job_events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                               (job_id, after, limit)).fetchall()
        out = []
        for r in rows:
            e = dict(r)
            e["metrics"] = json.loads(e["metrics"])
            out.append(e)
        return out

    # ------------------------------------------------------------------ transitions

    def create(self, config: dict, source: str = "api", reason: str = "",
               claimed_by: tuple[int, str] | None = None) -> dict:
        """A QUEUED job; with `claimed_by` (pid, host) already RUNNING in that process, in the
        same transaction, so that no trainer ever sees it queued and starts it too."""
        job_id = _new_job_id()
        with self._tx(immediate=True) as con:
            con.execute("INSERT INTO jobs (job_id, status, config, source, reason, created_at, message)"
                        " VALUES (?, 'QUEUED', ?, ?, ?, ?, 'queued')",
                        (job_id, json.dumps(config, sort_keys=True), source, reason, utc_now_iso()))
            self._event(con, job_id, "status", "QUEUED", message="queued" + (f": {reason}" if reason else ""))
            if claimed_by is not None:
                self._start(con, job_id, *claimed_by)
            return self._get(con, job_id)

    def start(self, job_id: str, pid: int, host: str) -> bool:
        """QUEUED -> RUNNING; False when the job is no longer queued (cancelled meanwhile)."""
        with self._tx(immediate=True) as con:
            job = self._get(con, job_id)
            if job["status"] != "QUEUED":
                return False
            self._start(con, job_id, pid, host)
            return True

    def _start(self, con, job_id: str, pid: int, host: str) -> None:
        con.execute("UPDATE jobs SET status = 'RUNNING', started_at = ?, pid = ?, host = ?, message = ?"
                    " WHERE job_id = ?", (utc_now_iso(), pid, host, f"started in process {pid}", job_id))
        self._event(con, job_id, "status", "RUNNING", message=f"started in process {pid} on {host}")

    def set_run(self, job_id: str, run_id: str) -> None:
        with self._tx(immediate=True) as con:
            con.execute("UPDATE jobs SET run_id = ? WHERE job_id = ?", (run_id, job_id))

    def progress(self, job_id: str, kind: str, stage: str, percent: float, message: str = "",
                 metrics: dict | None = None) -> str:
        """Record one progress report of a RUNNING job; returns the job's status (a job that is
        no longer RUNNING records nothing: the caller stops)."""
        with self._tx(immediate=True) as con:
            job = self._get(con, job_id)
            if job["status"] != "RUNNING":
                return job["status"]
            merged = {**job["metrics"], **(metrics or {})}
            con.execute("UPDATE jobs SET stage = ?, percent = MAX(percent, ?), message = ?, metrics = ?"
                        " WHERE job_id = ?", (stage, percent, message, json.dumps(merged, sort_keys=True), job_id))
            self._event(con, job_id, kind, "RUNNING", stage, max(percent, job["percent"]), message, metrics)
            return "RUNNING"

    def status(self, job_id: str) -> str:
        with self._tx() as con:
            row = con.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return row["status"]

    def finish(self, job_id: str, status: str, message: str, error: str = "", run_dir: str | None = None,
               activation: list | None = None) -> bool:
        """RUNNING -> a terminal status; False if the job had already ended (cancelled...)."""
        assert status in TERMINAL
        with self._tx(immediate=True) as con:
            job = self._get(con, job_id)
            if job["status"] not in ACTIVE:
                return False
            percent = 100.0 if status == "SUCCEEDED" else job["percent"]
            con.execute("UPDATE jobs SET status = ?, finished_at = ?, message = ?, error = ?, percent = ?,"
                        " run_dir = COALESCE(?, run_dir), activation = ? WHERE job_id = ?",
                        (status, utc_now_iso(), message, error, percent, run_dir,
                         json.dumps(activation if activation is not None else job["activation"]), job_id))
            self._event(con, job_id, "status", status, job["stage"], percent, message)
            return True

    def stop(self, job_id: str, status: str, message: str, force: bool = False) -> tuple[bool, dict]:
        """End an active job from outside (cancel, shutdown, restart, dead worker).

        Refused (False) when the job has already ended, or — unless ``force`` — when it has
        registered its versions (``committed``): past that point a cancel would lie.
        """
        assert status in ("FAILED", "CANCELLED")
        with self._tx(immediate=True) as con:
            job = self._get(con, job_id)
            if job["status"] not in ACTIVE or (job["committed"] and not force):
                return False, job
            con.execute("UPDATE jobs SET status = ?, finished_at = ?, message = ?, error = ? WHERE job_id = ?",
                        (status, utc_now_iso(), message, message if status == "FAILED" else "", job_id))
            self._event(con, job_id, "status", status, job["stage"], job["percent"], message)
            return True, self._get(con, job_id)

    def recover(self, message: str = RESTART_MESSAGE) -> list[str]:
        """At trainer start: every job still RUNNING was interrupted; mark it FAILED. (QUEUED jobs
        never started; they stay queued and the new trainer runs them.)"""
        with self._tx(immediate=True) as con:
            rows = con.execute("SELECT job_id, status, committed, stage, percent FROM jobs"
                               " WHERE status = 'RUNNING'").fetchall()
            for r in rows:
                text = message
                if r["committed"]:
                    text += " after the job had registered its versions"
                else:
                    text += f" during '{r['stage']}' at {r['percent']:.0f}%"
                con.execute("UPDATE jobs SET status = 'FAILED', finished_at = ?, message = ?, error = ?"
                            " WHERE job_id = ?", (utc_now_iso(), text, text, r["job_id"]))
                self._event(con, r["job_id"], "status", "FAILED", r["stage"], r["percent"], text)
        return [r["job_id"] for r in rows]

    def note(self, job_id: str, message: str) -> None:
        """An event for a job whatever its status (e.g. cleanup after a cancel)."""
        with self._tx(immediate=True) as con:
            job = self._get(con, job_id)
            self._event(con, job_id, "message", job["status"], job["stage"], job["percent"], message)

    def guard(self, job_id: str) -> Callable[[sqlite3.Connection, list], None]:
        """The registration guard: runs inside the registry's write transaction."""
        def check(con: sqlite3.Connection, refs: list) -> None:
            row = con.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or row[0] != "RUNNING":
                raise JobStopped(f"job {job_id} is {row[0] if row else 'gone'}: its versions are not registered")
            versions = {r.component: r.version for r in refs}
            text = "registered " + ", ".join(f"{c} v{v}" for c, v in versions.items())
            con.execute("UPDATE jobs SET committed = 1, versions = ?, message = ? WHERE job_id = ?",
                        (json.dumps(versions, sort_keys=True), text, job_id))
        return check

    def set_activation(self, job_id: str, decisions: list[dict]) -> None:
        with self._tx(immediate=True) as con:
            con.execute("UPDATE jobs SET activation = ? WHERE job_id = ?", (json.dumps(decisions), job_id))

    # ------------------------------------------------------------------ trigger log

    def record_trigger(self, source: str, data_source: str, should_train: bool, reasons: list[str],
                       details: dict, job_id: str | None = None) -> int:
        with self._tx(immediate=True) as con:
            cur = con.execute("INSERT INTO trigger_checks (checked_at, source, data_source, should_train, reasons,"
                              " details, job_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (utc_now_iso(), source, data_source, int(should_train), json.dumps(reasons),
                               json.dumps(details, default=str), job_id))
            return int(cur.lastrowid)

    def link_trigger(self, check_id: int, job_id: str) -> None:
        with self._tx(immediate=True) as con:
            con.execute("UPDATE trigger_checks SET job_id = ? WHERE id = ?", (job_id, check_id))

    def triggers(self, limit: int = 20) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM trigger_checks ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["reasons"], d["details"] = json.loads(d["reasons"]), json.loads(d["details"])
            d["should_train"] = bool(d["should_train"])
            out.append(d)
        return out

    # ------------------------------------------------------------------ leftovers

    def cleanup(self, job: dict, bundles_dir: Path, runs_dir: Path | None = None,
                tmp_since: float | None = None) -> list[str]:
        """Delete what a job that did not finish wrote: bundle folders of its run that are not
        registered, its run report folder and — when ``tmp_since`` is given (only when no other
        writer can be at work) — half-written ``.tmp-*`` bundle folders created since then."""
        removed: list[str] = []
        run_id = job.get("run_id")
        registered: set[tuple[str, int]] = set()
        with self._tx() as con:
            for r in con.execute("SELECT component, version FROM versions WHERE run_id = ?", (run_id or "",)):
                registered.add((r["component"], int(r["version"])))
        root = Path(bundles_dir)
        for component_dir in (root.iterdir() if root.exists() else []):
            if not component_dir.is_dir() or component_dir.name.startswith("."):
                continue
            for folder in component_dir.iterdir():
                if folder.name.startswith(".tmp-"):
                    if tmp_since is not None and folder.stat().st_mtime >= tmp_since - 1:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed.append(str(folder))
                    continue
                if not run_id or not folder.name.isdigit():
                    continue
                try:
                    manifest = json.loads((folder / MANIFEST).read_text())
                except (OSError, ValueError):
                    continue
                if manifest.get("run_id") == run_id and (component_dir.name, int(folder.name)) not in registered:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(str(folder))
        if run_id and runs_dir is not None and not registered:
            run_dir = Path(runs_dir) / run_id
            if run_dir.exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(str(run_dir))
        return removed


# --------------------------------------------------------------------------- running a job


def headline_metrics(report: dict) -> dict[str, float]:
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


def auto_activate(registry: Registry, job_id: str, versions: dict[str, int], margin: float,
                  window: dict | None) -> list[dict]:
    """Per component: activate the new version if it beats the champion by ``margin`` on the
    same evaluation window (models.training.diagnostics.decide_activation); every decision is returned."""
    from models.training.diagnostics import decide_activation

    decisions = []
    for component, version in versions.items():
        new = registry.get(component, version)
        try:
            champion = registry.resolve(component, "champion")
        except RegistryError:
            champion = None
        champion_window = manifest_of(champion["path"]).get("metadata", {}).get("evaluation_window") if champion else None
        d = decide_activation(component, version, new["metrics"], window, champion, champion_window, margin)
        if d["activate"]:
            registry.set_alias(component, version, "champion", reason=f"auto-activated by job {job_id}: {d['reason']}")
        decisions.append(d)
    return decisions


def manifest_of(path: Path | str) -> dict:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_job(db_path: Path, job_id: str, bundles_dir: Path, runs_dir: Path,
            echo: Callable[[Any], None] | None = None, state: dict | None = None) -> str:
    """Run one queued job (or one this process created already claimed) here; returns its final
    status.

    ``state`` (shared with a watchdog) gets ``finishing=True`` once the outcome is being
    written, and ``run_id`` as soon as it is known.
    """
    from models.data.contract import DataError
    from models.training.train import Trainer

    state = state if state is not None else {}
    store = JobStore(db_path)
    mine = (os.getpid(), socket.gethostname())
    claimed = store.get(job_id)
    if (claimed["status"], claimed["pid"], claimed["host"]) != ("RUNNING", *mine) and not store.start(job_id, *mine):
        return store.status(job_id)
    job = store.get(job_id)
    config = job["config"]
    trainer = None
    try:
        cfg = train_config(config, bundles_dir, runs_dir)

        def on_progress(p) -> None:
            status = store.progress(job_id, p.kind, p.stage, p.percent, p.message, p.metrics)
            if echo is not None:
                echo(p)
            if status != "RUNNING":
                raise JobStopped(f"job is {status}")

        cfg.on_progress = on_progress
        cfg.register_guard = store.guard(job_id)
        trainer = Trainer(cfg)
        state["run_id"] = trainer.run_id
        store.set_run(job_id, trainer.run_id)
        report = trainer.run()
        versions = {c: b["version"] for c, b in report["bundles"].items()}
        decisions = []
        if config["auto_activate"] and versions:
            decisions = auto_activate(store.registry, job_id, versions, config["margin"],
                                      report.get("evaluation_window"))
            for d in decisions:
                store.note(job_id, f"{d['component']} v{d['version']}: "
                                   f"{'activated' if d['activate'] else 'not activated'} ({d['reason']})")
        state["finishing"] = True
        skipped = report.get("success", {}).get("skipped")
        text = ("registered " + ", ".join(f"{c} v{v}" for c, v in versions.items())) if versions else \
            "finished; no bundle was written"
        if skipped:
            text += f"; success predictor skipped: {skipped}"
        store.progress(job_id, "metrics", "done", 100.0, "final metrics", headline_metrics(report))
        store.finish(job_id, "SUCCEEDED", text, run_dir=report.get("run_dir"), activation=decisions)
        return "SUCCEEDED"
    except JobStopped as e:
        state["finishing"] = True
        # Someone else ended the job (cancel, restart) or we were told to stop (SIGTERM):
        # if it is still marked RUNNING, say so honestly, then remove what the run wrote.
        registered = store.get(job_id)["committed"]
        store.stop(job_id, "FAILED", f"interrupted: {e}" + (" after registering its versions" if registered else ""),
                   force=True)
        _cleanup(store, job_id, bundles_dir, runs_dir)
        return store.status(job_id)
    except Exception as e:  # noqa: BLE001 - any failure ends the job with its reason
        state["finishing"] = True
        if isinstance(e, DataError):
            text = str(e)
        else:
            log.exception("job %s failed", job_id)
            text = f"{type(e).__name__}: {e}"
        if not store.finish(job_id, "FAILED", text.splitlines()[0][:500], error=text[:4000]):
            store.stop(job_id, "FAILED", text[:500], force=True)
        _cleanup(store, job_id, bundles_dir, runs_dir)
        return store.status(job_id)


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
    import models.data.contract  # noqa: F401
    import models.training.train  # noqa: F401

    state: dict = {"stopping": False, "finishing": False}

    def on_term(signum, frame):
        if state["stopping"] or state["finishing"]:
            return
        state["stopping"] = True
        raise JobStopped("stopped by signal")

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=_watchdog, args=(Path(db_path), job_id, parent_pid, state, Path(bundles_dir)),
                     daemon=True, name="job-watchdog").start()
    try:
        run_job(Path(db_path), job_id, Path(bundles_dir), Path(runs_dir), state=state)
    except JobStopped:
        pass  # stopped before the job's own handling began; whoever stopped it recorded why


def _watchdog(db_path: Path, job_id: str, parent_pid: int, state: dict, bundles_dir: Path,
              every: float = 0.5, grace: float = 5.0) -> None:
    store = JobStore(db_path)
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
