"""Writers for the generated tables: Parquet (zstd) or CSV, appended chunk by chunk, each table
with one fixed Arrow schema so every chunk and both formats agree on the column types.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def _schema(name: str) -> pa.Schema:
    ts, s, i64, f64, b = pa.timestamp("us", tz="UTC"), pa.string(), pa.int64(), pa.float64(), pa.bool_()
    lst = pa.list_(pa.string())
    cols = {
        "students": [("student_id", s), ("skills", lst), ("education", s), ("field", s),
                     ("cgpa", f64), ("college_tier", i64), ("age", i64), ("district", s),
                     ("state", s), ("latitude", f64), ("longitude", f64), ("rural", b),
                     ("gender", s), ("social_category", s), ("disability", b),
                     ("preferred_sectors", lst), ("preferred_districts", lst)],
        "internships": [("internship_id", s), ("title", s), ("company_id", s), ("sector", s),
                        ("description", s), ("skills", lst), ("district", s), ("state", s),
                        ("latitude", f64), ("longitude", f64), ("remote", b), ("stipend", i64),
                        ("slots", i64), ("duration_months", i64), ("posted_at", ts),
                        ("deadline", ts)],
        "companies": [("company_id", s), ("name", s), ("industry", s), ("size", s)],
        "interactions": [("student_id", s), ("internship_id", s), ("event", s), ("timestamp", ts)],
        "outcomes": [("student_id", s), ("internship_id", s), ("selected", i64), ("decided_at", ts)],
    }
    return pa.schema(cols[name])


def _csv_view(table: pa.Table) -> pa.Table:
    """CSV form: list columns joined with ';', timestamps as ISO 8601 UTC ('...Z')."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_list(col.type):
            col = pc.binary_join(col, ";")
        elif pa.types.is_timestamp(col.type):
            secs = col.cast(pa.int64()).to_numpy() // 1_000_000
            iso = np.char.add(np.datetime_as_string(secs.astype("datetime64[s]"), unit="s"), "Z")
            col = pa.array(iso.tolist(), type=pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)


class Sink:
    """Appends tables chunk by chunk to <dir>/<name>.parquet or .csv."""

    def __init__(self, directory: Path, name: str, fmt: str):
        self.schema = _schema(name)
        self.fmt = fmt
        self.rows = 0
        self.path = directory / f"{name}.{fmt}"
        self._w = None

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if self.fmt == "parquet":
            if self._w is None:
                self._w = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            self._w.write_table(table)
        else:
            table = _csv_view(table)
            if self._w is None:
                self._w = pacsv.CSVWriter(self.path, table.schema)
            self._w.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._w is None:  # an empty table still gets a file with its header/schema
            self.write(self.schema.empty_table())
        self._w.close()
