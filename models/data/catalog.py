"""SQLite catalog of a dataset folder: the five tables, streamed in batches.

The catalog is what the gateway reads at serving time (student and internship lookups) and what
engineers query by hand. Layout: one SQLite table per dataset table with the same column names;
list columns as ';'-joined TEXT, timestamps as INTEGER epoch seconds, bools as INTEGER 0/1.
`PRAGMA user_version` holds the schema version.

Schema 2 adds what the gateway reads at start-up and on every refresh, kept current by triggers
so that no start-up has to scan the ~10M interactions: `internship_counts` (per internship, the
applications recorded and the offers made: `COUNT(*)` of `event='apply'` interactions and
`SUM(selected)` of outcomes) and `catalog_stats` (`latest_timestamp`: the newest interaction).
The triggers fire for every writer (the gateway's `record_interaction`, an older gateway, a hand
edit), so the counters always equal the aggregates they replace. A schema-1 catalog gets them on
its first writable open (`ensure_counters`); a read-only one is aggregated the slow way.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow and tqdm are imported where a catalog is built: the gateway only reads one
    import pyarrow as pa

SCHEMA_VERSION = 2
TABLES = ("students", "internships", "companies", "interactions", "outcomes")
PRIMARY_KEYS = {"students": "student_id", "internships": "internship_id", "companies": "company_id"}
INDEXES = [("interactions", "student_id"), ("interactions", "internship_id"),
           ("outcomes", "student_id")]
BATCH_ROWS = 50_000


def _source(data_dir: Path, table: str) -> Path | None:
    """The table's file: parquet preferred over csv; None when neither exists."""
    for ext in ("parquet", "csv"):
        path = data_dir / f"{table}.{ext}"
        if path.exists():
            return path
    return None


def _batches(path: Path) -> tuple[pa.Schema, object, int | None]:
    """(schema, iterator of record batches, row count if cheaply known) without loading all."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        f = pq.ParquetFile(path)
        return f.schema_arrow, f.iter_batches(batch_size=BATCH_ROWS), f.metadata.num_rows
    # CSV: streaming reader; type inference turns ISO 8601 timestamps into timestamp columns.
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=16 << 20))
    return reader.schema, iter(reader), None


def _sql_type(t: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_timestamp(t):
        return "INTEGER"
    if pa.types.is_floating(t):
        return "REAL"
    return "TEXT"  # strings, ';'-joined lists, anything else stringified


def _python_column(col: pa.Array) -> list:
    """One Arrow column as Python values in the catalog's storage convention."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pc.binary_join(col.cast(pa.list_(pa.string())), ";").to_pylist()
    if pa.types.is_timestamp(t):  # -> epoch seconds (truncating sub-second parts)
        return col.cast(pa.timestamp("s", tz=t.tz), safe=False).cast(pa.int64()).to_pylist()
    if pa.types.is_boolean(t):
        return col.cast(pa.int8()).to_pylist()
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t):
        return col.to_pylist()
    return col.cast(pa.string()).to_pylist()


def _create_table(conn: sqlite3.Connection, table: str, schema: pa.Schema) -> None:
    cols = []
    for field in schema:
        decl = f'"{field.name}" {_sql_type(field.type)}'
        if PRIMARY_KEYS.get(table) == field.name:
            decl += " PRIMARY KEY"
        cols.append(decl)
    conn.execute(f'CREATE TABLE "{table}" ({", ".join(cols)})')


def _load_table(conn: sqlite3.Connection, table: str, path: Path, progress: bool) -> int:
    from tqdm.auto import tqdm

    schema, batches, total = _batches(path)
    _create_table(conn, table, schema)
    names = ", ".join(f'"{c}"' for c in schema.names)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(schema.names))})'
    rows = 0
    with tqdm(total=total, unit="row", desc=f"catalog {table}", disable=not progress) as bar:
        for batch in batches:
            cols = [_python_column(batch.column(k)) for k in range(batch.num_columns)]
            conn.executemany(sql, zip(*cols))
            conn.commit()  # small transactions keep the WAL file from growing without bound
            rows += batch.num_rows
            bar.update(batch.num_rows)
    return rows


