"""The job table: jobs, their progress events and the trigger log, in the registry database.

The job table lives in the same database as the model registry: the SQLite file ``registry.db``
under the bundles root, or the shared PostgreSQL database when ``PMIS_DATABASE_URL`` names one
(``open_job_store`` chooses; models/bundle/database.py; its tables in models/lifecycle/schema.py).
That is what makes the lifecycle honest:

- a job registers its versions in ONE registry transaction at its very end; the same
  transaction checks that the job is still RUNNING and marks it ``committed`` (``JobStore.guard``).
  A cancel is a transaction too, so the two serialise: either the cancel wins (registration is
  refused and nothing is registered) or the registration wins (the cancel is refused: too late);
- a trainer that restarts finds the jobs that were RUNNING and marks them FAILED
  ("interrupted: trainer restarted", ``JobStore.recover``); a worker left over from the dead
  trainer cannot register anything afterwards, because its job is no longer RUNNING, and it stops
  itself;
- progress is written by the worker as rows of ``job_events``; watchers read them, from any
  process, live or after the fact;
- starting a job (QUEUED -> RUNNING) is a write transaction that checks the status first, so of
  two trainers (processes or replicas on one PostgreSQL) that both try, exactly one runs it.

How a job runs is models/lifecycle/running.py; what it is configured with, models/lifecycle/config.py.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from models.bundle.format import utc_now_iso
from models.bundle.database import Connection, database_location
from models.bundle.registry import Registry, manifest_of
from models.lifecycle.schema import ACTIVE, SCHEMA, STATUSES, TERMINAL

RESTART_MESSAGE = "interrupted: trainer restarted"


class JobError(Exception):
    """A job operation that cannot be done (unknown job, wrong state)."""


class JobNotFound(JobError):
    pass


class JobStopped(BaseException):
    """Raised inside a running job to stop it (cancelled, trainer gone, SIGTERM).

    A BaseException so that no ``except Exception`` on the way (libraries, our own error
    handling) can swallow a cancellation.
    """


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


def open_job_store(bundles_dir: Path | str, database_url: str | None = None) -> "JobStore":
    """The job table of the bundles in ``bundles_dir``: in PostgreSQL when one is configured
    ($PMIS_DATABASE_URL), else in ``<bundles_dir>/registry.db``."""
    return JobStore(database_location(bundles_dir, database_url), bundles=bundles_dir)


class JobStore:
    """The jobs, their events and the trigger log, in the registry's database.

    Like the registry, every call opens a short-lived connection, so one store can be shared
    by threads and several processes (server, workers, CLI, replicas) use the database at once.
    """

    def __init__(self, location: Path | str, bundles: Path | str | None = None) -> None:
        """``location``: the SQLite file or a postgresql:// URL (see ``Registry``)."""
        self.registry = Registry(location, bundles=bundles)  # creates/validates the registry schema first
        self.db_path = self.registry.db_path
        self.registry.db.migrate(SCHEMA)  # idempotent

    @property
    def location(self) -> Path | str:
        """What a worker process opens this store with again (``JobStore(location, bundles)``)."""
        return self.registry.location

    def _tx(self, immediate: bool = False):
        """The registry's own short-lived connection and transaction (same database, same rules)."""
        return self.registry._transaction(immediate)

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _job(row) -> dict[str, Any]:
        out = dict(row)
        for key in ("config", "versions", "metrics", "activation"):
            out[key] = json.loads(out[key])
        out["committed"] = bool(out["committed"])
        return out

    def _get(self, con: Connection, job_id: str) -> dict[str, Any]:
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
            percent = max(percent, job["percent"])  # never backwards; read in this write transaction
            con.execute("UPDATE jobs SET stage = ?, percent = ?, message = ?, metrics = ?"
                        " WHERE job_id = ?", (stage, percent, message, json.dumps(merged, sort_keys=True), job_id))
            self._event(con, job_id, kind, "RUNNING", stage, percent, message, metrics)
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

    def guard(self, job_id: str) -> Callable[[Connection, list], None]:
        """The registration guard: runs inside the registry's write transaction."""
        def check(con: Connection, refs: list) -> None:
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
                              " details, job_id) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                              (utc_now_iso(), source, data_source, int(should_train), json.dumps(reasons),
                               json.dumps(details, default=str), job_id))
            return int(cur.fetchone()[0])

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
                if manifest_of(folder).get("run_id") == run_id and (component_dir.name, int(folder.name)) not in registered:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(str(folder))
        if run_id and runs_dir is not None and not registered:
            run_dir = Path(runs_dir) / run_id
            if run_dir.exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(str(run_dir))
        return removed

