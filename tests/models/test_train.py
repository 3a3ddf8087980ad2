"""End-to-end offline pipeline on a small generated dataset: train, bundles, registry, report, holdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle.format import BundleError
from models.bundle.reading import load_bundle
from models.components.collaborative import CollaborativeModel
from models.components.content import ContentModel
from models.data.generate import generate
from models.bundle.registry import Registry
from models.components.success import SuccessModel
from models.training.split import positions
from models.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(small_system):
    cfg = TrainConfig(data_dir=small_system.data, bundles_dir=small_system.bundles, runs_dir=small_system.runs)
    return small_system.root, cfg, small_system.report


def test_report_has_every_model_and_sane_numbers(trained):
    _, _, report = trained
    ranking = report["ranking"]
    names = ("popularity", "content", "collaborative", "success_only", "blend", "ranker")
    # every model on the same test students, and each one finds some of what they applied to
    assert len({ranking[name]["students"] for name in names}) == 1 and ranking["ranker"]["students"] > 50
    for name in names:
        m = ranking[name]
        assert m["ndcg@10"] > 0.01 and m["recall@10"] >= m["ndcg@10"] * 0.5, (name, m)
        assert set(m["groups"]) >= {"gender", "social_category", "rural", "college_tier"}
    # popularity shows everyone the same few internships; personalised models spread over the catalogue
    assert ranking["popularity"]["coverage"] < 0.2 < 0.5 < ranking["content"]["coverage"]
    # The planted signal is strong enough that learning must beat popularity and the blend.
    assert ranking["ranker"]["ndcg@10"] > ranking["popularity"]["ndcg@10"]
    assert ranking["ranker"]["ndcg@10"] > ranking["content"]["ndcg@10"]
    assert report["targets"]["ranker_over_best_single"] > 1.0
    s = report["success"]
    assert s["roc_auc"] > 0.7 and s["ece"] < 0.06
    assert 0.08 < s["prevalence"] < 0.2
    assert set(s["search"]) == {"logistic_regression", "hist_gradient_boosting", "random_forest"}


def test_report_has_fairness_before_and_after(trained):
    _, _, report = trained
    f = report["fairness"]
    for mode in ("before", "after"):
        assert set(f[mode]["group_exposure_share"]) == {"msme", "local", "other"}
        assert abs(sum(f[mode]["group_exposure_share"].values()) - 1) < 1e-3
    # The controller moves the MSME share from where relevance left it towards its target (up or down).
    target = f["exposure_targets"]["msme"]
    before, after = f["before"]["group_exposure_share"]["msme"], f["after"]["group_exposure_share"]["msme"]
    assert abs(after - target) < abs(before - target), (before, after, target)
    assert f["summary"]["group_share_vs_target"]["msme"]["target"] == target
    for attr in ("gender", "social_category"):
        groups = f["after"]["consumer_groups"][attr]
        ndcgs = [g["ndcg@10"] for g in groups["groups"].values() if "ndcg@10" in g]  # small groups: none
        assert groups["min_max_ratio"]["ndcg@10"] == pytest.approx(min(ndcgs) / max(ndcgs))
    # re-ranking for exposure costs relevance, but little
    assert 0.85 * f["before"]["ndcg@10"] <= f["after"]["ndcg@10"] <= f["before"]["ndcg@10"] * 1.01
    assert f["after"]["gini_exposure"] < f["before"]["gini_exposure"]
    assert f["promoted_items_per_list"] > 0
    sl = f["shortlists"]
    assert sl["shortlists"] > 5 and set(sl["mean_share"]) == {"SC", "ST", "OBC", "disability", "female"}
    cost = sl["ndcg_by_selection"]
    assert cost["relative_cost"] == pytest.approx(1 - cost["with_minimums"] / cost["plain"], abs=1e-9)
    assert cost["relative_cost"] <= 0.1  # minimums pick other students, but mostly ones that match as well
    assert sl["share_meeting_all_feasible_minimums"] >= sl["share_of_shortlists_meeting_all"]


def test_report_files_written(trained):
    _, _, report = trained
    run_dir = Path(report["run_dir"])
    for name in ("report.json", "report.md", "ndcg.png", "reliability.png", "exposure.png"):
        assert (run_dir / name).stat().st_size > 0
    assert json.loads((run_dir / "report.json").read_text())["run_id"] == report["run_id"]
    assert "| ranker |" in (run_dir / "report.md").read_text()


def test_bundles_registered_verified_and_champion(trained):
    base, cfg, report = trained
    reg = Registry(cfg.bundles_dir / "registry.db")
    assert set(reg.components()) == {"content", "collaborative", "success", "ranker"}
    for component, info in report["bundles"].items():
        row = reg.resolve(component, "champion")
        assert row["version"] == info["version"]
        bundle = load_bundle(Path(row["path"]))
        assert bundle.ref.content_hash == info["content_hash"]
        assert bundle.manifest["data_version"] == report["data"]["data_version"]
        assert bundle.manifest["metadata"]["metrics"], component
    # Large arrays come back memory-mapped.
    collab = load_bundle(Path(reg.resolve("collaborative")["path"]))
    assert isinstance(collab.arrays["user_items_data"], np.memmap)


def test_loaded_bundles_score_like_the_trained_models(trained):
    base, cfg, _ = trained
    reg = Registry(cfg.bundles_dir / "registry.db")
    content = ContentModel.from_bundle(load_bundle(Path(reg.resolve("content")["path"])))
    scores = content.score(["python sql data analysis skill_python skill_sql"])
    top = content.item_ids[np.argsort(-scores[0])[:5]]
    internships = pd.read_parquet(cfg.data_dir / "internships.parquet").set_index("internship_id")
    # A data-skilled profile's top content matches mention at least one of its skills.
    assert any({"python", "sql", "data analysis"} & set(internships.loc[i, "skills"]) for i in top)
    collab = CollaborativeModel.from_bundle(load_bundle(Path(reg.resolve("collaborative")["path"])))
    assert collab.score_users(np.array([0, 1])).shape == (2, len(collab.item_ids))
    success = SuccessModel.from_bundle(load_bundle(Path(reg.resolve("success")["path"])))
    assert success.algorithm in {"logistic_regression", "hist_gradient_boosting", "random_forest"}


def test_flipped_byte_is_refused_naming_the_file(trained, tmp_path):
    import shutil

    base, cfg, _ = trained
    src = Path(Registry(cfg.bundles_dir / "registry.db").resolve("success")["path"])
    copy = tmp_path / src.parent.name / src.name
    shutil.copytree(src, copy)
    target = copy / "model.joblib"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.joblib"):
        load_bundle(copy)


def test_holdout_evaluation_uses_the_champions(trained, tmp_path):
    from models.training.holdout import evaluate_holdout

    base, cfg, _ = trained
    inter = pd.read_parquet(cfg.data_dir / "interactions.parquet")
    # A held-out file of new save/apply events on items the students never touched.
    rng = np.random.default_rng(0)
    students = inter["student_id"].unique()[:200]
    items = pd.read_parquet(cfg.data_dir / "internships.parquet")["internship_id"].to_numpy()
    held = pd.DataFrame({"student_id": np.repeat(students, 2), "internship_id": rng.choice(items, 400),
                         "event": "apply", "timestamp": pd.Timestamp("2025-08-01", tz="UTC")})
    held = held.merge(inter[["student_id", "internship_id"]], how="left", indicator=True)
    held = held[held["_merge"] == "left_only"].drop(columns="_merge").drop_duplicates(["student_id", "internship_id"])
    path = tmp_path / "holdout.csv"
    held.to_csv(path, index=False)
    result = evaluate_holdout(cfg.data_dir, cfg.bundles_dir, path)
    assert result["students"] == held["student_id"].nunique()
    assert set(result["ranking"]) >= {"popularity", "content", "collaborative", "blend", "ranker"}
    # Random future items: every model is near chance, none is perfect.
    assert all(0 <= result["ranking"][m]["recall@10"] < 0.5 for m in ("content", "ranker"))


def test_bad_input_stops_training_with_file_row_column(tmp_path):
    data = tmp_path / "bad"
    generate(data, students=200, internships=60, seed=1, fmt="csv", progress=False, catalog=False)
    df = pd.read_csv(data / "students.csv", dtype=str)
    df.loc[4, "cgpa"] = "eleven"
    df.to_csv(data / "students.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "services.cli", "train", "--data", str(data), "--bundles",
                          str(tmp_path / "b"), "--runs", str(tmp_path / "r"), "--quiet"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "students.csv, row 5, column cgpa" in out.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("manifest.json"))


def test_trains_what_it_can_without_outcomes(tmp_path):
    data = tmp_path / "data"
    generate(data, students=600, internships=150, seed=3, progress=False, catalog=False)
    (data / "outcomes.parquet").unlink()
    cfg = TrainConfig(data_dir=data, bundles_dir=tmp_path / "b", runs_dir=tmp_path / "r", search_budget=1,
                      progress=False, als_grid=[{"factors": 8, "regularization": 0.05, "alpha": 1.0, "iterations": 5}],
                      ease_grid=[], collab_trials=1)
    report = train(cfg)
    assert report["success"] == {"skipped": "no outcomes table in the dataset"}
    assert "no outcomes table: the success predictor is skipped" in report["data"]["notes"]
    assert set(report["bundles"]) == {"content", "collaborative", "ranker"}
    assert report["ranking"]["ranker"]["ndcg@10"] > report["ranking"]["popularity"]["ndcg@10"]


def test_selection_reports_intervals_and_the_ranker_comparison(trained):
    _, _, report = trained
    for name in ("popularity", "content", "collaborative", "success_only", "blend", "ranker"):
        low, high = report["ranking"][name]["ndcg@10_interval"]  # on the test window
        assert low <= report["ranking"][name]["ndcg@10"] <= high and high - low < 0.2
    rows = report["collaborative_selection"]
    assert sum(bool(r.get("chosen")) for r in rows) == 1
    for r in rows:
        low, high = r["ndcg@10_interval"]
        assert low <= r["ndcg@10"] <= high and r["serving_parameters"] > 0
        assert r["difference_to_best"]["interval"][0] <= r["difference_to_best"]["mean"] <= 0 or r.get("chosen")
    versus = report["ranker_against_best_alternative"]
    assert versus["alternative"] in ("blend", "content", "collaborative", "success_only", "popularity")
    assert versus["interval"][0] <= versus["difference"] <= versus["interval"][1]
    assert versus["ranker_wins"] == (versus["interval"][0] > 0)


def test_the_rank_stage_shipped_is_the_one_selection_chose(trained):
    """The ranker bundle serves what the comparison chose, its manifest and the registry say so,
    and its registered metrics are that ranking's."""
    from models.bundle.reading import load_bundle
    from models.components.ranker import RankerModel
    from models.bundle.registry import Registry

    root, cfg, report = trained
    versus = report["ranker_against_best_alternative"]
    shipped = versus["shipped_ranking"]
    assert shipped in ("ranker", "blend") and versus["why"]
    assert versus["against_blend"]["interval"][0] <= versus["against_blend"]["difference"]
    registry = Registry(cfg.bundles_dir / "registry.db")
    row = registry.resolve("ranker", "champion")
    bundle = load_bundle(Path(row["path"]))
    assert RankerModel.from_bundle(bundle).ranking == shipped
    assert bundle.manifest["metadata"]["ranking"]["shipped_ranking"] == shipped
    assert bundle.manifest["metadata"]["metrics"]["ndcg@10"] == report["ranking"][shipped]["ndcg@10"]
    # the success predictor likewise: the model only when it beats the base rate beyond noise
    from models.components.success import SuccessModel

    against = report["success"]["against_base_rate"]
    success = SuccessModel.from_bundle(load_bundle(Path(registry.resolve("success", "champion")["path"])))
    assert success.serves_base_rate == (not against["model_wins"])
    assert report["success"]["serves"] == ("the base rate" if success.serves_base_rate else "the model")


