"""The catalog on PostgreSQL: its schema, its migrations and the bulk load of a dataset.

SQLite (models/data/catalog.py) is the embedded default for one machine; PostgreSQL is the
shared catalog of a deployment (`PMIS_DATABASE_URL=postgresql://...`): every gateway replica
reads the same students and interactions, and an interaction recorded through one replica is
in the next answer of any other. The tables and their columns are the input contract's
(models/data/schema.py), stored as in the SQLite catalog: lists ';'-joined, timestamps as epoch
seconds, booleans as 0/1, so that one reader serves both.

Beyond the contract's columns:
- `interactions.id` (bigserial) and `interactions.event_id`: a client's id for one event, unique,
  so that a retried RecordInteraction stores one row;
- `internship_counts`: per internship, the applications recorded and the offers made, kept
  current by triggers on insert (what the gateway reads at start-up and on every refresh,
  instead of aggregating ~10M interactions);
- `pmis_schema`: the schema version, one row.

`migrate` creates or upgrades the schema (idempotent; `pmis db migrate`); `load_dataset` fills
it from a dataset folder with COPY (`pmis db load`).
"""

from __future__ import annotations

from pathlib import Path

from models.data.schema import BOOL, FLOAT, INT, LIST, REQUIRED_TABLES, SCHEMA, STRING, TIME

SCHEMA_VERSION = 1
TABLES = ("students", "internships", "companies", "interactions", "outcomes")
PRIMARY_KEYS = {"students": "student_id", "internships": "internship_id", "companies": "company_id"}
SQL_TYPES = {STRING: "text", LIST: "text", FLOAT: "double precision", INT: "bigint", BOOL: "smallint",
             TIME: "bigint"}
# The hot reads: a student's interactions in time order, an internship's applicants, a
# student's outcomes, the newest interaction (the gateway's "now"), students of a state.
INDEXES = {
    "interactions_student": "interactions (student_id, timestamp)",
    "interactions_internship": "interactions (internship_id)",
    "interactions_timestamp": "interactions (timestamp)",
    "outcomes_student": "outcomes (student_id)",
    "students_state": "students (state)",
}
COUNTS_TABLE = "internship_counts"

_COUNT_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION pmis_count_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event = 'apply' AND NEW.internship_id IS NOT NULL THEN
    INSERT INTO {COUNTS_TABLE} (internship_id, applicants) VALUES (NEW.internship_id, 1)
    ON CONFLICT (internship_id) DO UPDATE SET applicants = {COUNTS_TABLE}.applicants + 1;
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION pmis_count_selected() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.selected IS NOT NULL AND NEW.internship_id IS NOT NULL THEN
    INSERT INTO {COUNTS_TABLE} (internship_id, selected) VALUES (NEW.internship_id, NEW.selected)
    ON CONFLICT (internship_id) DO UPDATE SET selected = {COUNTS_TABLE}.selected + EXCLUDED.selected;
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER pmis_interactions_count AFTER INSERT ON interactions
  FOR EACH ROW EXECUTE FUNCTION pmis_count_apply();
CREATE OR REPLACE TRIGGER pmis_outcomes_count AFTER INSERT ON outcomes
  FOR EACH ROW EXECUTE FUNCTION pmis_count_selected();
"""


def is_database_url(value) -> bool:
    """`postgresql://...` or `postgres://...`: the PostgreSQL catalog; anything else is a SQLite path."""
    return str(value).startswith(("postgresql://", "postgres://"))


DATABASE_URL_ENV = "PMIS_DATABASE_URL"  # the one setting: a postgresql:// URL moves catalog, registry and jobs here
CONNECT_TIMEOUT_S = 10  # a host that drops packets: fail, instead of waiting for the OS to give up


def redacted(url: str) -> str:
    """`postgresql://host:port/db` of a URL, never its password: for messages and logs."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL is reported without its text
        return "(unparseable database URL)"
    return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"


