"""Data and retraining triggers: DataQuality names file, row and column; the trigger check counts
new rows and the champion's age; `pmis retrain --if-needed` and the CheckTriggers RPC log every
decision, and CheckTriggers starts at most one job.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from models.bundle.registry import Registry
from models.lifecycle.store import JobStore
from tests.support.trainer import AUTH, T, config, violations_of


def test_data_quality_reports_file_row_column(trainer):
    stub, system = trainer.stub, trainer.system
    ok = stub.DataQuality(T.DataQualityRequest(data_source=str(system.data)), timeout=60)
    assert ok.ok and ok.rows["students"] == 600 and ok.data_version and not ok.errors
    broken = system.root / "broken"
    shutil.copytree(system.data, broken)
    inter = pd.read_parquet(broken / "interactions.parquet")
    inter.loc[4, "student_id"] = "S9999999"
    inter.to_parquet(broken / "interactions.parquet", index=False)
    report = stub.DataQuality(T.DataQualityRequest(data_source=str(broken)), timeout=60)
    assert not report.ok and report.data_version == ""
    problem = next(e for e in report.errors if e.column == "student_id")
    assert problem.file == "interactions.parquet" and problem.row == 5 and "S9999999" in problem.message
    assert violations_of(lambda: stub.DataQuality(T.DataQualityRequest(data_source="/usr"), timeout=10)) == \
        {"data_source"}


def _grow(data: Path, dest: Path, interactions: int, outcomes: int) -> Path:
    """A copy of `data` with later interactions (and outcomes for applications among them)."""
    shutil.copytree(data, dest)
    inter = pd.read_parquet(dest / "interactions.parquet")
    extra = inter.sample(interactions, random_state=0).copy()
    latest = pd.to_datetime(inter["timestamp"]).max()
    extra["timestamp"] = latest + pd.to_timedelta(range(1, interactions + 1), unit="min")
    extra["event"] = "apply"
    extra = extra.drop_duplicates(["student_id", "internship_id"])
    pd.concat([inter, extra]).to_parquet(dest / "interactions.parquet", index=False)
    out = pd.read_parquet(dest / "outcomes.parquet")
    new = extra[["student_id", "internship_id"]].merge(out[["student_id", "internship_id"]], how="left",
                                                      indicator=True)
    new = new[new["_merge"] == "left_only"].drop(columns="_merge").head(outcomes)
    template = out.iloc[[0] * len(new)].reset_index(drop=True)
    template[["student_id", "internship_id"]] = new.reset_index(drop=True)
    pd.concat([out, template]).to_parquet(dest / "outcomes.parquet", index=False)
    return dest


def test_retraining_triggers_count_new_rows_and_age(tiny_copy, tmp_path):
    from models.lifecycle.triggers import check

    registry = Registry(tiny_copy.bundles / "registry.db")
    same = check(tiny_copy.data, registry, min_new_interactions=10, min_new_outcomes=10, max_age_hours=24)
    assert same["should_train"] is False and same["new_interactions"] == 0
    assert "no new data" in same["reasons"][0]
    old = check(tiny_copy.data, registry, min_new_interactions=10, min_new_outcomes=10, max_age_hours=24,
                now=datetime.now(timezone.utc) + timedelta(hours=30))
    assert old["should_train"] and any("old" in r for r in old["reasons"])

    grown = _grow(tiny_copy.data, tmp_path / "grown", interactions=120, outcomes=40)
    added = (len(pd.read_parquet(grown / "interactions.parquet"))
             - len(pd.read_parquet(tiny_copy.data / "interactions.parquet")))
    more = check(grown, registry, min_new_interactions=added, min_new_outcomes=1000, max_age_hours=24)
    assert more["should_train"] and more["new_interactions"] == added and more["new_outcomes"] == 40
    assert more["current_data_version"] != more["champion_data_version"]
    assert f"{added} new interactions" in more["reasons"][0]
    fewer = check(grown, registry, min_new_interactions=added + 1, min_new_outcomes=41, max_age_hours=24)
    assert fewer["should_train"] is False and f"only {added} new interactions" in fewer["reasons"][0]
    by_outcomes = check(grown, registry, min_new_interactions=10_000, min_new_outcomes=40, max_age_hours=24)
    assert by_outcomes["should_train"] and "40 new outcomes" in by_outcomes["reasons"][0]
    empty = Registry(tmp_path / "empty" / "registry.db")
    assert check(tiny_copy.data, empty)["reasons"] == ["no champion is active for any component"]


def test_pmis_retrain_if_needed_logs_its_decision(tiny_copy, tmp_path, capsys):
    from services.cli import main

    args = ["retrain", "--if-needed", "--data", str(tiny_copy.data), "--bundles", str(tiny_copy.bundles), "--runs",
            str(tiny_copy.runs), "--min-new-interactions", "50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("no retraining needed") and "no new data" in out
    grown = _grow(tiny_copy.data, tmp_path / "grown", interactions=80, outcomes=5)
    assert main(["retrain", "--dry-run", "--data", str(grown), "--bundles", str(tiny_copy.bundles), "--runs",
                 str(tiny_copy.runs), "--min-new-interactions", "50"]) == 0
    assert capsys.readouterr().out.startswith("retraining (check")
    log = JobStore(tiny_copy.bundles / "registry.db").triggers(2)
    assert [t["should_train"] for t in log] == [True, False] and all(t["source"] == "cli" for t in log)
    assert log[0]["details"]["new_interactions"] >= 50 and log[0]["job_id"] is None  # dry run: no job


def test_check_triggers_rpc_starts_one_job_when_needed(trainer):
    stub = trainer.stub
    first = stub.CheckTriggers(T.CheckTriggersRequest(max_age_hours=1e-6, start_if_needed=True, config=config()),
                               metadata=AUTH, timeout=60)
    assert first.should_train and first.job_id and first.source == "rpc"
    second = stub.CheckTriggers(T.CheckTriggersRequest(max_age_hours=1e-6, start_if_needed=True, config=config()),
                                metadata=AUTH, timeout=60)
    assert second.should_train and second.job_id == "" and any(first.job_id in r for r in second.reasons)
    job = stub.GetJob(T.GetJobRequest(job_id=first.job_id), timeout=10)
    assert job.source == "trigger" and "old" in job.reason
    stub.CancelJob(T.CancelJobRequest(job_id=first.job_id), metadata=AUTH, timeout=30)
    log = trainer.store.triggers(2)
    assert log[1]["job_id"] == first.job_id and log[0]["job_id"] is None
    status = stub.Status(T.StatusRequest(), timeout=10)
    assert status.last_trigger_check.check_id == second.check_id
    assert violations_of(lambda: stub.CheckTriggers(T.CheckTriggersRequest(min_new_outcomes=-1), timeout=10)) == \
        {"min_new_outcomes"}