def test_random_split_holds_out_a_share_of_each_students_internships():
    from models.training.split import Indexed, Split

    rng = np.random.default_rng(0)
    s = np.repeat(np.arange(50), 20)
    i = rng.integers(0, 30, len(s))
    events = np.where(rng.random(len(s)) < 0.5, "view", "apply")
    idx = Indexed(np.arange(50).astype(str), np.arange(30).astype(str), s, i, events, np.zeros(len(s), np.int64),
                  s[:40], i[:40], np.ones(40, np.int64), np.zeros(40))
    split = Split.at_random(idx, 0.15, 0.15, seed=1)
    assert split.kind == "random" and split.cutoffs is None and split.now(1) is None
    pair = s * 30 + i
    for p in np.unique(pair):  # every event of a (student, internship) pair in one window
        assert len(set(split.phase[pair == p].tolist())) == 1
    for student in range(50):  # each student: about 70 / 15 / 15 of their internships
        phases = [split.phase[pair == p][0] for p in np.unique(pair[s == student])]
        assert abs(np.mean(np.equal(phases, 0)) - 0.7) <= 0.15 and 2 in phases
    # an outcome belongs to its application's window; the same seed gives the same split
    np.testing.assert_array_equal(split.out_phase, split.phase[:40])
    np.testing.assert_array_equal(Split.at_random(idx, 0.15, 0.15, seed=1).phase, split.phase)
    assert not np.array_equal(Split.at_random(idx, 0.15, 0.15, seed=2).phase, split.phase)


