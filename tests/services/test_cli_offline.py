"""`pmis generate`, `validate`, `train`, `run` and `evaluate` as a user runs them: what they print and their exit codes."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.cli import COMPONENTS, Home, fails, home, ok, pmis, run_id  # noqa: F401 (fixtures)


# --------------------------------------------------------------------------- generate, validate


def test_generate_writes_the_dataset_and_prints_its_summary(home):
    m = re.fullmatch(r"generated (\S+): 300 students, 80 internships, (\d+) interactions, selection rate (0\.\d{3})\n",
                     home.generated.stdout)
    assert m and Path(m[1]) == home.data, home.generated.stdout
    summary = json.loads(home.dataset_json)
    assert summary["rows"]["students"] == 300 and summary["rows"]["internships"] == 80
    assert int(m[2]) == summary["rows"]["interactions"] > 0
    assert float(m[3]) == pytest.approx(summary["selection_rate"], abs=5e-4)
    for table in ("students", "internships", "companies", "interactions", "outcomes"):
        assert (home.data / f"{table}.parquet").is_file(), table
    assert len(pd.read_parquet(home.data / "interactions.parquet")) == summary["rows"]["interactions"]
    with closing(sqlite3.connect(home.catalog)) as con:  # the gateway's catalog comes with the data
        assert con.execute("SELECT COUNT(*) FROM students").fetchone()[0] == 300
    assert not home.generated.stderr.strip()  # --quiet: no progress bars


def test_generate_csv_prints_the_json_summary_and_refuses_to_overwrite(tmp_path):
    data = tmp_path / "csv"
    summary = json.loads(ok(pmis(tmp_path, "generate", "--data", data, "--students", 120, "--internships", 40,
                                 "--format", "csv", "--seed", 3)))
    assert summary["format"] == "csv" and summary["seed"] == 3 and summary["rows"]["students"] == 120
    assert summary == json.loads((data / "dataset.json").read_text())
    assert len(pd.read_csv(data / "students.csv")) == 120
    before = (data / "students.csv").read_bytes()
    again = fails(pmis(tmp_path, "generate", "--data", data, "--students", 50, "--quiet"))
    assert f"error: {data} exists and is not empty" in again
    assert (data / "students.csv").read_bytes() == before
    assert "students must be in 1..9,999,999" in fails(pmis(tmp_path, "generate", "--data", tmp_path / "none",
                                                            "--students", 0, "--quiet"))
    assert not (tmp_path / "none").exists()


def test_validate_accepts_the_generated_dataset(home):
    out = ok(pmis(home.root, "validate"))
    m = re.search(r"^ok: (\S+) follows the input contract \((\{.*\})\)$", out, re.M)
    assert m and Path(m[1]) == home.data, out
    assert json.loads(m[2]) == json.loads(home.dataset_json)["rows"]


def test_validate_names_file_row_and_column_of_every_error(tmp_path):
    data = tmp_path / "data"
    ok(pmis(tmp_path, "generate", "--data", data, "--students", 120, "--internships", 40, "--format", "csv",
            "--quiet"))
    inter = pd.read_csv(data / "interactions.csv", dtype=str, keep_default_na=False)
    inter.loc[10, "event"] = "click"
    inter.loc[20, "student_id"] = "S9999999"
    inter.to_csv(data / "interactions.csv", index=False)
    out = pmis(tmp_path, "validate", "--data", data)
    text = fails(out)
    assert "interactions.csv, row 11, column event: 'click' is not one of view, save, apply" in out.stderr
    assert "interactions.csv, row 21, column student_id: 'S9999999' not found in students.csv" in out.stderr
    assert "ok:" not in text
    missing = fails(pmis(tmp_path, "validate", "--data", tmp_path / "empty"))
    assert "students.parquet|csv: required table not found" in missing


# --------------------------------------------------------------------------- train, run


def test_train_registers_every_component_and_prints_the_report(home):
    out = home.trained.stdout
    rid, report_dir = run_id(out)
    assert report_dir.parent == home.root / "runs"  # $PMIS_HOME/runs by default
    report = json.loads((report_dir / "report.json").read_text())
    assert (report_dir / "report.md").is_file()
    assert "Ranking on the test window:" in out and "Success predictor" in out and "Timings (s):" in out
    ranker = re.search(r"^ranker\s+(0\.\d{4})\s+(0\.\d{4})", out, re.M)
    assert ranker and float(ranker[2]) == pytest.approx(report["ranking"]["ranker"]["ndcg@10"], abs=1e-4)
    reg = home.registry
    assert sorted(reg.components()) == list(COMPONENTS)
    for component in COMPONENTS:
        v1 = reg.get(component, 1)
        assert v1["run_id"] == rid and v1["metrics"], component
        assert Path(v1["path"]).is_relative_to(home.bundles)


def test_train_without_data_says_what_is_missing(tmp_path):
    out = fails(pmis(tmp_path, "train", "--search-budget", 1, "--quiet"))
    assert f"interactions.parquet|csv: required table not found in {tmp_path / 'data'}" in out
    assert not list((tmp_path / "bundles").glob("*/*/manifest.json"))


def test_run_trains_on_the_existing_dataset_without_regenerating_it(home):
    out = home.ran.stdout
    assert "generating" not in out
    rid, report_dir = run_id(out)
    assert rid != run_id(home.trained.stdout)[0] and (report_dir / "report.json").is_file()
    assert (home.data / "dataset.json").read_text() == home.dataset_json
    reg = home.registry
    for component in COMPONENTS:  # a second version of each, made champion
        champion = reg.resolve(component)
        assert (champion["version"], champion["run_id"]) == (2, rid), component


def test_run_generates_only_into_an_empty_folder(tmp_path):
    """On a folder without a students table `pmis run` generates the default dataset (conftest's
    `default_report` runs that whole path); a folder holding something else is not overwritten."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    text = fails(pmis(tmp_path, "run", "--quiet"))
    assert f"no dataset in {tmp_path / 'data'}: generating the default one" in text
    assert f"error: {tmp_path / 'data'} exists and is not empty" in text
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["notes.txt"]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- evaluate


