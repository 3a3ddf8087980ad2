"""The group exposure controller, the fair re-ranker built on it and its configuration; the shortlist evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from models.fairness.exposure import GroupExposureController, position_weights


# --------------------------------------------------------------------------------------------
# group exposure controller and the fair re-ranker built on it
# --------------------------------------------------------------------------------------------
def _serve(reranker, n_requests: int, *, enabled: bool, seed: int = 3):
    """Lists where group 0 is 10 % of the candidates and scores a little lower than the rest."""

    rng = np.random.default_rng(seed)
    exposure = np.zeros(3)
    for _ in range(n_requests):
        cand = rng.choice(300, size=80, replace=False)
        groups = np.where(cand < 30, 0, np.where(cand < 150, 1, 2))
        scores = rng.normal(0, 1, size=cand.size) - 0.5 * (groups == 0)
        order, _ = reranker.rerank(scores, cand, groups, enabled=enabled, strength=1.0, k=10)
        np.add.at(exposure, groups[order], position_weights(len(order)))
    return exposure / exposure.sum()


def test_group_controller_holds_an_exposure_target_two_sided():
    from models.fairness.reranker import FairnessConfig, FairReranker

    for target in (0.25, 0.03):  # above and below the group's unaided share (about 0.07)
        cfg = FairnessConfig(min_shares={}, exposure_targets={"msme": target}, exposure_strength=0.0)
        share = _serve(FairReranker(np.ones(300), cfg), 3000, enabled=True)
        assert abs(share[0] - target) <= 0.1 * target, (target, share)
    unaided = _serve(FairReranker(np.ones(300), FairnessConfig()), 3000, enabled=False)
    assert 0.04 < unaided[0] < 0.1


def test_group_controller_ignores_groups_without_target():
    c = GroupExposureController([0.2, np.nan, np.nan])
    for _ in range(100):
        c.record(np.array([1] * 10))
    assert c.offsets[0] > 0 and c.offsets[1] == c.offsets[2] == 0


def test_fair_reranker_off_is_relevance_order_and_still_recorded():
    from models.fairness.reranker import FairnessConfig, FairReranker

    rr = FairReranker(np.ones(5), FairnessConfig())
    order, moved = rr.rerank(np.array([0.1, 0.9, 0.5, 0.3, 0.7]), np.arange(5), np.array([0, 1, 2, 2, 1]),
                             enabled=False, strength=1.0, k=3)
    assert order.tolist() == [1, 4, 2] and not moved.any()
    assert rr.ledger.requests == 1


def test_fairness_config_is_validated():
    from models.fairness.reranker import FairnessConfig

    with pytest.raises(ValueError, match="unknown groups"):
        FairnessConfig(min_shares={"big": 0.1})
    with pytest.raises(ValueError, match="within"):
        FairnessConfig(exposure_targets={"msme": 1.5})
    with pytest.raises(ValueError, match="sum"):
        FairnessConfig(min_shares={"msme": 0.6, "local": 0.6})
    assert FairnessConfig.from_json('{"exposure_targets": {"msme": 0.2}}').target_array()[0] == 0.2


def test_item_groups_from_configuration_first_match_wins():
    from models.fairness.reranker import item_groups

    groups = [{"name": "msme", "msme": True}, {"name": "local", "local": True},
              {"name": "agri", "sectors": ["Agriculture"]}, {"name": "aspirational", "districts": ["nuh"]}]
    g = item_groups(groups, item_district=np.array(["Pune", "Pune", "Nuh", "Nuh", "Delhi"]),
                    item_lat=np.full(5, np.nan), item_lon=np.full(5, np.nan), item_remote=np.zeros(5, bool),
                    item_msme=np.array([True, False, False, False, False]),
                    item_sector=np.array(["IT", "IT", "agriculture", "IT", "IT"]),
                    student_district="pune", student_lat=np.nan, student_lon=np.nan)
    assert g.tolist() == [0, 1, 2, 3, 4]  # msme beats local; 4 = other
    both = item_groups([{"name": "local_msme", "msme": True, "local": True}], item_district=np.array(["Pune", "Delhi"]),
                       item_lat=np.full(2, np.nan), item_lon=np.full(2, np.nan), item_remote=np.zeros(2, bool),
                       item_msme=np.array([True, True]), item_sector=np.array(["IT", "IT"]),
                       student_district="Pune", student_lat=np.nan, student_lon=np.nan)
    assert both.tolist() == [0, 1]  # predicates combine with AND


def test_fairness_config_groups_are_validated():
    from models.fairness.reranker import FairnessConfig

    cfg = FairnessConfig(groups=[{"name": "agri", "sectors": ["agriculture"]}], min_shares={"agri": 0.2},
                         exposure_targets={})
    assert cfg.floor_array().tolist() == [0.2, 0.0] and cfg.group_names == ["agri"]
    with pytest.raises(ValueError, match="one or more"):
        FairnessConfig(groups=[{"name": "x", "colour": "red"}], min_shares={}, exposure_targets={})
    with pytest.raises(ValueError, match="distinct"):
        FairnessConfig(groups=[{"name": "other", "msme": True}], min_shares={}, exposure_targets={})
    with pytest.raises(ValueError, match="unknown groups"):
        FairnessConfig(groups=[{"name": "agri", "sectors": ["a"]}])  # default shares name msme and local


def test_shortlist_evaluation_samples_pools_beyond_its_cap_and_says_so():
    """At a million students every internship's applicant pool would be scored; beyond `max_pools`
    a seeded sample is, and the result says how many pools there were."""
    from types import SimpleNamespace

    import pandas as pd

    from models.fairness.evaluation import evaluate_shortlists

    class Content:  # the match score: a fixed number per (profile text, internship)
        def score(self, texts, items):
            return np.array([[(sum(map(ord, t)) + 7 * int(items[0])) % 13] for t in texts], dtype=np.float32)

    n_students, n_items = 300, 40
    rng = np.random.default_rng(1)
    out_s = rng.integers(0, n_students, 600)
    out_i = np.repeat(np.arange(n_items), 15)
    out_y = rng.integers(0, 2, 600)
    c = SimpleNamespace(content=Content(), success=None, profile_texts=[f"student {s}" for s in range(n_students)],
                        space=SimpleNamespace(items=SimpleNamespace(slots=np.full(n_items, 2.0))))
    attrs = pd.DataFrame({"gender": rng.choice(["female", "male"], n_students),
                          "social_category": rng.choice(["SC", "ST", "OBC", "GEN"], n_students),
                          "disability": rng.choice([True, False], n_students), "rural": False})
    whole = evaluate_shortlists(c, out_s, out_i, out_y, attrs)
    assert (whole["shortlists"], whole["internships_with_a_pool"], whole["sample_seed"]) == (40, 40, None)
    sampled = evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=3)
    assert (sampled["shortlists"], sampled["internships_with_a_pool"], sampled["sample_seed"]) == (10, 40, 3)
    assert sampled == evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=3)  # reproducible
    assert sampled != evaluate_shortlists(c, out_s, out_i, out_y, attrs, max_pools=10, seed=4)
