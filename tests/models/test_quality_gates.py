"""Quality gates: the README's headline numbers, on the default generated dataset trained as
`pmis run` trains it, each at its documented value with a stated tolerance. A change that loses
quality fails here, naming the number.

The thresholds live in GATES and nowhere else; the README's "How training works" and "Fair
re-ranking" sections give the measured values they guard.
"""

from __future__ import annotations

import pytest

# name: (threshold, what it guards)
GATES = {
    # A ranker cut to 2 stumps still reaches 1.68x (NDCG@10 0.244): 1.5x would not notice it.
    "ranker_over_best_single_min": (2.0, "ranker NDCG@10 / best single component's (measured ~2.3x)"),
    "ranker_ndcg_min": (0.30, "ranker NDCG@10 on the test window (measured ~0.335)"),
    "success_roc_auc_min": (0.80, "success predictor ROC-AUC on the test window (measured ~0.83)"),
    "success_ece_max": (0.02, "success predictor ECE, 10 equal-mass bins (measured ~0.014)"),
    # The same seed, code and pins gave 2.8 % on an earlier machine and 3.6 % on a later one (the
    # other numbers equal): 4 % holds on both and still fails the 2-stump ranker (5.3 %).
    "fairness_ndcg_loss_max": (0.04, "NDCG@10 lost to fair re-ranking at the configured strength (~3 %)"),
    "fairness_gini_cut_min": (0.30, "relative cut of the exposure Gini by fair re-ranking (~32 %)"),
    "msme_share_tolerance": (0.10, "MSME exposure share after re-ranking, relative distance to its target"),
    "shortlists_feasible_min": (0.90, "shortlists meeting every minimum their pool allows (~94 %)"),
}


def gate(name: str) -> float:
    return GATES[name][0]


def test_ranker_doubles_the_best_single_component(default_report):
    t = default_report["targets"]
    assert t["ranker_over_best_single"] >= gate("ranker_over_best_single_min"), t
    assert t["ranker_ndcg@10"] >= gate("ranker_ndcg_min"), t
    ranking = default_report["ranking"]
    assert ranking["ranker"]["ndcg@10"] > ranking["blend"]["ndcg@10"] > ranking["popularity"]["ndcg@10"]


def test_success_predictor_discriminates_and_is_calibrated(default_report):
    s = default_report["success"]
    assert s["roc_auc"] >= gate("success_roc_auc_min"), s["roc_auc"]
    assert s["ece"] <= gate("success_ece_max"), s["ece"]


def test_fair_reranking_costs_little_relevance_and_spreads_exposure(default_report):
    summary = default_report["fairness"]["summary"]
    assert summary["ndcg_relative_loss"] <= gate("fairness_ndcg_loss_max"), summary
    assert summary["gini_relative_reduction"] >= gate("fairness_gini_cut_min"), summary


def test_msme_exposure_share_meets_its_target(default_report):
    msme = default_report["fairness"]["summary"]["group_share_vs_target"]["msme"]
    assert msme["after"] == pytest.approx(msme["target"], rel=gate("msme_share_tolerance")), msme
    assert msme["within_10pct"] is True


def test_shortlists_meet_every_feasible_minimum(default_report):
    sl = default_report["fairness"]["shortlists"]
    assert sl["shortlists"] >= 100, sl  # enough shortlists for the share to mean something
    assert sl["share_meeting_all_feasible_minimums"] >= gate("shortlists_feasible_min"), sl


def test_ranker_beats_the_best_alternative_beyond_noise_and_selection_says_why(default_report):
    versus = default_report["ranker_against_best_alternative"]
    assert versus["alternative"] == "blend" and versus["ranker_wins"] is True, versus
    assert versus["interval"][0] > 0.05, versus  # a paired 95 % interval, far from zero
    assert versus["shipped_ranking"] == "ranker", versus  # so the learned ranker serves the rank stage
    assert default_report["success"]["against_base_rate"]["model_wins"], default_report["success"]["against_base_rate"]
    rows = default_report["collaborative_selection"]
    chosen = [r for r in rows if r.get("chosen")]
    assert len(chosen) == 1 and default_report["collaborative_choice"].startswith(chosen[0]["kind"])
    for r in rows:
        low, high = r["ndcg@10_interval"]
        assert low < r["ndcg@10"] < high and high - low < 0.05, r
