"""A consistent snapshot of the PostgreSQL catalog, written as a dataset folder in the input
contract's Parquet format: what training reads when the catalog lives in PostgreSQL
(`pmis db export --data DIR`, then `pmis train --data DIR`).

Training reads files, not the live database: a run then sees one fixed dataset however long it
takes, any tool can read it, and its data version (models.data.contract.data_version, a hash of
the files) names exactly that snapshot. Every table is read in one REPEATABLE READ transaction
(interactions recorded meanwhile are either all in or all out), in key order, through
server-side cursors in batches, so memory stays bounded at any size; the folder is written
beside the target and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from models.data.postgres import PRIMARY_KEYS, TABLES, connect
from models.data.schema import BOOL, FLOAT, INT, LIST, REQUIRED_TABLES, SCHEMA, STRING, TIME

BATCH_ROWS = 50_000


def _arrow_type(kind: str):
    import pyarrow as pa

    return {STRING: pa.string(), LIST: pa.list_(pa.string()), FLOAT: pa.float64(), INT: pa.int64(),
            BOOL: pa.bool_(), TIME: pa.timestamp("s", tz="UTC")}[kind]


def _column(kind: str, values: list):
    """One column of stored values (lists ';'-joined, booleans 0/1, times epoch seconds) as Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == LIST:
        text = pa.array(values, type=pa.string())
        return pc.split_pattern(text, ";")
    if kind == BOOL:
        return pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())
    if kind == TIME:
        return pa.array(values, type=pa.int64()).cast(_arrow_type(TIME))
    return pa.array(values, type=_arrow_type(kind))


def _order(table: str) -> str:
    if table in PRIMARY_KEYS:
        return f'"{PRIMARY_KEYS[table]}" COLLATE "C"'
    return "id" if table == "interactions" else ", ".join(f'"{c.name}"' for c in SCHEMA[table])


def _export_table(conn, table: str, path: Path, progress: bool) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    columns = SCHEMA[table]
    schema = pa.schema([(c.name, _arrow_type(c.kind)) for c in columns])
    names = ", ".join(f'"{c.name}"' for c in columns)
    rows = 0
    with conn.cursor(name=f"pmis_export_{table}") as cur, \
            tqdm(unit="row", desc=f"export {table}", disable=not progress) as bar, \
            pq.ParquetWriter(path, schema) as writer:
        cur.itersize = BATCH_ROWS
        cur.execute(f'SELECT {names} FROM "{table}" ORDER BY {_order(table)}')
        while batch := cur.fetchmany(BATCH_ROWS):
            values = list(zip(*batch))
            writer.write_batch(pa.record_batch([_column(c.kind, list(v)) for c, v in zip(columns, values)],
                                               schema=schema))
            rows += len(batch)
            bar.update(len(batch))
    return rows


def export_snapshot(url: str, data_dir: Path, progress: bool = True) -> dict[str, int]:
    """Write the catalog's tables to `data_dir` (replaced) as one consistent snapshot; rows per
    table. An optional table with no rows is left out, as in a dataset without it."""
    data_dir = Path(data_dir)
    tmp = data_dir.with_name(data_dir.name + ".exporting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts: dict[str, int] = {}
    try:
        with connect(url) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for table in TABLES:
                path = tmp / f"{table}.parquet"
                counts[table] = _export_table(conn, table, path, progress)
                if counts[table] == 0 and table not in REQUIRED_TABLES:
                    path.unlink()
                    del counts[table]
            conn.rollback()  # read only: nothing to keep
        old = data_dir.with_name(data_dir.name + ".replaced")
        if data_dir.exists():
            os.replace(data_dir, old)
        os.replace(tmp, data_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
