"""The ranker and the static blend: feature layout, learning to rank, contributions, blend z-scores, top-n ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from models.bundle.reading import load_bundle
from models.components.features import PAIR_FEATURES
from models.components.ranker import RankerModel, ranker_features
from models.components.scores import COMPONENT_SCORES, blend_scores
from models.components.ranker import FEATURES as RANKER_FEATURES
from tests.support.bundles import no_signing_key  # noqa: F401 - autouse fixture
from tests.support.components import one_thread  # noqa: F401 - autouse fixture


# --------------------------------------------------------------------------- ranker


def _ranker_data(n_groups: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    comp = rng.normal(size=(n_groups * m, len(COMPONENT_SCORES)))
    pair = rng.normal(size=(n_groups * m, len(PAIR_FEATURES)))
    x = ranker_features(comp, pair)
    planted = x[:, RANKER_FEATURES.index("collab_score")]
    labels = np.zeros(n_groups * m, dtype=int)
    for g in range(n_groups):
        sl = slice(g * m, (g + 1) * m)
        noisy = planted[sl] + 0.3 * rng.normal(size=m)
        labels[sl][np.argsort(-noisy)[:3]] = 1
    return x, labels, np.full(n_groups, m)


def test_ranker_features_layout():
    comp, pair = np.arange(8.0).reshape(2, 4), np.arange(30.0).reshape(2, 15) + 100
    x = ranker_features(comp, pair)
    assert x.shape == (2, len(RANKER_FEATURES)) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :3], comp[:, :3])  # the retrievers' scores; success is not ranked on
    assert "success_p" not in RANKER_FEATURES
    assert x[0, RANKER_FEATURES.index("skill_overlap")] == 100 + PAIR_FEATURES.index("skill_overlap")
    assert x[1, RANKER_FEATURES.index("competition")] == 115 + PAIR_FEATURES.index("competition")
    assert "cgpa" not in RANKER_FEATURES


def test_ranker_learns_planted_feature(tmp_path):
    x, y, groups = _ranker_data(150, 20, seed=0)
    model = RankerModel.fit(x, y, groups, {"n_estimators": 40, "learning_rate": 0.1, "min_child_samples": 10},
                            blend_weights={"content_score": 1.0})
    xt, yt, gt = _ranker_data(100, 20, seed=1)
    pred = model.predict(xt).reshape(100, 20)
    rand = np.random.default_rng(2).random((100, 20))
    truth = yt.reshape(100, 20)
    ndcg_model, ndcg_random = ndcg_score(truth, pred, k=5), ndcg_score(truth, rand, k=5)
    assert ndcg_model > 0.8 and ndcg_model > ndcg_random + 0.3
    assert next(iter(model.feature_importance())) == "collab_score"

    loaded = RankerModel.from_bundle(load_bundle(model.save(tmp_path, {}, {}).path))
    np.testing.assert_array_equal(loaded.predict(xt), model.predict(xt))
    assert loaded.blend_weights == {"content_score": 1.0}

    # Explanations rest on these: exact additive shares that sum to the score (missing values
    # included), the planted feature carries the most weight, as TreeSHAP also says.
    xm = xt[:50].copy()
    xm[::7, RANKER_FEATURES.index("popularity")] = np.nan  # a component that was down
    for method in ("shap", "path"):
        contrib = model.contributions(xm, method)
        assert contrib.shape == (50, len(RANKER_FEATURES) + 1)
        np.testing.assert_allclose(contrib.sum(axis=1), model.predict(xm), atol=1e-4)
        assert np.abs(contrib[:, :-1]).mean(axis=0).argmax() == RANKER_FEATURES.index("collab_score")
        # served in one pass: the scores are the contributions' sums, equal to predict
        scores, both = model.predict_with_contributions(xt, method)
        assert np.abs(scores - model.predict(xt)).max() <= 1e-6
        np.testing.assert_array_equal(both, model.contributions(xt, method))
    with pytest.raises(ValueError, match="unknown"):
        model.contributions(xm, "lime")

    # A bundle whose rank stage is the blend (the learned ranker did not earn its place): the same
    # trees travel, the blend's tuned weights order the list and its terms split each score.
    model.ranking = "blend"
    blended = RankerModel.from_bundle(load_bundle(model.save(tmp_path / "blend", {}, {}).path))
    assert blended.ranking == "blend"
    lists = np.random.default_rng(4).random((12, len(COMPONENT_SCORES)))
    scores, split = blended.rank_list(lists, None, contributions="path")
    np.testing.assert_allclose(scores, blend_scores(lists, blended.blend_weights), atol=1e-6)
    np.testing.assert_allclose(split.sum(axis=1), scores, atol=1e-5)
    assert blended.split_names == list(COMPONENT_SCORES)
    with pytest.raises(ValueError, match="ranking"):
        RankerModel(model.model, {}, {}, ranking="popularity")


# --------------------------------------------------------------------------- static blend

WEIGHTS = {"content_score": 1.0, "collab_score": 2.0, "popularity": 0.5, "success_p": 3.0}


def _z(col):
    col = np.asarray(col, dtype=np.float64)
    ok = ~np.isnan(col)
    sd = col[ok].std() if ok.any() else 0.0
    z = np.zeros_like(col)
    if sd > 1e-9:
        z[ok] = (col[ok] - col[ok].mean()) / sd
    return z


def _blend_reference(s):
    return sum(WEIGHTS[name] * _z(s[:, j]) for j, name in enumerate(COMPONENT_SCORES))


def test_blend_ignores_nan_components_and_z_scores_per_list():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(12, 4)) * [1, 10, 0.01, 1] + [0, 5, 0, 0]
    s[:, 3] = np.nan          # success predictor is down
    s[4, 0] = np.nan          # one missing content score
    out = blend_scores(s, WEIGHTS)
    assert out.shape == (12,) and out.dtype == np.float32
    np.testing.assert_allclose(out, _blend_reference(s), rtol=1e-5, atol=1e-5)
    # a NaN column behaves exactly as if its weight were zero
    np.testing.assert_allclose(out, blend_scores(s, {**WEIGHTS, "success_p": 0.0}), atol=1e-6)
    # z-scores: a per-list affine rescale of a component changes nothing
    t = s.copy()
    t[:, 1] = 1000 * t[:, 1] - 7
    np.testing.assert_allclose(blend_scores(t, WEIGHTS), out, atol=1e-4)
    # a constant column contributes zero instead of dividing by zero
    c = s.copy()
    c[:, 2] = 3.0
    assert np.isfinite(blend_scores(c, WEIGHTS)).all()
    np.testing.assert_allclose(blend_scores(c, WEIGHTS), blend_scores(c, {**WEIGHTS, "popularity": 0.0}), atol=1e-6)
    assert not np.isnan(blend_scores(np.full((5, 4), np.nan), WEIGHTS)).any()


def test_blend_batched_equals_per_list():
    rng = np.random.default_rng(1)
    lengths = [7, 3, 10]
    lists = [rng.normal(size=(n, 4)) for n in lengths]
    lists[1][:, 1] = np.nan
    batch = np.full((3, 10, 4), np.nan)
    for i, arr in enumerate(lists):
        batch[i, :len(arr)] = arr
    out = blend_scores(batch, WEIGHTS)
    assert out.shape == (3, 10)
    for i, arr in enumerate(lists):
        np.testing.assert_allclose(out[i, :len(arr)], blend_scores(arr, WEIGHTS), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[i, :len(arr)], _blend_reference(arr), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1, 3:], 0.0)  # padding scores zero
    # lists are independent: z-scoring is along the list axis, not across lists
    shifted = batch.copy()
    shifted[0] = shifted[0] * 50 + 9
    np.testing.assert_allclose(blend_scores(shifted, WEIGHTS)[1:], out[1:], atol=1e-6)


# --------------------------------------------------------------------------- serving arithmetic
# What the servers compute directly from a bundle must equal what the libraries compute.


def test_top_n_is_deterministic_under_ties():
    from models.pipeline import top_n, top_n_rows

    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1, 0.9, np.nan, -np.inf], dtype=np.float32)
    assert top_n(scores, 4).tolist() == [1, 5, 0, 2]           # ties: the lower position first
    assert top_n(scores, 4, excluded=np.arange(8) == 1).tolist() == [5, 0, 2, 3]
    assert top_n(scores, 100).tolist() == [1, 5, 0, 2, 3, 4]   # never NaN or -inf
    rows = top_n_rows(np.vstack([scores, scores[::-1]]), 7)
    assert rows[0].tolist() == [1, 5, 0, 2, 3, 4, -1]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 5, size=(20, 300)).astype(np.float32)  # heavy ties
    for row in many:
        expected = np.lexsort((np.arange(300), -row))[:25]
        assert top_n(row, 25).tolist() == expected.tolist()
