"""`pmis models` and `pmis retrain` as a user runs them, on private copies of the tiny home's registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.lifecycle.store import JobStore
from models.bundle.registry import Registry
from tests.support.cli import COMPONENTS, fails, home, ok, pmis, run_id  # noqa: F401 (fixtures)


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
