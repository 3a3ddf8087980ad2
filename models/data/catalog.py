"""SQLite catalog of a dataset folder: the five tables, streamed in batches.

The catalog is what the gateway reads at serving time (student and internship lookups) and what
engineers query by hand. Layout: one SQLite table per dataset table with the same column names;
list columns as ';'-joined TEXT, timestamps as INTEGER epoch seconds, bools as INTEGER 0/1.
`PRAGMA user_version` holds the schema version.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

SCHEMA_VERSION = 1
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
    if path.suffix == ".parquet":
        f = pq.ParquetFile(path)
        return f.schema_arrow, f.iter_batches(batch_size=BATCH_ROWS), f.metadata.num_rows
    # CSV: streaming reader; type inference turns ISO 8601 timestamps into timestamp columns.
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=16 << 20))
    return reader.schema, iter(reader), None


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_timestamp(t):
        return "INTEGER"
    if pa.types.is_floating(t):
        return "REAL"
    return "TEXT"  # strings, ';'-joined lists, anything else stringified


def _python_column(col: pa.Array) -> list:
    """One Arrow column as Python values in the catalog's storage convention."""
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
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        os.replace(tmp, db_path)
    except BaseException:
        _remove_db(tmp)
        raise
    return counts


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
