"""The input contract: what a dataset folder must hold, read and validated into a `Dataset`.

Generated data and real exports go through this one reader, so they train the same way.
A folder holds `students`, `internships`, `interactions` and optionally `companies` and
`outcomes`, each as `<table>.parquet` or `<table>.csv` (CSV list columns are `;`-separated,
timestamps ISO 8601 or epoch seconds). See models/data/README.md for the full contract; the
tables and columns themselves are specified in `models.data.schema`.

Validation collects every problem with its file, row and column (rows are 1-based data rows;
in a CSV that is the line number minus one for the header) instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.data.schema import (BOOL, FLOAT, INT, LIST, PRIMARY_KEYS, REFERENCES, REQUIRED_TABLES, SCHEMA,
                                STRING, TIME, Column)

MAX_REPORTED = 5  # per check: enough to locate a problem without flooding the terminal


@dataclass
class Problem:
    file: str
    row: int | None     # 1-based data row, None for whole-file/column problems
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    errors: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # graceful degradations, said once each
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "errors": [str(e) for e in self.errors], "notes": self.notes}


class DataError(Exception):
    """Input data broke the contract; str() lists every problem with file, row and column."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__("invalid input data:\n  " + "\n  ".join(str(e) for e in report.errors))


@dataclass
class Dataset:
    students: pd.DataFrame
    internships: pd.DataFrame
    interactions: pd.DataFrame
    companies: pd.DataFrame | None
    outcomes: pd.DataFrame | None
    data_version: str
    report: ValidationReport

    @property
    def has_outcomes(self) -> bool:
        return self.outcomes is not None and len(self.outcomes) > 0


def table_path(data_dir: Path, table: str) -> Path | None:
    for ext in ("parquet", "csv"):
        p = Path(data_dir) / f"{table}.{ext}"
        if p.exists():
            return p
    return None


def data_version(data_dir: Path) -> str:
    """sha256 over the table files' bytes: the identity of the data a bundle was trained on."""
    h = hashlib.sha256()
    for table in SCHEMA:
        p = table_path(data_dir, table)
        if p is None:
            continue
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _read_raw(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    # Everything as text first, so a bad cell is reported instead of silently becoming NaN.
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def _bad_rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)[:MAX_REPORTED]


def _coerce(df: pd.DataFrame, col: Column, fname: str, report: ValidationReport) -> None:
    """Convert one column in place to its contract type, reporting cells that do not convert."""
    s = df[col.name]
    present = s.notna().to_numpy()
    if col.kind == STRING:
        df[col.name] = _missing_as_none(s.astype("string").str.strip())
    elif col.kind == LIST:
        df[col.name] = _normalise_lists(s)
    elif col.kind in (FLOAT, INT):
        num = pd.to_numeric(s, errors="coerce")
        bad = present & num.isna().to_numpy()
        for r in _bad_rows(bad):
            report.errors.append(Problem(fname, r + 1, col.name, f"{s.iloc[r]!r} is not a number"))
        if col.kind == INT:
            frac = num.notna().to_numpy() & (num.fillna(0) % 1 != 0).to_numpy()
            for r in _bad_rows(frac):
                report.errors.append(Problem(fname, r + 1, col.name, f"{s.iloc[r]!r} is not an integer"))
        df[col.name] = num.astype("float64")
        values = num.to_numpy(dtype=np.float64, na_value=np.nan)
        out_of_range = np.zeros(len(values), dtype=bool)
        if col.low is not None:
            out_of_range |= values < col.low
        if col.high is not None:
            out_of_range |= values > col.high
        for r in _bad_rows(out_of_range):
            report.errors.append(Problem(fname, r + 1, col.name,
                                         f"{values[r]:g} is outside [{col.low:g}, {col.high:g}]"))
    elif col.kind == BOOL:
        mapped = s.map(_as_bool)
        bad = present & mapped.isna().to_numpy()
        for r in _bad_rows(bad):
            report.errors.append(Problem(fname, r + 1, col.name, f"{s.iloc[r]!r} is not a boolean"))
        df[col.name] = _missing_as_none(mapped)
    elif col.kind == TIME:
        df[col.name] = _parse_times(s, fname, col.name, report)
    if col.choices is not None:
        values = df[col.name]
        bad = (values.notna() & ~values.isin(col.choices)).to_numpy()
        for r in _bad_rows(bad):
            report.errors.append(Problem(fname, r + 1, col.name,
                                         f"{values.iloc[r]!r} is not one of {', '.join(col.choices)}"))