def connect(url: str, **kwargs):
    import psycopg

    return psycopg.connect(url, **{"connect_timeout": CONNECT_TIMEOUT_S, **kwargs})


def table_ddl(table: str) -> str:
    columns = []
    if table == "interactions":
        columns += ["id bigserial PRIMARY KEY", "event_id text UNIQUE"]
    for column in SCHEMA[table]:
        decl = f'"{column.name}" {SQL_TYPES[column.kind]}'
        if PRIMARY_KEYS.get(table) == column.name:
            decl += " PRIMARY KEY"
        elif column.required:
            decl += " NOT NULL"
        columns.append(decl)
    return f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(columns)})'


def schema_version(conn) -> int:
    """The schema version of the database; 0 when it has none."""
    row = conn.execute("SELECT to_regclass('pmis_schema')").fetchone()
    if row[0] is None:
        return 0
    row = conn.execute("SELECT version FROM pmis_schema").fetchone()
    return row[0] if row else 0


def migrate(conn, *, indexes: bool = True) -> int:
    """Create or upgrade the schema to SCHEMA_VERSION, in one transaction; returns the version.

    Idempotent. `indexes=False` leaves the secondary indexes and the counting triggers out (a
    bulk load adds them after its COPY: one sort instead of a B-tree update per row).
    """
    with conn.transaction():
        # One migrator at a time (two replicas starting together, a load beside a migrate).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pmis_schema'))")
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the database's schema is version {version}, newer than this code's "
                               f"{SCHEMA_VERSION}: upgrade the code")
        conn.execute("CREATE TABLE IF NOT EXISTS pmis_schema (version integer NOT NULL)")
        for table in TABLES:
            conn.execute(table_ddl(table))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {COUNTS_TABLE} (internship_id text PRIMARY KEY, "
                     f"applicants bigint NOT NULL DEFAULT 0, selected bigint NOT NULL DEFAULT 0)")
        if indexes:
            add_indexes(conn)
        conn.execute("DELETE FROM pmis_schema")
        conn.execute("INSERT INTO pmis_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


def add_indexes(conn) -> None:
    """The secondary indexes and the counting triggers (in the caller's transaction)."""
    for name, target in INDEXES.items():
        conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{name} ON {target}")
    conn.execute(_COUNT_TRIGGERS)


def recount(conn) -> None:
    """Rebuild `internship_counts` from the tables (after a bulk load; in the caller's transaction)."""
    conn.execute(f"DELETE FROM {COUNTS_TABLE}")
    conn.execute(f"INSERT INTO {COUNTS_TABLE} (internship_id, applicants) SELECT internship_id, count(*) "
                 f"FROM interactions WHERE event = 'apply' AND internship_id IS NOT NULL GROUP BY internship_id")
    conn.execute(f"INSERT INTO {COUNTS_TABLE} (internship_id, selected) SELECT internship_id, "
                 f"coalesce(sum(selected), 0) FROM outcomes WHERE internship_id IS NOT NULL GROUP BY internship_id "
                 f"ON CONFLICT (internship_id) DO UPDATE SET selected = EXCLUDED.selected")


_TRUE, _FALSE = ("1", "true", "yes", "y", "t"), ("0", "false", "no", "n", "f")  # the contract's spellings


def _without_nan(col):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)


