"""The input contract: loading generated data, and precise file/row/column errors for broken data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from models.data.contract import DataError, Problem, load_dataset, validate
from models.data.generate import generate

ROOT = Path(__file__).resolve().parents[2]
N_STUDENTS, N_INTERNSHIPS, SEED = 400, 120, 11


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "parquet"
    generate(out, students=N_STUDENTS, internships=N_INTERNSHIPS, seed=SEED, fmt="parquet",
             progress=False, catalog=False)
    return out


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "csv"
    generate(out, students=N_STUDENTS, internships=N_INTERNSHIPS, seed=SEED, fmt="csv",
             progress=False, catalog=False)
    return out


@pytest.fixture(scope="module")
def parquet_ds(parquet_dir):
    return load_dataset(parquet_dir)


@pytest.fixture
def broken(csv_dir, tmp_path):
    """A fresh copy of the CSV dataset plus an editor: edit(table, fn(df) -> df)."""
    d = tmp_path / "data"
    shutil.copytree(csv_dir, d)

    def edit(table: str, fn) -> Path:
        path = d / f"{table}.csv"
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        df = fn(df)
        df.to_csv(path, index=False)
        return d

    edit.dir = d
    return edit


def _errors(data_dir: Path) -> list[Problem]:
    with pytest.raises(DataError) as exc:
        load_dataset(data_dir)
    report = exc.value.report
    assert not report.ok
    assert validate(data_dir).errors == report.errors  # validate reports, never raises
    return report.errors


def _where(errors: list[Problem]) -> set[tuple]:
    return {(e.file, e.row, e.column) for e in errors}


def _set(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    """Set a cell by 1-based data row, as the error messages count them."""
    df.loc[row - 1, column] = value
    return df


# --------------------------------------------------------------------------- valid data


def test_generated_dataset_loads_with_contract_types(parquet_ds):
    ds = parquet_ds
    assert ds.report.ok and ds.report.errors == []
    assert len(ds.students) == N_STUDENTS and len(ds.internships) == N_INTERNSHIPS
    assert ds.report.rows["students"] == N_STUDENTS
    assert ds.report.rows["interactions"] == len(ds.interactions) > N_STUDENTS
    assert ds.has_outcomes and len(ds.outcomes) == ds.report.rows["outcomes"]
    assert ds.students["student_id"].is_unique and ds.internships["internship_id"].is_unique

    for df, col in [(ds.students, "skills"), (ds.students, "preferred_sectors"),
                    (ds.students, "preferred_districts"), (ds.internships, "skills")]:
        for value in df[col]:
            assert type(value) is list, (col, type(value))
            assert all(type(t) is str and t == t.lower() and t == t.strip() and t for t in value)
    assert all(len(v) > 0 for v in ds.students["skills"])

    for df, col in [(ds.interactions, "timestamp"), (ds.outcomes, "decided_at"),
                    (ds.internships, "deadline"), (ds.internships, "posted_at")]:
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype), (col, df[col].dtype)
        assert str(df[col].dt.tz) == "UTC"
    assert set(ds.interactions["event"]) <= {"view", "save", "apply"}
    assert pd.api.types.is_float_dtype(ds.students["cgpa"])
    assert ds.students["cgpa"].between(0, 10).all()
    assert set(ds.outcomes["selected"].unique()) <= {0, 1}


def test_csv_loads_identically_to_parquet(parquet_ds, csv_dir):
    a, b = parquet_ds, load_dataset(csv_dir)
    assert b.report.ok
    assert a.students["student_id"].tolist() == b.students["student_id"].tolist()
    assert a.internships["internship_id"].tolist() == b.internships["internship_id"].tolist()
    assert a.students["skills"].tolist() == b.students["skills"].tolist()
    assert a.internships["skills"].tolist() == b.internships["skills"].tolist()
    assert a.students["preferred_districts"].tolist() == b.students["preferred_districts"].tolist()
    pd.testing.assert_series_equal(a.interactions["timestamp"], b.interactions["timestamp"])
    pd.testing.assert_series_equal(a.interactions["student_id"], b.interactions["student_id"])
    pd.testing.assert_series_equal(a.internships["deadline"], b.internships["deadline"])
    pd.testing.assert_series_equal(a.students["cgpa"], b.students["cgpa"])
    pd.testing.assert_series_equal(a.outcomes["selected"], b.outcomes["selected"])


def test_epoch_seconds_timestamps_are_accepted(broken, csv_dir):
    def to_epoch(df):
        ts = pd.to_datetime(df["timestamp"], utc=True)
        seconds = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        df["timestamp"] = seconds.astype(str)
        return df

    d = broken("interactions", to_epoch)
    assert (d / "interactions.csv").read_text().splitlines()[1].split(",")[-1].isdigit()
    ds, ref = load_dataset(d), load_dataset(csv_dir)
    assert str(ds.interactions["timestamp"].dt.tz) == "UTC"
    pd.testing.assert_series_equal(ds.interactions["timestamp"], ref.interactions["timestamp"])


# --------------------------------------------------------------------------- broken data


def test_non_numeric_cgpa_names_file_row_column(broken):
    d = broken("students", lambda df: _set(df, 7, "cgpa", "eight"))
    with pytest.raises(DataError) as exc:
        load_dataset(d)
    assert "students.csv, row 7, column cgpa" in str(exc.value)
    assert _where(exc.value.report.errors) == {("students.csv", 7, "cgpa")}
    assert "'eight'" in exc.value.report.errors[0].message


def test_cgpa_out_of_range(broken):
    d = broken("students", lambda df: _set(df, 12, "cgpa", "11"))
    errors = _errors(d)
    assert _where(errors) == {("students.csv", 12, "cgpa")}
    assert "11" in errors[0].message and "[0, 10]" in errors[0].message


def test_duplicate_student_id_reports_second_copy(broken):
    def dup(df):
        return pd.concat([df.iloc[:20], df.iloc[[4]], df.iloc[20:]], ignore_index=True)

    d = broken("students", dup)  # data row 21 is a copy of data row 5
    errors = _errors(d)
    assert _where(errors) == {("students.csv", 21, "student_id")}
    assert "duplicate" in errors[0].message


def test_interaction_with_unknown_student(broken):
    d = broken("interactions", lambda df: _set(df, 5, "student_id", "S_NOBODY"))
    errors = _errors(d)
    assert _where(errors) == {("interactions.csv", 5, "student_id")}
    assert "S_NOBODY" in errors[0].message and "students.csv" in errors[0].message


def test_unknown_event_value(broken):
    d = broken("interactions", lambda df: _set(df, 3, "event", "click"))
    errors = _errors(d)
    assert _where(errors) == {("interactions.csv", 3, "event")}
    assert "click" in errors[0].message


def test_bad_timestamp(broken):
    d = broken("interactions", lambda df: _set(df, 9, "timestamp", "yesterday-ish"))
    errors = _errors(d)
    assert _where(errors) == {("interactions.csv", 9, "timestamp")}
    assert "yesterday-ish" in errors[0].message


def test_several_problems_are_all_reported(broken):
    broken("students", lambda df: _set(_set(df, 2, "cgpa", "x"), 30, "college_tier", "7"))
    d = broken("interactions", lambda df: _set(df, 8, "event", "like"))
    assert _where(_errors(d)) == {("students.csv", 2, "cgpa"), ("students.csv", 30, "college_tier"),
                                  ("interactions.csv", 8, "event")}


def test_missing_required_column(broken):
    d = broken("interactions", lambda df: df.drop(columns=["event"]))
    errors = _errors(d)
    assert _where(errors) == {("interactions.csv", None, "event")}
    assert "interactions.csv, column event" in str(errors[0])


def test_missing_key_column_of_referenced_table_is_reported_not_crashed(broken):
    d = broken("students", lambda df: df.drop(columns=["student_id"]))
    report = validate(d)  # must return a report, never raise
    assert ("students.csv", None, "student_id") in _where(report.errors)


def test_missing_required_table(broken):
    (broken.dir / "interactions.csv").unlink()
    errors = _errors(broken.dir)
    assert len(errors) == 1
    assert "interactions" in errors[0].file and errors[0].row is None


# --------------------------------------------------------------------------- graceful degradation


def test_missing_optional_columns_load_with_one_note_each(broken):
    d = broken("students", lambda df: df.drop(columns=["cgpa"]))
    ds = load_dataset(d)
    assert ds.students["cgpa"].isna().all() and len(ds.students) == N_STUDENTS
    cgpa_notes = [n for n in ds.report.notes if "CGPA" in n]
    assert len(cgpa_notes) == 1 and "students.csv" in cgpa_notes[0] and "cgpa" in cgpa_notes[0]


def test_missing_coordinates_load(broken):
    d = broken("students", lambda df: df.drop(columns=["latitude", "longitude"]))
    ds = load_dataset(d)
    assert ds.students["latitude"].isna().all() and ds.students["longitude"].isna().all()
    assert any("neighbouring-district fit" in n for n in ds.report.notes)


def test_dropped_feature_is_said_once(broken):
    d = broken("students", lambda df: df.drop(columns=["cgpa", "latitude", "longitude"]))
    notes = load_dataset(d).report.notes
    assert sum("neighbouring-district fit" in n for n in notes) == 1
    assert sum("CGPA" in n for n in notes) == 1


def test_no_outcomes_table_skips_success_predictor(broken):
    (broken.dir / "outcomes.csv").unlink()
    ds = load_dataset(broken.dir)
    assert ds.outcomes is None and not ds.has_outcomes
    notes = [n for n in ds.report.notes if "outcomes" in n]
    assert len(notes) == 1 and "success predictor is skipped" in notes[0]


# --------------------------------------------------------------------------- CLI


def _cli_validate(d: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "validate", "--data", str(d)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_validate_good_data(csv_dir):
    proc = _cli_validate(csv_dir)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_cli_validate_bad_data(broken):
    d = broken("students", lambda df: _set(df, 7, "cgpa", "eight"))
    proc = _cli_validate(d)
    assert proc.returncode == 2
    assert "students.csv, row 7, column cgpa" in proc.stderr
    assert "Traceback" not in proc.stderr