def _missing_as_none(s: pd.Series) -> pd.Series:
    """Text and boolean columns leave the reader as Python objects with None where a value is
    missing, whatever the file said (None, NaN, pandas NA, an absent column): the models never
    meet pandas NA, whose truth value raises."""
    return s.astype(object).where(s.notna(), None)


def _normalise_lists(s: pd.Series) -> list[list[str]]:
    """Lists of trimmed, lower-cased, non-empty strings; `;`-split when the column is text.

    Vectorised in Arrow: a per-row Python loop costs minutes at a million students.
    """
    if s.isna().all():
        return [[] for _ in range(len(s))]
    arr = pa.array(s, from_pandas=True)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern(arr, ";")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    flat = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(arr.flatten(), pa.string())))
    keep = np.asarray(pc.fill_null(pc.not_equal(flat, ""), False), dtype=bool)
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    offsets -= offsets[0]
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    lists = pa.ListArray.from_arrays(pa.array(kept_before[offsets], pa.int32()), flat.filter(pa.array(keep)))
    return lists.to_pylist()


def _isin(values: pd.Series, reference: pd.Series) -> np.ndarray:
    """values.isin(reference) via Arrow's hash lookup (pandas' Arrow-string isin loops in Python)."""
    found = pc.is_in(pa.array(values.astype(object), type=pa.string(), from_pandas=True),
                     value_set=pa.array(reference.dropna().astype(object).unique(), pa.string()))
    return np.asarray(pc.fill_null(found, False), dtype=bool)


