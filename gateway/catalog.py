"""Catalog access for the gateway: students, their interactions, and the internship table.

`Catalog` is the interface the gateway depends on, with two backends chosen by one setting
(gateway/catalog_backend.py, `open_catalog`): `SqliteCatalog`, the embedded default (the SQLite file written by
`pmis generate` / `models.data.catalog.build_catalog`), and `PostgresCatalog`
(gateway/catalog_postgres.py), the shared catalog of a deployment. A backend that cannot reach
its database raises `CatalogUnavailable` (an UNAVAILABLE status for the client).

The internship table is small (100k rows at the scheme's scale) and read on every request, so
it is held in memory as arrays (`InternshipTable`) and refreshed by `refresh()`; per-student
lookups go to the database through its indexes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from models.data.catalog import COUNTS_TABLE, LATEST, STATS_TABLE, ensure_counters, ensure_event_ids
from services.common.errors import RpcError

PROFILE_COLUMNS = ["skills", "education", "field", "cgpa", "college_tier", "district", "state", "latitude",
                   "longitude", "preferred_sectors", "preferred_districts"]
LIST_COLUMNS = {"skills", "preferred_sectors", "preferred_districts"}


@dataclass
class InternshipTable:
    ids: np.ndarray
    position: dict
    title: np.ndarray
    company_id: np.ndarray
    sector: np.ndarray
    district: np.ndarray
    state: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    remote: np.ndarray
    stipend: np.ndarray
    slots: np.ndarray
    deadline: np.ndarray      # epoch seconds, int64 max when unknown
    applicants: np.ndarray    # applications recorded so far
    selected: np.ndarray      # offers made so far (an internship with selected >= slots is full)
    msme: np.ndarray          # company is Micro/Small/Medium

    def count_application(self, internship_id: str) -> None:
        """An application this replica just stored: counted at once, before the next refresh."""
        p = self.position.get(internship_id)
        if p is not None:
            self.applicants[p] += 1


INTERNSHIP_COLUMNS = ["internship_id", "title", "company_id", "sector", "district", "state", "latitude", "longitude",
                      "remote", "stipend", "slots", "deadline"]
MSME_SIZES = ("Micro", "Small", "Medium")


class CatalogUnavailable(RpcError):
    """The catalog's database cannot be reached: UNAVAILABLE, with what it means for the call."""

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


class Catalog(Protocol):
    internships: InternshipTable

    def refresh(self) -> None: ...
    def student(self, student_id: str) -> dict | None: ...
    def interactions(self, student_id: str) -> list[tuple[str, str, int]]: ...
    def record_interaction(self, student_id: str, internship_id: str, event: str, timestamp: int,
                           event_id: str | None = None) -> tuple[bool, int]: ...
    def latest_timestamp(self) -> int: ...
    def applicants(self, internship_id: str) -> list[str]: ...
    def internship_skills(self, internship_id: str) -> list[str]: ...
    def students_in_state(self, state: str, limit: int) -> list[tuple[str, list[str]]]: ...
    def protected(self, student_id: str) -> dict: ...
    def close(self) -> None: ...


def _split(v) -> list[str]:
    return [t for t in (v or "").split(";") if t]


def student_row(names: list[str], row) -> dict | None:
    """A students row as the gateway uses it: list columns split and lower-cased."""
    if row is None:
        return None
    out = dict(zip(names, row))
    for name in LIST_COLUMNS & out.keys():
        out[name] = [t.lower() for t in _split(out[name])]
    return out


def internship_table(rows: list, applicants: np.ndarray | None, selected: np.ndarray | None,
                     small_companies: set) -> InternshipTable:
    """The in-memory table from rows of INTERNSHIP_COLUMNS sorted by id; when `applicants` and
    `selected` are None, each row carries them as two more columns."""
    columns = list(zip(*rows)) if rows else [()] * (len(INTERNSHIP_COLUMNS) + 2)
    col = columns.__getitem__
    ids = np.asarray(col(0), dtype=str)
    if applicants is None:
        applicants = np.array([n or 0 for n in col(12)], dtype=np.int64)
        selected = np.array([n or 0 for n in col(13)], dtype=np.int64)
    f = lambda j: np.array([np.nan if v is None else float(v) for v in col(j)], dtype=np.float64)  # noqa: E731
    s = lambda j: np.asarray([(v or "") for v in col(j)], dtype=str)  # noqa: E731
    never = np.iinfo(np.int64).max
    deadline = np.array([never if v is None else int(v) for v in col(11)], dtype=np.int64)
    return InternshipTable(
        ids=ids, position={i: p for p, i in enumerate(ids.tolist())}, title=s(1), company_id=s(2), sector=s(3),
        district=s(4), state=s(5), latitude=f(6), longitude=f(7), remote=np.array([bool(v) for v in col(8)], dtype=bool),
        stipend=f(9), slots=f(10), deadline=deadline, applicants=applicants, selected=selected,
        msme=np.array([cid in small_companies for cid in col(2)], dtype=bool))


class SqliteCatalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"catalog database {self.path} not found; run `pmis generate` first")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # The students table's columns, read once: per-request lookups select only what exists.
        self._student_columns = {r[1] for r in self._conn().execute("PRAGMA table_info(students)")}
        self.refresh()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Connections are per thread and close with it."""

    def refresh(self) -> None:
        """(Re)load the internship table and its application/offer counts into memory.

        The counts and the newest interaction time come from the catalog's trigger-maintained
        counters (`models.data.catalog`, schema 2): one indexed join instead of aggregating every
        interaction and outcome. A catalog without them gets them built on this first open (once);
        if it cannot be written, the counts are aggregated here as before.
        """
        c = self._conn()
        counted = ensure_counters(c)
        cols = {r[1] for r in c.execute("PRAGMA table_info(internships)")}
        select = ", ".join(f"i.{w}" if w in cols else f"NULL AS {w}" for w in INTERNSHIP_COLUMNS)
        applicants = selected = None
        if counted:
            rows = c.execute(f"SELECT {select}, n.applicants, n.selected FROM internships AS i "
                             f"LEFT JOIN {COUNTS_TABLE} AS n ON n.internship_id = i.internship_id "
                             f"ORDER BY i.internship_id").fetchall()
        else:
            rows = c.execute(f"SELECT {select} FROM internships AS i ORDER BY i.internship_id").fetchall()
            applicants, selected = self._aggregate_counts(c, {r[0]: p for p, r in enumerate(rows)})
        small = set()
        if c.execute("SELECT 1 FROM sqlite_master WHERE name='companies'").fetchone():
            small = {cid for cid, size in c.execute("SELECT company_id, size FROM companies") if size in MSME_SIZES}
        self.internships = internship_table(rows, applicants, selected, small)
        self._latest = (self._stored_latest(c) if counted else None) or \
            c.execute("SELECT MAX(timestamp) FROM interactions").fetchone()[0] or int(time.time())

    @staticmethod
    def _aggregate_counts(c: sqlite3.Connection, position: dict) -> tuple[np.ndarray, np.ndarray]:
        """Applications and offers per internship straight from the tables (catalog without counters)."""
        applicants = np.zeros(len(position), dtype=np.int64)
        for iid, n in c.execute("SELECT internship_id, COUNT(*) FROM interactions WHERE event='apply' "
                                "GROUP BY internship_id"):
            if iid in position:
                applicants[position[iid]] = n
        selected = np.zeros(len(position), dtype=np.int64)
        if c.execute("SELECT 1 FROM sqlite_master WHERE name='outcomes'").fetchone():
            for iid, n in c.execute("SELECT internship_id, SUM(selected) FROM outcomes GROUP BY internship_id"):
                if iid in position:
                    selected[position[iid]] = n or 0
        return applicants, selected

    @staticmethod
    def _stored_latest(c: sqlite3.Connection):
        """The newest interaction time from `catalog_stats`; None when stale (a deleted or lowered
        maximum): then it is recomputed by the caller and stored again when the catalog is writable."""
        row = c.execute(f"SELECT value FROM {STATS_TABLE} WHERE key = ?", (LATEST,)).fetchone()
        if row is not None:
            return row[0]
        try:
            with c:
                c.execute("BEGIN IMMEDIATE")
                c.execute(f"INSERT OR REPLACE INTO {STATS_TABLE} (key, value) "
                          f"SELECT ?, MAX(timestamp) FROM interactions", (LATEST,))
        except sqlite3.OperationalError:
            return None
        row = c.execute(f"SELECT value FROM {STATS_TABLE} WHERE key = ?", (LATEST,)).fetchone()
        return row[0] if row else None

    def latest_timestamp(self) -> int:
        return int(self._latest)

    def student(self, student_id: str) -> dict | None:
        c = self._conn()
        present = [p for p in PROFILE_COLUMNS if p in self._student_columns]
        row = c.execute(f"SELECT {', '.join(present)} FROM students WHERE student_id = ?", (student_id,)).fetchone()
        return student_row(present, row)

    def interactions(self, student_id: str) -> list[tuple[str, str, int]]:
        return self._conn().execute("SELECT internship_id, event, timestamp FROM interactions WHERE student_id = ? "
                                    "ORDER BY timestamp", (student_id,)).fetchall()

    def applicants(self, internship_id: str) -> list[str]:
        return [r[0] for r in self._conn().execute(
            "SELECT DISTINCT student_id FROM interactions WHERE internship_id = ? AND event = 'apply' "
            "ORDER BY student_id", (internship_id,))]

    def internship_skills(self, internship_id: str) -> list[str]:
        row = self._conn().execute("SELECT skills FROM internships WHERE internship_id = ?", (internship_id,)).fetchone()
        return [t.lower() for t in _split(row[0])] if row else []

    def students_in_state(self, state: str, limit: int) -> list[tuple[str, list[str]]]:
        """(student id, skills) of students of a state, for matching when nobody has applied."""
        rows = self._conn().execute("SELECT student_id, skills FROM students WHERE state = ? LIMIT ?", (state, limit))
        return [(sid, [t.lower() for t in _split(sk)]) for sid, sk in rows]

    def protected(self, student_id: str) -> dict:
        """Reservation-relevant attributes: read only to meet shortlist minimums, never as features."""
        c = self._conn()
        want = [w for w in ("gender", "social_category", "disability", "rural") if w in self._student_columns]
        if not want:
            return {}
        row = c.execute(f"SELECT {', '.join(want)} FROM students WHERE student_id = ?", (student_id,)).fetchone()
        return dict(zip(want, row)) if row else {}

    def record_interaction(self, student_id: str, internship_id: str, event: str, timestamp: int,
                           event_id: str | None = None) -> tuple[bool, int]:
        """Store one interaction; (stored, the student's interactions now). An `event_id` already
        stored (a client's retry) stores nothing again."""
        with self._write_lock:
            c = self._conn()
            ensure_event_ids(c)
            with c:
                stored = c.execute("INSERT INTO interactions (student_id, internship_id, event, timestamp, event_id) "
                                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                   (student_id, internship_id, event, timestamp, event_id)).rowcount == 1
            if stored and event == "apply":
                self.internships.count_application(internship_id)
            count = c.execute("SELECT COUNT(*) FROM interactions WHERE student_id = ?", (student_id,)).fetchone()[0]
            return stored, count

