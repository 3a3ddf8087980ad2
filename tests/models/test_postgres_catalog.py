"""The catalog on PostgreSQL (models/data/postgres.py and `pmis db`), on the real server: every test
in a schema of its own (`pg_url`), over one small generated dataset (parquet, and the same data as
CSV). What is checked: the schema and its version, the bulk load (rows, values, the counters, the
indexes and triggers, a reload, a failed load), the contract's optional columns and spellings,
the uniqueness of `event_id`, and the command line.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from models.data.generate import TABLES, generate
from models.data.postgres import COUNTS_TABLE, INDEXES, SCHEMA_VERSION, connect, load_dataset, migrate
from services.cli import main as pmis

SMALL = dict(students=300, internships=60, companies=12, seed=11, progress=False, catalog=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("pg") / "data"
    generate(data, **SMALL)
    return data


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    """The same data as `dataset` (same seed and sizes), written as CSV."""
    data = tmp_path_factory.mktemp("pg") / "data"
    generate(data, fmt="csv", **SMALL)
    return data


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """`pmis` in a home of its own, with no database URL in the environment."""
    monkeypatch.setenv("PMIS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PMIS_DATABASE_URL", raising=False)


def sql(url: str, query: str, params=()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def table_rows(url: str) -> dict[str, int]:
    return {t: sql(url, f'SELECT count(*) FROM "{t}"')[0][0] for t in TABLES}


def file_rows(data: Path) -> dict[str, int]:
    return {t: pq.ParquetFile(data / f"{t}.parquet").metadata.num_rows for t in TABLES}


def stored_counts(url: str) -> dict[str, tuple[int, int]]:
    return {i: (a, s) for i, a, s in sql(url, f"SELECT internship_id, applicants, selected FROM {COUNTS_TABLE}")}


def expected_counts(data: Path) -> dict[str, tuple[int, int]]:
    """Applications per internship (interactions with event='apply') and SUM(selected) of outcomes."""
    inter = pd.read_parquet(data / "interactions.parquet", columns=["internship_id", "event"])
    outcomes = pd.read_parquet(data / "outcomes.parquet", columns=["internship_id", "selected"])
    both = pd.concat([inter[inter.event == "apply"].groupby("internship_id").size().rename("applicants"),
                      outcomes.groupby("internship_id")["selected"].sum().rename("selected")], axis=1)
    return {i: (int(a), int(s)) for i, a, s in both.fillna(0).itertuples()}


def epoch_seconds(column: pd.Series) -> list[int]:
    return (column.astype("int64") // 10**6).tolist()  # datetime64[us, UTC] -> seconds


def copy_dataset(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# Schema and migrations

def test_migrate_is_idempotent_and_records_the_version(pg_url):
    with psycopg.connect(pg_url) as conn:
        assert migrate(conn) == SCHEMA_VERSION
    sql(pg_url, "INSERT INTO students (student_id, skills) VALUES ('S1', 'python;sql')")
    with psycopg.connect(pg_url) as conn:
        assert migrate(conn) == SCHEMA_VERSION  # again: nothing recreated, nothing lost
    assert sql(pg_url, "SELECT version FROM pmis_schema") == [(SCHEMA_VERSION,)]
    assert sql(pg_url, "SELECT student_id, skills FROM students") == [("S1", "python;sql")]
    tables = {r[0] for r in sql(pg_url, "SELECT table_name FROM information_schema.tables "
                                        "WHERE table_schema = current_schema()")}
    assert tables == {*TABLES, COUNTS_TABLE, "pmis_schema"}
    columns = sql(pg_url, "SELECT column_name, data_type FROM information_schema.columns WHERE "
                          "table_schema = current_schema() AND table_name = 'interactions' ORDER BY ordinal_position")
    assert columns == [("id", "bigint"), ("event_id", "text"), ("student_id", "text"), ("internship_id", "text"),
                       ("event", "text"), ("timestamp", "bigint")]


def test_a_newer_schema_is_refused_and_left_alone(pg_url):
    with psycopg.connect(pg_url) as conn:
        migrate(conn)
    sql(pg_url, "UPDATE pmis_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with psycopg.connect(pg_url) as conn, pytest.raises(RuntimeError, match=rf"version {SCHEMA_VERSION + 1}, newer "
                                                                             rf"than this code's {SCHEMA_VERSION}"):
        migrate(conn)
    assert sql(pg_url, "SELECT version FROM pmis_schema") == [(SCHEMA_VERSION + 1,)]


# ----------------------------------------------------------------------------------------------
# The bulk load

def test_load_fills_every_table_with_the_files_rows_and_values(pg_url, dataset):
    expected = file_rows(dataset)
    assert load_dataset(pg_url, dataset, progress=False) == expected
    assert table_rows(pg_url) == expected
    assert all(expected[t] > 0 for t in TABLES)
    # values in the storage convention: lists ';'-joined, booleans 0/1, times epoch seconds
    students = pd.read_parquet(dataset / "students.parquet").sort_values("student_id")
    stored = sql(pg_url, "SELECT student_id, skills, rural, cgpa FROM students ORDER BY student_id")
    assert stored == list(zip(students.student_id, (";".join(s) for s in students.skills),
                              students.rural.astype(int), students.cgpa))
    inter = pd.read_parquet(dataset / "interactions.parquet")
    assert sorted(sql(pg_url, "SELECT student_id, internship_id, event, timestamp FROM interactions")) == \
        sorted(zip(inter.student_id, inter.internship_id, inter.event, epoch_seconds(inter.timestamp)))


def test_counts_equal_the_aggregates_and_indexes_and_triggers_exist(pg_url, dataset):
    load_dataset(pg_url, dataset, progress=False)
    expected = expected_counts(dataset)
    assert sum(a for a, _ in expected.values()) > 0 and sum(s for _, s in expected.values()) > 0
    assert stored_counts(pg_url) == expected
    indexes = {r[0] for r in sql(pg_url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert {f"idx_{name}" for name in INDEXES} <= indexes
    triggers = sql(pg_url, "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON "
                           "c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace "
                           "ORDER BY 1")
    assert triggers == [("interactions", "pmis_interactions_count", "O"), ("outcomes", "pmis_outcomes_count", "O")]


def test_inserts_after_the_load_are_counted_by_the_triggers(pg_url, dataset):
    load_dataset(pg_url, dataset, progress=False)
    before = stored_counts(pg_url)
    iid = next(iter(before))
    insert = "INSERT INTO interactions (student_id, internship_id, event, timestamp) VALUES (%s, %s, %s, 1767225600)"
    sql(pg_url, insert, ("S0000001", iid, "apply"))
    sql(pg_url, insert, ("S0000001", iid, "view"))  # not an application
    sql(pg_url, insert, ("S0000001", "I999999", "apply"))  # an internship with no counters yet
    sql(pg_url, "INSERT INTO outcomes (student_id, internship_id, selected) VALUES ('S0000002', %s, 1)", (iid,))
    after = stored_counts(pg_url)
    assert after[iid] == (before[iid][0] + 1, before[iid][1] + 1)
    assert after.pop("I999999") == (1, 0)
    assert {i: c for i, c in after.items() if i != iid} == {i: c for i, c in before.items() if i != iid}


def test_a_second_load_replaces_the_rows(pg_url, dataset):
    load_dataset(pg_url, dataset, progress=False)
    sql(pg_url, "INSERT INTO students (student_id, skills) VALUES ('S9999999', 'extra')")
    sql(pg_url, "INSERT INTO interactions (student_id, internship_id, event, timestamp) "
                "VALUES ('S9999999', 'I000001', 'apply', 1)")
    assert load_dataset(pg_url, dataset, progress=False) == file_rows(dataset)
    assert table_rows(pg_url) == file_rows(dataset)
    assert sql(pg_url, "SELECT count(*) FROM students WHERE student_id = 'S9999999'") == [(0,)]
    assert stored_counts(pg_url) == expected_counts(dataset)


def test_a_failed_load_leaves_the_previous_catalog(pg_url, dataset, tmp_path):
    load_dataset(pg_url, dataset, progress=False)
    bad = copy_dataset(dataset, tmp_path / "bad")
    interactions = pd.read_parquet(bad / "interactions.parquet")
    interactions.loc[len(interactions) - 1, "student_id"] = None  # a required column: NOT NULL
    interactions.to_parquet(bad / "interactions.parquet")
    with pytest.raises(psycopg.errors.NotNullViolation):
        load_dataset(pg_url, bad, progress=False)
    assert table_rows(pg_url) == file_rows(dataset)
    assert stored_counts(pg_url) == expected_counts(dataset)


def test_a_folder_without_the_required_tables_is_refused_before_anything_changes(pg_url, dataset, tmp_path):
    load_dataset(pg_url, dataset, progress=False)
    partial = copy_dataset(dataset, tmp_path / "partial")
    (partial / "interactions.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no interactions table"):
        load_dataset(pg_url, partial, progress=False)
    assert table_rows(pg_url) == file_rows(dataset)


# ----------------------------------------------------------------------------------------------
# What the contract allows: CSV, absent optional columns, its other spellings

def test_a_csv_dataset_loads_the_same_values(pg_url, dataset, csv_dataset):
    assert sorted(p.suffix for p in csv_dataset.glob("*.*") if p.stem in TABLES) == [".csv"] * 5
    assert load_dataset(pg_url, csv_dataset, progress=False) == file_rows(dataset)
    internships = pd.read_parquet(dataset / "internships.parquet").sort_values("internship_id")
    stored = sql(pg_url, "SELECT internship_id, skills, remote, posted_at, deadline, latitude FROM internships "
                         "ORDER BY internship_id")
    assert stored == list(zip(internships.internship_id, (";".join(s) for s in internships.skills),
                              internships.remote.astype(int), epoch_seconds(internships.posted_at),
                              epoch_seconds(internships.deadline), internships.latitude))
    assert stored_counts(pg_url) == expected_counts(dataset)


def test_absent_optional_columns_load_as_null(pg_url, dataset, tmp_path):
    lean = copy_dataset(dataset, tmp_path / "lean")
    students = pd.read_parquet(lean / "students.parquet").drop(columns=["latitude", "longitude"])
    students.to_parquet(lean / "students.parquet")
    (lean / "companies.parquet").unlink()  # an optional table
    counts = load_dataset(pg_url, lean, progress=False)
    assert "companies" not in counts and counts["students"] == len(students)
    assert sql(pg_url, "SELECT count(*), count(latitude), count(longitude), count(cgpa), count(state) "
                       "FROM students") == [(len(students), 0, 0, students.cgpa.notna().sum(), len(students))]
    assert sql(pg_url, "SELECT count(*) FROM companies") == [(0,)]


def test_the_contracts_other_spellings_load(pg_url, dataset, tmp_path):
    """Integers written as floats (with a gap), yes/no booleans, epoch-second times: all valid input."""
    odd = copy_dataset(dataset, tmp_path / "odd")
    students = pd.read_parquet(odd / "students.parquet").sort_values("student_id", ignore_index=True)
    tiers = students.college_tier.astype("float64")
    tiers[0] = np.nan
    students.assign(college_tier=tiers, rural=students.rural.map({True: " Yes", False: "no"})).to_parquet(
        odd / "students.parquet")
    inter = pd.read_parquet(odd / "interactions.parquet")
    inter.assign(timestamp=epoch_seconds(inter.timestamp)).to_parquet(odd / "interactions.parquet")
    load_dataset(pg_url, odd, progress=False)
    stored = sql(pg_url, "SELECT college_tier, rural FROM students ORDER BY student_id")
    assert stored == [(None if i == 0 else int(t), int(r)) for i, (t, r) in enumerate(zip(tiers, students.rural))]
    assert sql(pg_url, "SELECT min(timestamp), max(timestamp), count(*) FROM interactions") == \
        [(min(epoch_seconds(inter.timestamp)), max(epoch_seconds(inter.timestamp)), len(inter))]


# ----------------------------------------------------------------------------------------------
# interactions.event_id

def test_event_id_is_unique_and_a_retry_is_stored_and_counted_once(pg_url):
    with psycopg.connect(pg_url) as conn:
        migrate(conn)
    insert = ("INSERT INTO interactions (event_id, student_id, internship_id, event, timestamp) "
              "VALUES (%s, 'S0000001', 'I000001', 'apply', 1767225600)")
    sql(pg_url, insert, ("e-1",))
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql(pg_url, insert, ("e-1",))
    sql(pg_url, insert + " ON CONFLICT (event_id) DO NOTHING", ("e-1",))
    sql(pg_url, insert + " ON CONFLICT (event_id) DO NOTHING", ("e-2",))
    sql(pg_url, insert, (None,))  # no id: never a conflict
    sql(pg_url, insert, (None,))
    assert sql(pg_url, "SELECT event_id, count(*) FROM interactions GROUP BY 1 ORDER BY 1") == \
        [("e-1", 1), ("e-2", 1), (None, 2)]
    assert stored_counts(pg_url) == {"I000001": (4, 0)}


# ----------------------------------------------------------------------------------------------
# pmis db

def test_cli_migrates_and_loads(pg_url, dataset, cli_env, capsys):
    assert pmis(["db", "migrate", "--database-url", pg_url]) == 0
    assert capsys.readouterr().out == f"database schema at version {SCHEMA_VERSION} (catalog, registry and job table)\n"
    with connect(pg_url) as conn:  # the registry's and the job table's tables too
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert {"internships", "interactions", "jobs"} <= tables and any("alias" in t for t in tables), tables
    assert pmis(["db", "load", "--data", str(dataset), "--database-url", pg_url, "--quiet"]) == 0
    out = capsys.readouterr()
    printed = {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^(\w+) +([\d,]+) rows$", out.out, re.M)}
    assert printed == file_rows(dataset) == table_rows(pg_url)
    assert re.search(rf"^loaded {re.escape(str(dataset))} in \d+\.\d s$", out.out, re.M)
    assert out.err == ""  # --quiet: no progress bars


def test_cli_takes_the_url_from_the_environment(pg_url, dataset, cli_env, monkeypatch, capsys):
    monkeypatch.setenv("PMIS_DATABASE_URL", pg_url)
    assert pmis(["db", "load", "--data", str(dataset), "--quiet"]) == 0
    assert table_rows(pg_url) == file_rows(dataset)
    assert "loaded" in capsys.readouterr().out


@pytest.mark.parametrize("url, says", [
    (None, "no database: pass --database-url postgresql://... or set PMIS_DATABASE_URL"),
    ("var/data/catalog.db", "pmis db needs a postgresql:// URL (--database-url or PMIS_DATABASE_URL), not a path"),
])
@pytest.mark.parametrize("command", [["migrate"], ["load", "--quiet"]])
def test_cli_without_a_postgresql_url_says_so(command, url, says, cli_env, capsys):
    argv = ["db", *command] + (["--database-url", url] if url else [])
    assert pmis(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"error: {says}") and out.err.count("\n") == 1


def test_cli_database_errors_are_one_line(pg_url, dataset, tmp_path, cli_env, capsys):
    nowhere = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1: refused at once
    assert pmis(["db", "migrate", "--database-url", nowhere]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: database: connection failed:") and "Connection refused" in err
    assert err.count("\n") == 1 and "Traceback" not in err

    with psycopg.connect(pg_url) as conn:
        migrate(conn)
    sql(pg_url, "UPDATE pmis_schema SET version = %s", (SCHEMA_VERSION + 1,))
    assert pmis(["db", "load", "--data", str(dataset), "--database-url", pg_url, "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: the database's schema is version {SCHEMA_VERSION + 1}, newer than "
                                       f"this code's {SCHEMA_VERSION}: upgrade the code\n")
    assert table_rows(pg_url)["students"] == 0

    assert pmis(["db", "load", "--data", str(tmp_path / "nothing"), "--database-url", pg_url, "--quiet"]) == 2
    assert "is not a dataset folder" in capsys.readouterr().err
