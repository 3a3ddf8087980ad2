"""The gateway's catalog on PostgreSQL (`PMIS_DATABASE_URL=postgresql://...`): one database that
every gateway replica reads and writes, so that an interaction recorded through one replica is in
the next answer of any other and survives the pod.

The schema is models/data/postgres.py's (`pmis db migrate`, `pmis db load`). Connections come from
a psycopg pool opened at start-up (no per-request connection set-up). The internship table is
held in memory as with SQLite (gateway/catalog.py) and refreshed; per-student reads go to the
database through its indexes.

When the database cannot be reached, every method raises `CatalogUnavailable` at once instead of
hanging (a connect timeout, a short wait for a pooled connection); the pool keeps reconnecting
in the background and the next call after the database is back succeeds. A read that failed on
a connection broken by a database restart is retried once on a fresh one.
"""

from __future__ import annotations

import logging
import time
import uuid

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.catalog import (INTERNSHIP_COLUMNS, MSME_SIZES, PROFILE_COLUMNS, CatalogUnavailable, _split,
                             internship_table, student_row)
from models.data.postgres import COUNTS_TABLE, redacted, schema_version

log = logging.getLogger("pmis.gateway")

POOL_MIN, POOL_MAX = 2, 8
CONNECT_TIMEOUT_S = 2       # a database that does not answer: fail the call, not the deadline
POOL_WAIT_S = 0.5           # for a free pooled connection; beyond it the database is treated as unreachable
PROTECTED_COLUMNS = ("gender", "social_category", "disability", "rural")


class PostgresCatalog:
    def __init__(self, url: str):
        self.url = url
        self._pool = ConnectionPool(url, min_size=POOL_MIN, max_size=POOL_MAX, open=False, name="catalog",
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                                    reconnect_timeout=float("inf"))
        self._pool.open(wait=True, timeout=30)
        with self._pool.connection() as conn:
            if schema_version(conn) == 0:
                raise RuntimeError(f"the database at {redacted(url)} has no catalog: run `pmis db migrate` "
                                   f"and `pmis db load --data DIR`")
        self.refresh()

    def close(self) -> None:
        self._pool.close()

    def _run(self, what: str, work, *, retry: bool = True):
        """`work(conn)` on a pooled connection; a broken connection is retried once (reads and
        idempotent writes only), an unreachable database raises CatalogUnavailable."""
        for attempt in range(2 if retry else 1):
            try:
                with self._pool.connection(timeout=POOL_WAIT_S) as conn:
                    return work(conn)
            except PoolTimeout as e:
                raise CatalogUnavailable(f"catalog database unreachable ({what}); retry later") from e
            except psycopg.OperationalError as e:
                if attempt == 0 and retry:
                    continue  # the pool drops the broken connection; the next one is fresh
                raise CatalogUnavailable(f"catalog database unreachable ({what}); retry later") from e
        raise AssertionError("unreachable")

    def refresh(self) -> None:
        def read(conn):
            select = ", ".join(f"i.{w}" for w in INTERNSHIP_COLUMNS)
            rows = conn.execute(f"SELECT {select}, n.applicants, n.selected FROM internships AS i "
                                f"LEFT JOIN {COUNTS_TABLE} AS n ON n.internship_id = i.internship_id "
                                f"ORDER BY i.internship_id COLLATE \"C\"").fetchall()
            small = {r[0] for r in conn.execute("SELECT company_id FROM companies WHERE size = ANY(%s)",
                                                (list(MSME_SIZES),))}
            latest = conn.execute("SELECT max(timestamp) FROM interactions").fetchone()[0]
            return rows, small, latest

        rows, small, latest = self._run("refresh", read)
        self.internships = internship_table(rows, None, None, small)
        self._latest = latest or int(time.time())

    def latest_timestamp(self) -> int:
        return int(self._latest)

    def student(self, student_id: str) -> dict | None:
        row = self._run("student", lambda conn: conn.execute(
            f"SELECT {', '.join(PROFILE_COLUMNS)} FROM students WHERE student_id = %s", (student_id,)).fetchone())
        return student_row(PROFILE_COLUMNS, row)

    def interactions(self, student_id: str) -> list[tuple[str, str, int]]:
        return self._run("interactions", lambda conn: conn.execute(
            "SELECT internship_id, event, timestamp FROM interactions WHERE student_id = %s ORDER BY timestamp, id",
            (student_id,)).fetchall())

    def applicants(self, internship_id: str) -> list[str]:
        rows = self._run("applicants", lambda conn: conn.execute(
            "SELECT DISTINCT student_id COLLATE \"C\" AS s FROM interactions WHERE internship_id = %s "
            "AND event = 'apply' ORDER BY s", (internship_id,)).fetchall())
        return [r[0] for r in rows]

    def internship_skills(self, internship_id: str) -> list[str]:
        row = self._run("internship", lambda conn: conn.execute(
            "SELECT skills FROM internships WHERE internship_id = %s", (internship_id,)).fetchone())
        return [t.lower() for t in _split(row[0])] if row else []

    def students_in_state(self, state: str, limit: int) -> list[tuple[str, list[str]]]:
        rows = self._run("students", lambda conn: conn.execute(
            "SELECT student_id, skills FROM students WHERE state = %s LIMIT %s", (state, limit)).fetchall())
        return [(sid, [t.lower() for t in _split(sk)]) for sid, sk in rows]

    def protected(self, student_id: str) -> dict:
        """Reservation-relevant attributes: read only to meet shortlist minimums, never as features."""
        row = self._run("student", lambda conn: conn.execute(
            f"SELECT {', '.join(PROTECTED_COLUMNS)} FROM students WHERE student_id = %s", (student_id,)).fetchone())
        return dict(zip(PROTECTED_COLUMNS, row)) if row else {}

    def record_interaction(self, student_id: str, internship_id: str, event: str, timestamp: int,
                           event_id: str | None = None) -> tuple[bool, int]:
        """Store one interaction, durably (committed before this returns); (stored, the student's
        interactions now). Every write carries an event id -- the client's, or one made here -- so
        that a retry after a lost answer or a broken connection stores nothing twice."""
        event_id = event_id or f"gateway:{uuid.uuid4()}"

        def write(conn):
            with conn.transaction():
                stored = conn.execute(
                    "INSERT INTO interactions (student_id, internship_id, event, timestamp, event_id) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                    (student_id, internship_id, event, timestamp, event_id)).rowcount == 1
                count = conn.execute("SELECT count(*) FROM interactions WHERE student_id = %s",
                                     (student_id,)).fetchone()[0]
            return stored, count

        stored, count = self._run("record interaction", write)
        if stored and event == "apply":
            self.internships.count_application(internship_id)
        return stored, int(count)