def holdout_file(home: Home, path: Path, students: int = 100) -> pd.DataFrame:
    """Later applications of known students to internships they never touched."""
    inter = pd.read_parquet(home.data / "interactions.parquet")
    items = pd.read_parquet(home.data / "internships.parquet")["internship_id"].to_numpy()
    rng = np.random.default_rng(0)
    ids = inter["student_id"].unique()[:students]
    held = pd.DataFrame({"student_id": np.repeat(ids, 3), "internship_id": rng.choice(items, 3 * len(ids)),
                         "event": "apply", "timestamp": "2025-08-01T10:00:00Z"})
    held = held.merge(inter[["student_id", "internship_id"]].drop_duplicates(), how="left", indicator=True)
    held = held[held["_merge"] == "left_only"].drop(columns="_merge").drop_duplicates(["student_id", "internship_id"])
    held.to_csv(path, index=False)
    return held


def test_evaluate_prints_the_table_and_writes_the_json(home, tmp_path):
    held = holdout_file(home, tmp_path / "holdout.csv")
    out = ok(pmis(home.root, "evaluate", "--holdout", tmp_path / "holdout.csv", "--k", 5,
                  "--output", tmp_path / "eval.json"))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["students"] == held["student_id"].nunique()
    assert f"Held-out file {tmp_path / 'holdout.csv'}: {result['students']} students with relevant items" in out
    assert re.search(r"^model\s+Recall@5\s+NDCG@5\s+MAP@5\s+coverage\s+students", out, re.M), out
    for model in ("popularity", "content", "collaborative", "blend", "ranker"):
        m = result["ranking"][model]
        assert 0 <= m["recall@5"] <= 1 and 0 <= m["ndcg@5"] <= 1, model
        row = re.search(rf"^{model}\s+(\S+)\s+(\S+)", out, re.M)
        assert row and float(row[1]) == pytest.approx(m["recall@5"], abs=1e-4), model


def test_evaluate_refuses_bad_or_missing_input_without_a_traceback(home, tmp_path):
    held = holdout_file(home, tmp_path / "holdout.csv", students=20).reset_index(drop=True)
    held.loc[3, "event"] = "click"
    held.to_csv(tmp_path / "bad.csv", index=False)
    assert "bad.csv, row 4, column event" in fails(pmis(home.root, "evaluate", "--holdout", tmp_path / "bad.csv"))
    assert "No such file" in fails(pmis(home.root, "evaluate", "--holdout", tmp_path / "none.csv"))
    no_models = fails(pmis(home.root, "evaluate", "--holdout", tmp_path / "holdout.csv",
                           "--bundles", tmp_path / "empty"))
    assert "no champion bundle for collaborative, content, ranker; run `pmis train` first" in no_models