def _epoch_seconds(col):
    """A contract timestamp column (timestamps, epoch seconds, ISO 8601 or epoch text) as int64 seconds."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_timestamp(t):  # truncating sub-second parts
        return col.cast(pa.timestamp("s", tz=t.tz), safe=False).cast(pa.int64())
    if pa.types.is_integer(t):
        return col.cast(pa.int64())
    if pa.types.is_floating(t):
        return pc.floor(_without_nan(col)).cast(pa.int64())
    text = col.cast(pa.string()).to_pandas()  # as the contract reads it: a number, else ISO 8601
    numeric = pd.to_numeric(text, errors="coerce")
    iso = pd.to_datetime(text.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    seconds = numeric.fillna((iso - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1))
    return pa.array(np.floor(seconds.to_numpy(dtype=np.float64)), from_pandas=True).cast(pa.int64())


def _storage_column(col, kind: str):
    """One Arrow column as its table column stores it: lists ';'-joined, booleans 0/1, times epoch
    seconds, integers int64. Accepts every spelling the contract does (integers written as floats,
    yes/no booleans, epoch-second or ISO 8601 times), which PostgreSQL's own parsing would refuse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    t = col.type
    if pa.types.is_null(t):
        return col
    if kind == LIST and (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return pc.binary_join(col.cast(pa.list_(pa.string())), ";")
    if kind == TIME:
        return _epoch_seconds(col)
    if pa.types.is_floating(t):
        col = _without_nan(col)
    if kind == BOOL and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        words = pc.utf8_lower(pc.utf8_trim_whitespace(col))
        return pc.if_else(pc.is_in(words, pa.array(_TRUE)), 1,
                          pc.if_else(pc.is_in(words, pa.array(_FALSE)), 0, pa.scalar(None, pa.int64())))
    if kind in (INT, BOOL):  # a fractional value raises (the contract refuses it too)
        return (col if pa.types.is_integer(t) or pa.types.is_boolean(t) else col.cast(pa.float64())).cast(pa.int64())
    if kind == FLOAT:
        return col.cast(pa.float64())
    return col.cast(pa.string())


def missing_tables(data_dir: Path) -> list[str]:
    """The contract's required tables that `data_dir` lacks (no parquet or csv file)."""
    from models.data.catalog import _source

    return [t for t in REQUIRED_TABLES if _source(Path(data_dir), t) is None]


def load_dataset(url: str, data_dir: Path, progress: bool = True) -> dict[str, int]:
    """Replace the catalog's tables with the dataset in `data_dir`, in one transaction (a failed
    load leaves the previous catalog; readers wait while it runs). Streams each table in record
    batches through COPY (bounded memory at any size), with the secondary indexes and the
    counting triggers off, then rebuilds both once; returns the rows loaded per table."""
    from tqdm.auto import tqdm

    from models.data.catalog import _batches, _source

    data_dir = Path(data_dir)
    if missing := missing_tables(data_dir):  # before anything is truncated
        raise FileNotFoundError(f"{data_dir} is not a dataset folder: it has no {', '.join(missing)} "
                                f"table (parquet or csv)")
    counts: dict[str, int] = {}
    with connect(url) as conn:
        migrate(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('pmis_schema'))")
            conn.execute(f"TRUNCATE {', '.join(TABLES)}, {COUNTS_TABLE}")
            for name in INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS idx_{name}")
            conn.execute("ALTER TABLE interactions DISABLE TRIGGER USER")
            conn.execute("ALTER TABLE outcomes DISABLE TRIGGER USER")
            kinds = {t: {c.name: c.kind for c in SCHEMA[t]} for t in TABLES}
            for table in TABLES:
                path = _source(data_dir, table)
                if path is None:
                    continue
                schema, batches, total = _batches(path)
                names = [n for n in schema.names if n in kinds[table]]
                at = [schema.names.index(n) for n in names]
                quoted = ", ".join(f'"{n}"' for n in names)
                rows = 0
                with tqdm(total=total, unit="row", desc=f"database {table}", disable=not progress) as bar, \
                        conn.cursor().copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
                    for batch in batches:
                        columns = (_storage_column(batch.column(k), kinds[table][n]).to_pylist()
                                   for k, n in zip(at, names))
                        for row in zip(*columns):
                            copy.write_row(row)
                        rows += batch.num_rows
                        bar.update(batch.num_rows)
                counts[table] = rows
            recount(conn)
            add_indexes(conn)
            conn.execute("ALTER TABLE interactions ENABLE TRIGGER USER")
            conn.execute("ALTER TABLE outcomes ENABLE TRIGGER USER")
        conn.execute("ANALYZE")
    return counts