def build_catalog(data_dir: Path, db_path: Path, progress: bool = True) -> dict[str, int]:
    """Stream the dataset tables in `data_dir` into a new SQLite database at `db_path`.

    Built in `<db_path>.tmp` and renamed into place, so readers never see a half-built catalog.
    Returns the row count per table loaded (tables with no file are skipped).
    """
    data_dir, db_path = Path(data_dir), Path(db_path)
    tmp = db_path.with_name(db_path.name + ".tmp")
    _remove_db(tmp)
    counts: dict[str, int] = {}
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")  # bulk load into a temp file: crash = rebuild
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for table in TABLES:
                path = _source(data_dir, table)
                if path is not None:
                    counts[table] = _load_table(conn, table, path, progress)
            # Indexes after the load: one sort instead of a B-tree update per row.
            for table, col in INDEXES:
                if table in counts:
                    conn.execute(f'CREATE INDEX "idx_{table}_{col}" ON "{table}" ("{col}")')
            conn.commit()
            if "internships" in counts and "interactions" in counts:
                with conn:
                    build_counters(conn)
            if "interactions" in counts:
                ensure_event_ids(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        os.replace(tmp, db_path)
    except BaseException:
        _remove_db(tmp)
        raise
    return counts


# ----------------------------------------------------------------------------------------------
# Per-internship counters and the latest timestamp, maintained by triggers

COUNTS_TABLE, STATS_TABLE = "internship_counts", "catalog_stats"
LATEST = "latest_timestamp"

# A deleted or lowered maximum cannot be updated in place: the row is dropped (stale) and the
# reader recomputes MAX(timestamp) (`latest_timestamp`). Inserts only raise an existing row.
_RAISE_LATEST = (f"UPDATE {STATS_TABLE} SET value = NEW.timestamp WHERE key = '{LATEST}' AND NEW.timestamp "
                 f"IS NOT NULL AND (value IS NULL OR NEW.timestamp > value);")
_DROP_LATEST = f"DELETE FROM {STATS_TABLE} WHERE key = '{LATEST}' AND OLD.timestamp >= value;"
_ADD_APPLY = (f"INSERT INTO {COUNTS_TABLE} (internship_id, applicants) SELECT NEW.internship_id, 1 "
              f"WHERE NEW.event = 'apply' AND NEW.internship_id IS NOT NULL "
              f"ON CONFLICT (internship_id) DO UPDATE SET applicants = applicants + 1;")
_SUB_APPLY = (f"UPDATE {COUNTS_TABLE} SET applicants = applicants - 1 "
              f"WHERE OLD.event = 'apply' AND internship_id = OLD.internship_id;")
_ADD_SELECTED = (f"INSERT INTO {COUNTS_TABLE} (internship_id, selected) SELECT NEW.internship_id, NEW.selected "
                 f"WHERE NEW.selected IS NOT NULL AND NEW.internship_id IS NOT NULL "
                 f"ON CONFLICT (internship_id) DO UPDATE SET selected = selected + excluded.selected;")
_SUB_SELECTED = (f"UPDATE {COUNTS_TABLE} SET selected = selected - OLD.selected "
                 f"WHERE OLD.selected IS NOT NULL AND internship_id = OLD.internship_id;")
TRIGGERS = {
    "interactions": {
        "pmis_interactions_insert": ("AFTER INSERT", _ADD_APPLY + _RAISE_LATEST),
        "pmis_interactions_delete": ("AFTER DELETE", _SUB_APPLY + _DROP_LATEST),
        "pmis_interactions_update": ("AFTER UPDATE OF internship_id, event, timestamp",
                                     _SUB_APPLY + _ADD_APPLY + _DROP_LATEST + _RAISE_LATEST),
    },
    "outcomes": {
        "pmis_outcomes_insert": ("AFTER INSERT", _ADD_SELECTED),
        "pmis_outcomes_delete": ("AFTER DELETE", _SUB_SELECTED),
        "pmis_outcomes_update": ("AFTER UPDATE OF internship_id, selected", _SUB_SELECTED + _ADD_SELECTED),
    },
}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def counters_ready(conn: sqlite3.Connection) -> bool:
    """True when the counters exist and a trigger keeps them current for every source table present
    (a table created after the counters, e.g. `outcomes`, has no trigger: the counters would miss it)."""
    tables = _tables(conn)
    if COUNTS_TABLE not in tables or STATS_TABLE not in tables:
        return False
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return all(set(TRIGGERS[t]) <= triggers for t in TRIGGERS if t in tables)


def build_counters(conn: sqlite3.Connection) -> None:
    """(Re)build the counters and the latest timestamp from the tables and install the triggers.

    Runs in the caller's transaction (open a write transaction first so that no insert lands
    between the aggregation and the triggers). One pass over interactions (a full scan: the
    internship_id index would turn it into ~10M random row lookups) and one over outcomes.
    """
    tables = _tables(conn)
    conn.execute(f"DROP TABLE IF EXISTS {COUNTS_TABLE}")
    conn.execute(f"DROP TABLE IF EXISTS {STATS_TABLE}")
    conn.execute(f"CREATE TABLE {COUNTS_TABLE} (internship_id TEXT PRIMARY KEY, applicants INTEGER NOT NULL "
                 f"DEFAULT 0, selected NUMERIC NOT NULL DEFAULT 0) WITHOUT ROWID")
    conn.execute(f"CREATE TABLE {STATS_TABLE} (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    conn.execute(f"INSERT INTO {COUNTS_TABLE} (internship_id, applicants) SELECT internship_id, COUNT(*) "
                 f"FROM interactions NOT INDEXED WHERE event = 'apply' AND internship_id IS NOT NULL "
                 f"GROUP BY internship_id")
    conn.execute(f"INSERT INTO {STATS_TABLE} (key, value) SELECT '{LATEST}', MAX(timestamp) FROM interactions")
    if "outcomes" in tables:
        conn.execute(f"INSERT INTO {COUNTS_TABLE} (internship_id, selected) SELECT internship_id, "
                     f"COALESCE(SUM(selected), 0) FROM outcomes NOT INDEXED WHERE internship_id IS NOT NULL "
                     f"GROUP BY internship_id ORDER BY internship_id "
                     f"ON CONFLICT (internship_id) DO UPDATE SET selected = excluded.selected")
    for table, triggers in TRIGGERS.items():
        if table in tables:
            for name, (when, body) in triggers.items():
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                conn.execute(f"CREATE TRIGGER {name} {when} ON {table} FOR EACH ROW BEGIN {body} END")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def ensure_counters(conn: sqlite3.Connection) -> bool:
    """Build the counters of a catalog that lacks them (schema 1, or a table added since); True when
    they are ready afterwards, False when the catalog cannot be written (read-only, busy)."""
    if counters_ready(conn):
        return True
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not counters_ready(conn):  # another process may have built them meanwhile
                build_counters(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError:  # read-only database/file, locked past the timeout
        return False
    return True


def ensure_event_ids(c: sqlite3.Connection) -> None:
    """The `event_id` column of interactions: a client's id for one recorded event, unique where
    set, so that a retried RecordInteraction is stored once. Built with every new catalog; added
    to an older one on its first write."""
    if "event_id" in {r[1] for r in c.execute("PRAGMA table_info(interactions)")}:
        return
    with c:
        c.execute("ALTER TABLE interactions ADD COLUMN event_id TEXT")
        c.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_interactions_event_id ON interactions (event_id) "
                  "WHERE event_id IS NOT NULL")


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
