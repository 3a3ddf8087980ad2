"""Model selection with the noise in view (models/training/selection.py): bootstrap intervals over
students, paired differences, ties within noise going to the cheaper model."""

from __future__ import annotations

import numpy as np
import pytest

from models.training import selection


def students(mean: float, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Per-student NDCG-like values: mostly zero, some hits."""
    rng = np.random.default_rng(seed)
    return (rng.random(n) < mean).astype(np.float64)


def test_interval_covers_the_mean_and_shrinks_with_more_students():
    small, large = students(0.3, 400), students(0.3, 20_000)
    lo_s, hi_s = selection.interval(selection.bootstrap_means(small))
    lo_l, hi_l = selection.interval(selection.bootstrap_means(large))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4  # sqrt(50) ~ 7x narrower
    assert selection.bootstrap_means(small, seed=3).tolist() == selection.bootstrap_means(small, seed=3).tolist()


def test_a_difference_within_noise_goes_to_the_cheaper_model():
    base = students(0.30, seed=1)
    nudged = base.copy()
    nudged[:3] = 1.0  # a hair better: three students of 2,000
    choice = selection.choose([nudged, base], costs=[1_000_000, 32_000], names=["ease", "als"])
    assert choice.best == 0 and choice.index == 1
    mean, low, high = choice.differences[1]
    assert mean < 0 and low < 0 <= high
    assert "within noise of the best (ease" in choice.reason and "cheaper to serve" in choice.reason


def test_a_clearly_better_model_wins_whatever_it_costs():
    strong, weak = students(0.40, seed=2), students(0.30, seed=2)
    choice = selection.choose([weak, strong], costs=[10, 1_000_000], names=["cheap", "strong"])
    assert choice.index == choice.best == 1
    assert choice.differences[0][2] < 0  # the cheap one is clearly worse
    assert choice.reason == "strong: the best mean"


def test_a_tie_goes_to_a_cheaper_model_only_when_the_saving_matters():
    base = students(0.30, seed=1)
    nudged = base.copy()
    nudged[:3] = 1.0  # a hair better: three students of 2,000
    slightly_cheaper = selection.choose([nudged, base], costs=[32_000, 27_000], names=["als 32", "als 27"])
    assert slightly_cheaper.index == slightly_cheaper.best == 0
    assert "none at most half its serving cost" in slightly_cheaper.reason
    much_cheaper = selection.choose([nudged, base], costs=[32_000, 8_000], names=["als 32", "als 8"])
    assert much_cheaper.index == 1 and "cheaper to serve" in much_cheaper.reason


def test_paired_comparison_sees_a_small_consistent_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(4)
    a = rng.random(3000)
    b = a - 0.01 + rng.normal(0, 0.01, 3000)  # the same students, slightly worse, consistently
    result = selection.compare(a, b)
    assert result["beyond_noise"] and result["difference"] == pytest.approx(0.01, abs=0.002)
    assert result["interval"][0] > 0
    ia, ib = (selection.interval(selection.bootstrap_means(v)) for v in (a, b))
    assert ia[0] < ib[1]  # each one's own interval overlaps the other's
    assert not selection.compare(a, a)["beyond_noise"]


def test_the_ranker_ships_only_when_it_earns_its_place():
    from models.training.ranker_stage import shipped_ranking

    clear = {"difference": 0.03, "interval": [0.01, 0.05], "beyond_noise": True}
    noise = {"difference": 0.002, "interval": [-0.004, 0.008], "beyond_noise": False}
    worse = {"difference": -0.03, "interval": [-0.05, -0.01], "beyond_noise": True}
    assert shipped_ranking(True, clear, "blend")[0] == "ranker"
    # a whole-catalogue component ties with it, but the blend it would fall back to is clearly worse
    ranking, why = shipped_ranking(False, clear, "collaborative")
    assert ranking == "ranker" and "collaborative" in why
    # within noise of the blend, or below it: the blend, cheaper to serve and to explain
    assert shipped_ranking(False, noise, "blend")[0] == "blend"
    assert shipped_ranking(False, worse, "popularity")[0] == "blend"


def test_the_success_model_ships_only_when_it_beats_the_base_rate():
    from models.training.success_stage import against_base_rate

    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(float)
    informative = np.clip(np.where(y == 1, 0.45, 0.12) + rng.normal(0, 0.03, len(y)), 0.01, 0.99)
    clear = against_base_rate(y, informative, 0.2, seed=0)
    assert clear["model_wins"] and clear["difference"] > 0 and clear["interval"][0] > 0
    # a model that only adds noise around the base rate does not ship
    noisy = np.clip(0.2 + rng.normal(0, 0.05, len(y)), 0.01, 0.99)
    assert not against_base_rate(y, noisy, 0.2, seed=0)["model_wins"]


def test_the_collaborative_search_budget_scales_with_the_data():
    from models.training.collaborative_search import collab_trial_budget

    assert collab_trial_budget(30_000, 6) == 30               # the default data: a real search
    assert collab_trial_budget(200_000, 6) == 10
    assert collab_trial_budget(7_000_000, 4) == 4             # 1M students: the grid alone
    assert collab_trial_budget(0, 2) == 30