def _as_bool(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f"):
        return False
    return None


def _parse_times(s: pd.Series, fname: str, column: str, report: ValidationReport) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s):
        out = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        return out.astype("datetime64[us, UTC]")
    present = s.notna().to_numpy()
    numeric = pd.to_numeric(s, errors="coerce")
    epoch = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
    iso = pd.to_datetime(s.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    out = epoch.fillna(iso)
    for r in _bad_rows(present & out.isna().to_numpy()):
        report.errors.append(Problem(fname, r + 1, column,
                                     f"{s.iloc[r]!r} is neither ISO 8601 nor epoch seconds"))
    return out.astype("datetime64[us, UTC]")


def _check_table(table: str, df: pd.DataFrame, fname: str, report: ValidationReport) -> None:
    known = {c.name for c in SCHEMA[table]}
    for col in SCHEMA[table]:
        if col.name not in df.columns:
            if col.required:
                report.errors.append(Problem(fname, None, col.name, "required column is missing"))
            else:
                df[col.name] = pd.Series([None] * len(df), dtype=object)
                note = f"{fname}: {col.feature} is dropped (no column {col.name!r})"
                if col.feature and not any(n.startswith(f"{fname}: {col.feature} is dropped") for n in report.notes):
                    report.notes.append(note)
                _coerce(df, col, fname, report)
            continue
        missing = df[col.name].isna().to_numpy().copy()
        _coerce(df, col, fname, report)
        if col.required:
            if col.kind == LIST:
                missing |= np.fromiter((not v for v in df[col.name]), dtype=bool, count=len(df))
            for r in _bad_rows(missing):
                report.errors.append(Problem(fname, r + 1, col.name, "required value is empty"))
    extra = [c for c in df.columns if c not in known]
    if extra:
        report.notes.append(f"{fname}: extra columns ignored: {', '.join(map(str, extra))}")
    keys = PRIMARY_KEYS[table]
    if all(k in df.columns for k in keys):
        dup = df.duplicated(subset=keys, keep="first").to_numpy()
        for r in _bad_rows(dup):
            report.errors.append(Problem(fname, r + 1, keys[0] if len(keys) == 1 else ",".join(keys),
                                         "duplicate of an earlier row"))


# The event tables repeat a few thousand ids (and three event names) millions of times: held as
# Python strings, 10,000,000 interactions take about 2 GB for as long as training runs; as
# categories (one int32 code per row), a tenth of that.
EVENT_KEYS = {"interactions": ("student_id", "internship_id", "event"),
              "outcomes": ("student_id", "internship_id")}


def _as_categories(df: pd.DataFrame, columns) -> None:
    for column in columns:
        if column in df.columns and not isinstance(df[column].dtype, pd.CategoricalDtype):
            df[column] = df[column].astype("category")


def load_dataset(data_dir: Path) -> Dataset:
    """Read and validate a dataset folder; raise DataError listing every problem found."""
    data_dir = Path(data_dir)
    report = ValidationReport()
    tables: dict[str, pd.DataFrame | None] = {}
    files: dict[str, str] = {}
    for table in SCHEMA:
        path = table_path(data_dir, table)
        if path is None:
            tables[table] = None
            if table in REQUIRED_TABLES:
                report.errors.append(Problem(f"{table}.parquet|csv", None, None,
                                             f"required table not found in {data_dir}"))
            elif table == "outcomes":
                report.notes.append("no outcomes table: the success predictor is skipped")
            continue
        files[table] = path.name
        try:
            df = _read_raw(path)
        except Exception as e:  # unreadable file: report it, do not crash with a traceback
            report.errors.append(Problem(path.name, None, None, f"cannot be read: {e}"))
            tables[table] = None
            continue
        report.rows[table] = len(df)
        _check_table(table, df, path.name, report)
        tables[table] = df
    for table, column, ref_table, ref_key in REFERENCES:
        df, ref = tables.get(table), tables.get(ref_table)
        if df is None or ref is None or column not in df.columns or ref_key not in ref.columns:
            continue
        values = df[column]
        bad = values.notna().to_numpy() & ~_isin(values, ref[ref_key])
        for r in _bad_rows(bad):
            report.errors.append(Problem(files[table], r + 1, column,
                                         f"{values.iloc[r]!r} not found in {files[ref_table]}"))
    out = tables.get("outcomes")
    inter = tables.get("interactions")
    if out is not None and inter is not None and not report.errors:
        applied = inter.loc[inter["event"] == "apply", ["student_id", "internship_id"]].drop_duplicates()
        joined = out[["student_id", "internship_id"]].merge(applied, how="left", indicator=True)
        bad = (joined["_merge"] == "left_only").to_numpy()
        for r in _bad_rows(bad):
            report.errors.append(Problem(files["outcomes"], r + 1, "internship_id",
                                         "outcome for an application that is not in interactions"))
    if report.errors:
        raise DataError(report)
    for name in ("students", "internships", "interactions"):
        tables[name] = tables[name].reset_index(drop=True)
    for name, columns in EVENT_KEYS.items():
        if tables.get(name) is not None:
            _as_categories(tables[name], columns)
    return Dataset(students=tables["students"], internships=tables["internships"],
                   interactions=tables["interactions"], companies=tables.get("companies"),
                   outcomes=tables.get("outcomes"), data_version=data_version(data_dir), report=report)


def validate(data_dir: Path) -> ValidationReport:
    """Validation only: the report, never an exception for bad data."""
    try:
        return load_dataset(data_dir).report
    except DataError as e:
        return e.report


def write_report(report: ValidationReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2))