def test_trains_and_evaluates_with_a_random_split(tmp_path):
    data = tmp_path / "data"
    generate(data, students=600, internships=150, seed=3, progress=False, catalog=False)
    cfg = TrainConfig(data_dir=data, bundles_dir=tmp_path / "b", runs_dir=tmp_path / "r", search_budget=1,
                      progress=False, als_grid=[{"factors": 8, "regularization": 0.05, "alpha": 1.0, "iterations": 5}],
                      ease_grid=[], collab_trials=1, split="random",
                      reference_collaborative=[("reference", "als", {"factors": 4, "regularization": 0.01,
                                                                     "alpha": 1.0, "iterations": 3})])
    report = train(cfg)
    assert report["split"]["kind"] == "random" and "train_until" not in report["split"]
    assert report["split"]["held_out_per_student"] == {"valid": 0.15, "test": 0.15}
    assert min(report["split"]["interactions"].values()) > 0
    assert report["evaluation_window"]["split"] == "random"
    assert report["ranking"]["ranker"]["ndcg@10"] > report["ranking"]["popularity"]["ndcg@10"] > 0
    # a reference model scored beside the chosen one, the same way the evaluation scores it
    chosen, reference = report["collaborative_references"]
    assert chosen["ndcg@10"] == pytest.approx(report["ranking"]["collaborative"]["ndcg@10"], abs=1e-9)
    assert reference["name"] == "reference" and reference["interval"][0] <= reference["ndcg@10"] <= reference["interval"][1]
    diff = reference["chosen_minus_this"]
    assert diff["difference"] == pytest.approx(chosen["ndcg@10"] - reference["ndcg@10"], abs=1e-9)


def test_positions_of_categorical_ids_equal_the_lookup_of_their_strings():
    """load_dataset holds the event tables' ids as categories; indexing goes through the categories."""
    index = pd.Index(["S1", "S2", "S3"])
    column = pd.Series(["S3", "S9", None, "S1", "S3"])
    expected = [2, -1, -1, 0, 2]
    assert positions(index, column).tolist() == expected
    assert positions(index, column.astype("category")).tolist() == expected
