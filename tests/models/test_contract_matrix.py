"""Every dataset that conforms to the input contract trains: each optional column removed alone,
all of them removed together, the optional tables absent, optional list columns empty, text
columns all null. Validation passes (saying once what is dropped) and training writes four
bundles; what the contract does not allow fails with file, row and column, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from models.data.contract import validate
from models.data.generate import generate
from models.data.schema import LIST, SCHEMA, STRING
from models.training.train import train
from tests.support.configs import small_train_config

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL_TABLES = ("companies", "outcomes")


def optional_columns(table: str, kind: str | None = None) -> list[str]:
    return [c.name for c in SCHEMA[table] if not c.required and (kind is None or c.kind == kind)]


def drop_columns(table: str, *columns: str):
    def change(tables: dict) -> None:
        tables[table] = tables[table].drop(columns=list(columns))
    return change


def drop_every_optional_column(tables: dict) -> None:
    for name, df in tables.items():
        tables[name] = df.drop(columns=[c for c in optional_columns(name) if c in df.columns])


def drop_tables(*names: str):
    def change(tables: dict) -> None:
        for name in names:
            del tables[name]
    return change


def set_every(kind: str, value_for):
    def change(tables: dict) -> None:
        for name, df in tables.items():
            for column in optional_columns(name, kind):
                df[column] = pd.Series([value_for() for _ in range(len(df))], dtype=object)
    return change


CASES = {
    **{f"no {t}.{c}": drop_columns(t, c) for t in SCHEMA if t != "interactions" for c in optional_columns(t)},
    "no optional column anywhere": drop_every_optional_column,
    **{f"no {t} table": drop_tables(t) for t in OPTIONAL_TABLES},
    "no optional table": drop_tables(*OPTIONAL_TABLES),
    "no optional column and no optional table": lambda t: (drop_tables(*OPTIONAL_TABLES)(t),
                                                           drop_every_optional_column(t)),
    "optional list columns empty": set_every(LIST, list),
    "optional text columns all null": set_every(STRING, lambda: None),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("matrix") / "data"
    generate(out, students=240, internships=50, seed=5, fmt="parquet", progress=False, catalog=False)
    return out


def variant(source: Path, out: Path, change) -> Path:
    tables = {p.stem: pd.read_parquet(p) for p in source.glob("*.parquet")}
    change(tables)
    out.mkdir(parents=True)
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    return out


def quick_config(data: Path, root: Path):
    return small_train_config(data, root, success_algorithms=("logistic_regression",), cv_folds=2,
                              max_eval_students=300)


@pytest.mark.parametrize("case", list(CASES))
def test_conforming_dataset_validates_and_trains(case, source, tmp_path):
    data = variant(source, tmp_path / "data", CASES[case])
    report = validate(data)
    assert report.ok, report.errors
    assert len(report.notes) == len(set(report.notes)), report.notes  # each said once
    result = train(quick_config(data, tmp_path))
    outcomes_absent = "no outcomes table" in case or "no optional table" in case
    expected = {"content", "collaborative", "ranker"} | (set() if outcomes_absent else {"success"})
    assert set(result["bundles"]) == expected, result["bundles"]


def test_what_is_dropped_is_said_once(source, tmp_path):
    data = variant(source, tmp_path / "data", drop_every_optional_column)
    notes = validate(data).notes
    assert any("cgpa" in n and "dropped" in n for n in notes), notes
    assert any("field of study" in n for n in notes), notes
    assert len(notes) == len(set(notes)), notes


@pytest.mark.parametrize("table, column", [("students", "skills"), ("internships", "title")])
def test_a_required_value_missing_is_reported_with_file_row_and_column(source, tmp_path, table, column):
    def blank_third_row(tables: dict) -> None:
        df = tables[table]
        df[column] = df[column].astype(object)
        df.at[2, column] = [] if column == "skills" else None
    data = variant(source, tmp_path / "data", blank_third_row)
    report = validate(data)
    assert [(p.file, p.row, p.column) for p in report.errors] == [(f"{table}.parquet", 3, column)], report.errors


def test_pmis_train_without_field_and_description_exits_cleanly(source, tmp_path):
    """The two crashes a real dataset hit: a students table without `field`, an internships table
    without `description`."""
    data = variant(source, tmp_path / "data", lambda t: (drop_columns("students", "field")(t),
                                                         drop_columns("internships", "description")(t)))
    done = subprocess.run([sys.executable, "-m", "services.cli", "train", "--data", str(data), "--bundles",
                           str(tmp_path / "bundles"), "--runs", str(tmp_path / "runs"), "--quiet",
                           "--search-budget", "1", "--cv-folds", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "field of study in the content profile is dropped" in done.stdout + done.stderr
