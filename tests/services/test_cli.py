"""Every `pmis` subcommand (but `pmis up`, tests/e2e/test_up.py) as a user runs it: a real process,
small data, quick flags; what it prints and its exit code, on success and on the usual mistakes.

One tiny home is made by the CLI itself and shared by the module: `pmis generate` (300 students x
80 internships), `pmis train` (v1 of every component), `pmis run` on the existing data (v2). The
serving tests put the in-process servers on the bundles the CLI trained. Tests that change a
registry (activate, rollback, retrain) work on a private copy of the bundles.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.lifecycle.store import JobStore
from models.bundle.registry import Registry
from tests.support.loopback import running_system
from tests.support.systems import copy_bundles

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("collaborative", "content", "ranker", "success")
# Nothing listens on port 1 of the loopback interface (privileged, never a server's): refused at once.
NOWHERE = "127.0.0.1:1"


def pmis(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pmis ARGS` with PMIS_HOME=home, from the repository root; the signing key of the suite is inherited."""
    env = {**os.environ, "PMIS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for name in ("PMIS_BUNDLES", "PMIS_RETRAIN_MIN_INTERACTIONS", "PMIS_RETRAIN_MIN_OUTCOMES",
                 "PMIS_RETRAIN_MAX_AGE_HOURS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "services.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


def fails(out: subprocess.CompletedProcess, code: int = 2) -> str:
    """A refused command: the exit code, one clear message, no traceback; the message."""
    assert out.returncode == code, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    return out.stdout + out.stderr


@dataclass
class Home:
    root: Path
    generated: subprocess.CompletedProcess
    trained: subprocess.CompletedProcess
    ran: subprocess.CompletedProcess
    dataset_json: str  # as `pmis generate` wrote it, before `pmis run`

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def catalog(self) -> Path:  # running_system() serves .bundles with a gateway over .catalog
        return self.data / "catalog.db"

    @property
    def registry(self) -> Registry:
        return Registry(self.bundles / "registry.db")

    def private(self, dest: Path) -> Path:
        """A home of its own: these data (read only), a copy of these bundles and registry."""
        dest.mkdir(parents=True, exist_ok=True)
        copy_bundles(self.bundles, dest / "bundles")
        (dest / "data").symlink_to(self.data, target_is_directory=True)
        return dest


def run_id(stdout: str) -> tuple[str, Path]:
    """`run RUN_ID  (report: PATH)`, the first line of the training summary."""
    m = re.match(r"run (\S+)\s+\(report: (.+)\)\n", stdout)
    assert m, stdout[:300]
    return m[1], Path(m[2])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    """The tiny home, every path from PMIS_HOME (no --data/--bundles/--runs)."""
    root = tmp_path_factory.mktemp("cli_home")
    generated = pmis(root, "generate", "--students", 300, "--internships", 80, "--quiet")
    ok(generated)
    dataset_json = (root / "data" / "dataset.json").read_text()
    trained = pmis(root, "train", "--search-budget", 1, "--cv-folds", 3, "--quiet")
    ok(trained)
    ran = pmis(root, "run", "--search-budget", 1, "--cv-folds", 3, "--quiet")
    ok(ran)
    return Home(root, generated, trained, ran, dataset_json)


@pytest.fixture(scope="module")
def served(home):
    """The four components on the bundles the CLI trained and a gateway over the CLI's catalog."""
    with running_system(home) as system:
        yield system


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


# --------------------------------------------------------------------------- models


def test_models_list_show_and_compare(home):
    reg = home.registry
    listed = ok(pmis(home.root, "models", "list")).splitlines()
    assert len(listed) == 2 * len(COMPONENTS)
    rows = {(line.split()[0], line.split()[1]): line for line in listed}
    assert set(rows) == {(c, f"v{v}") for c in COMPONENTS for v in (1, 2)}
    for component in COMPONENTS:
        assert rows[(component, "v2")].endswith("champion") and "champion" not in rows[(component, "v1")]
    only = ok(pmis(home.root, "models", "list", "ranker")).splitlines()
    assert [line.split()[:2] for line in only] == [["ranker", "v2"], ["ranker", "v1"]]

    shown = json.loads(ok(pmis(home.root, "models", "show", "content", 2)))
    assert shown == json.loads(json.dumps(reg.get("content", 2), default=str))
    assert shown["aliases"] == ["champion"] and shown["run_id"] == run_id(home.ran.stdout)[0]
    assert "ndcg@10" in shown["metrics"]

    compared = ok(pmis(home.root, "models", "compare", "content", "--versions", 1, 2)).splitlines()
    assert compared[0].split() == ["metric", "v1", "v2"]
    table = {line.split()[0]: line.split()[1:] for line in compared[1:]}
    for v, cell in zip((1, 2), table["ndcg@10"]):
        assert float(cell) == pytest.approx(reg.get("content", v)["metrics"]["ndcg@10"], abs=1e-4)
    assert table["students"] == [str(reg.get("content", 1)["metrics"]["students"])] * 2
    # without --versions: every registered version, oldest first
    assert ok(pmis(home.root, "models", "compare", "content")).splitlines() == compared


def test_models_refuses_what_it_cannot_do(home):
    for args, message in [(("show", "content"), "pmis models show needs a version"),
                          (("show",), "pmis models show needs a component and a version"),
                          (("compare",), "pmis models compare needs a component"),
                          (("activate", "content"), "pmis models activate needs a version"),
                          (("history",), "pmis models history needs a component"),
                          (("show", "content", 9), "content version 9 is not registered"),
                          (("compare", "content", "--versions", 1, 9), "content version 9 is not registered"),
                          (("compare", "nosuch"), "nosuch: no version is registered"),
                          (("list", "nosuch"), "nosuch: no version is registered"),
                          (("activate", "content", 9), "content version 9 is not registered"),
                          (("rollback", "content", "--alias", "canary"),
                           "content: alias 'canary' is not set; nothing to roll back")]:
        assert f"error: {message}" in fails(pmis(home.root, "models", *args)), args
    assert home.registry.resolve("content")["version"] == 2


def test_models_activate_rollback_and_history_move_the_champion(home, tmp_path):
    mine = home.private(tmp_path / "home")
    reg = Registry(mine / "bundles" / "registry.db")
    assert ok(pmis(mine, "models", "activate", "ranker", 1, "--reason", "v2 misbehaves")) == \
        "ranker: champion -> v1\n"
    assert reg.resolve("ranker")["version"] == 1
    assert ok(pmis(mine, "models", "list", "ranker")).splitlines()[1].endswith("champion")  # v1's line
    assert ok(pmis(mine, "models", "rollback", "ranker")) == "ranker: champion -> v2\n"
    assert reg.resolve("ranker")["version"] == 2
    moves = [json.loads(line) for line in ok(pmis(mine, "models", "history", "ranker")).splitlines()]
    assert [(m["action"], m["version"], m["previous_version"]) for m in moves] == \
        [("set", 1, None), ("set", 2, 1), ("set", 1, 2), ("rollback", 2, 1)]
    assert [m["reason"] for m in moves[2:]] == ["v2 misbehaves", "rollback from the CLI"]
    assert moves[1]["reason"] == f"trained by run {run_id(home.ran.stdout)[0]}; rank stage serves: ranker"
    # another alias has its own history; the champion does not move
    assert ok(pmis(mine, "models", "activate", "content", 1, "--alias", "canary")) == "content: canary -> v1\n"
    (canary,) = [json.loads(line) for line in
                 ok(pmis(mine, "models", "history", "content", "--alias", "canary")).splitlines()]
    assert (canary["alias"], canary["version"], canary["reason"]) == ("canary", 1, "activated from the CLI")
    assert reg.resolve("content")["version"] == 2 and reg.resolve("content", "canary")["version"] == 1
    assert "error: content: alias 'canary' has no earlier version to roll back to" in fails(
        pmis(mine, "models", "rollback", "content", "--alias", "canary"))
    # a version whose files were changed is never made champion
    manifest = Path(reg.get("success", 1)["path"]) / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["metadata"]["tampered"] = True  # e.g. better metrics written in by hand
    manifest.write_text(json.dumps(doc))
    assert "signature mismatch" in fails(pmis(mine, "models", "activate", "success", 1))
    assert reg.resolve("success")["version"] == 2
    assert home.registry.resolve("ranker")["version"] == 2  # the shared home is untouched
    assert len(home.registry.history("ranker")) == 2


# --------------------------------------------------------------------------- retrain


def test_retrain_checks_the_triggers_and_trains_only_when_one_fires(home, tmp_path):
    mine = home.private(tmp_path / "home")
    reg = Registry(mine / "bundles" / "registry.db")
    store = JobStore(mine / "bundles" / "registry.db")

    quiet = ok(pmis(mine, "retrain", "--if-needed"))  # same data as the champions, young champions
    assert re.fullmatch(r"no retraining needed \(check 1\): no new data: the champions were trained on the current "
                        r"data version \w+; the champion is .* old \(< 168\.0 h\)\n", quiet), quiet

    dry = ok(pmis(mine, "retrain", "--dry-run", "--max-age-hours", 0))
    assert re.fullmatch(r"retraining \(check 2\): the champion is .* old \(>= 0 min\)\n", dry), dry
    assert [v["version"] for v in reg.versions("content")] == [2, 1] and store.list() == ([], None)  # no job

    fired = ok(pmis(mine, "retrain", "--if-needed", "--max-age-hours", 0, "--components", "content",
                    "--algorithms", "logistic_regression", "--search-budget", 1, "--margin", 0, "--quiet"))
    lines = fired.splitlines()
    assert lines[0].startswith("retraining (check 3): the champion is")
    job = re.fullmatch(r"job (job-\S+)", lines[1])
    assert job, fired
    assert lines[2] == f"job {job[1]} SUCCEEDED: registered content v3"
    assert lines[3].startswith("  content v3: activated - ndcg@10 ")
    assert reg.resolve("content")["version"] == 3 and reg.resolve("ranker")["version"] == 2
    log = store.triggers(3)  # newest first; every check logged, only the one that fired outside a dry run has a job
    assert [(t["should_train"], t["job_id"], t["source"]) for t in log] == \
        [(True, job[1], "cli"), (True, None, "cli"), (False, None, "cli")]
    assert [j["job_id"] for j in store.list()[0]] == [job[1]] and store.get(job[1])["source"] == "trigger"
    assert home.registry.resolve("content")["version"] == 2  # the shared home is untouched


def test_retrain_refuses_a_bad_configuration(home, tmp_path):
    mine = home.private(tmp_path / "home")
    out = fails(pmis(mine, "retrain", "--algorithms", "no_such_model", "--quiet"))
    assert "error: success.algorithms" in out and "no_such_model" in out
    assert [v["version"] for v in Registry(mine / "bundles" / "registry.db").versions("content")] == [2, 1]
    assert JobStore(mine / "bundles" / "registry.db").list() == ([], None)  # refused before a job was made


# --------------------------------------------------------------------------- recommend


def item_rows(stdout: str) -> list[list[str]]:
    """The table rows of `pmis recommend`: rank, internship id, ..."""
    return [line.split() for line in stdout.splitlines() if re.match(r"\s*\d+\s+I\d{6}\s", line)]


def test_recommend_for_a_known_student_prints_the_gateways_answer(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    out = ok(pmis(home.root, "recommend", "--target", target, "--student", "S0000007", "--k", 5))
    lines = out.splitlines()
    assert lines[0].startswith("Recommendations for S0000007: ranked by ")
    assert "degraded" not in lines[0]
    rows = item_rows(out)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert len({r[1] for r in rows}) == 5
    # each row is the catalog's internship (the exposure ledger moves rankings between calls, so no
    # second call to compare with): title, place and stipend in their columns, a selection probability
    with closing(sqlite3.connect(home.catalog)) as con:
        for line in lines[2:7]:
            iid, title, place, stipend, prob = (line[4:14].strip(), line[15:49].strip(), line[50:68].strip(),
                                                line[69:76].strip(), line[77:83].strip())
            t, district, remote, s = con.execute("SELECT title, district, remote, stipend FROM internships "
                                                 "WHERE internship_id = ?", (iid,)).fetchone()
            assert (title, place, int(stipend)) == (t[:34].strip(), "remote" if remote else district[:18].strip(), s)
            assert 0 < float(prob) < 1, line
    assert re.fullmatch(r"models: (\w+ v2, )+\w+ v2", lines[-1]), lines[-1]  # the champions `pmis run` made
    assert {"content", "collaborative", "ranker"} <= set(re.findall(r"(\w+) v2", lines[-1]))


def test_recommend_for_a_profile_and_by_mode(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    out = ok(pmis(home.root, "recommend", "--target", target, "--k", 3, "--profile", "skills=python,sql,excel",
                  "education=BCA", "field=Computer Applications", "district=Pune", "state=Maharashtra", "cgpa=8.2",
                  "college_tier=2", "preferred_sectors=Information Technology"))
    assert out.startswith("Recommendations for new student (profile): ranked by ")
    assert [r[0] for r in item_rows(out)] == ["1", "2", "3"]
    content = ok(pmis(home.root, "recommend", "--target", target, "--student", "S0000007", "--k", 4,
                      "--mode", "content"))
    assert content.startswith("Recommendations for S0000007") and len(item_rows(content)) == 4


def test_recommend_errors_are_messages_not_tracebacks(home, served):
    target = f"127.0.0.1:{served.gateway.port}"
    unknown = fails(pmis(home.root, "recommend", "--target", target, "--student", "S0999999"))
    assert "error: NOT_FOUND: student S0999999 is not in the catalog" in unknown
    nobody = fails(pmis(home.root, "recommend", "--target", target))
    assert "error: INVALID_ARGUMENT" in nobody and "student_id: set student_id" in nobody
    assert "error: --profile: unknown profile field 'colour'" in fails(
        pmis(home.root, "recommend", "--target", target, "--profile", "colour=blue"))
    assert "error: --profile: could not convert string to float: 'high'" in fails(
        pmis(home.root, "recommend", "--target", target, "--profile", "cgpa=high"))


def test_recommend_without_a_gateway_says_so(home):
    out = fails(pmis(home.root, "recommend", "--target", NOWHERE, "--student", "S0000007", "--timeout", 3))
    assert out.startswith("error: UNAVAILABLE: ") and "Connection refused" in out
    assert "Recommendations" not in out


# --------------------------------------------------------------------------- bench


def test_bench_prints_its_tables_and_writes_every_number(home, served, tmp_path):
    from services.common import listening, telemetry

    # The servers run in this process: its one metrics endpoint stands for the gateway's; the
    # other servers' ports (from --metrics-base 1) have nothing behind them and show "-".
    metrics = telemetry.start_metrics_server(listening.ANY_METRICS_PORT)
    out = pmis(home.root, "bench", "--target", f"127.0.0.1:{served.gateway.port}", "--concurrency", 1,
               "--duration", 1, "--rate", 20, "--open-duration", 1, "--shortlist", 3, "--metrics-base", 1,
               "--metrics-ports", f"gateway={metrics}", "--json", tmp_path / "bench.json", timeout=180)
    text = ok(out)
    for heading in ("Recommend (k=10, explain on, known student ids, deadline 2000 ms) at 127.0.0.1:",
                    "Closed loop, 1s per level", "Open loop, 1s per rate", "CPU ms per OK answer", "Shortlist, 3"):
        assert heading in text, heading
    assert re.search(r"^1\s+gateway\s+[1-9]\d*\s+0\s", text, re.M), text  # answers, no errors
    assert re.search(r"^1\s+echo\s+[1-9]\d*\s+0\s", text, re.M), text
    assert "closed loop, concurrency 1: gateway ..." in out.stderr  # progress goes to stderr

    result = json.loads((tmp_path / "bench.json").read_text())
    (closed,) = result["closed"]
    gw, echo = closed["gateway"], closed["echo"]
    assert gw["requests"] > 0 and gw["errors"] == 0 and gw["rps"] > 0 and gw["p50_ms"] > 0
    assert echo["requests"] > 0 and echo["errors"] == 0 and closed["p50_ratio"] > 0
    cpu = gw["cpu_ms_per_request"]
    assert cpu["per_server"]["gateway"] > 0 and cpu["per_server"]["content"] is None
    assert set(cpu["missing"]) == {"content", "collaborative", "success", "ranker"}
    (open_,) = result["open"]
    assert open_["rate"] == 20 and open_["sent"] == 20 and open_["ok"] > 0 and open_["other_errors"] == 0
    # every request counted once (a busy box may refuse or time out a few; none fails otherwise)
    assert open_["ok"] + open_["ok_degraded"] + open_["resource_exhausted"] + open_["deadline_exceeded"] == 20
    assert re.search(r"^\s*20\s+20\s+\d+", text, re.M), text  # the open-loop row: rate, sent, OK, ...
    short = result["shortlist"]
    assert (short["calls"], short["ok"]) == (3, 3) and short["p50_ms"] > 0
    assert result["config"]["metrics_ports"] == {"gateway": metrics, "content": 2, "collaborative": 3, "success": 4,
                                                 "ranker": 5}


def test_bench_without_an_answering_gateway_fails(home):
    out = fails(pmis(home.root, "bench", "--target", NOWHERE, "--concurrency", 1, "--duration", 1, "--rate",
                     "--no-echo", "--deadline-ms", 200), code=1)
    assert f"error: the gateway at {NOWHERE} answered no request" in out


def test_bench_refuses_a_missing_catalog_and_bad_metrics_ports(tmp_path):
    out = fails(pmis(tmp_path, "bench", "--target", NOWHERE, "--concurrency", 1, "--duration", 1, "--rate"))
    assert f"error: no catalog at {tmp_path / 'data' / 'catalog.db'}" in out
    assert not (tmp_path / "data").exists()  # no empty catalog left behind
    bad = fails(pmis(tmp_path, "bench", "--metrics-ports", "db=5432"))
    assert "--metrics-ports wants NAME=PORT" in bad and "'db=5432'" in bad
