"""The collaborative component: interaction matrix, ALS, EASE and item-kNN against references, fold-in, bundles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from implicit.als import AlternatingLeastSquares

from models.bundle.reading import load_bundle
from models.components.collaborative import (EVENT_WEIGHTS, CollaborativeModel, event_weights, history,
                                             interaction_matrix)
from tests.support.bundles import no_signing_key  # noqa: F401 - autouse fixture
from tests.support.components import one_thread  # noqa: F401 - autouse fixture


# --------------------------------------------------------------------------- collaborative

ALS_PARAMS = {"factors": 8, "regularization": 0.05, "alpha": 2.0, "iterations": 8, "seed": 0}
KNN_PARAMS = {"neighbours": 20, "k1": 1.2, "b": 0.75}


@pytest.fixture(scope="module")
def interactions():
    """300 students in 3 taste groups over 60 internships (20 per group), plus a little noise."""
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 60
    u, i, e = [], [], []
    for user in range(n_users):
        group = user % 3
        for item in rng.choice(20, 6, replace=False) + 20 * group:
            u.append(user), i.append(item), e.append(rng.choice(["view", "save", "apply"]))
        noise = rng.integers(0, n_items)
        u.append(user), i.append(noise), e.append("view")
    m = interaction_matrix(np.array(u), np.array(i), np.array(e), n_users, n_items)
    user_ids = np.array([f"S{k:04d}" for k in range(n_users)])
    item_ids = np.array([f"I{k:03d}" for k in range(n_items)])
    return m, user_ids, item_ids


def test_interaction_matrix_weights_and_cap():
    m = interaction_matrix(np.array([0, 0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 2, 0, 0, 1]),
                           np.array(["view", "save", "apply", "view", "view", "view", "apply"]), 2, 3)
    assert m.shape == (2, 3) and m.dtype == np.float32
    np.testing.assert_array_equal(m.toarray(), [[EVENT_WEIGHTS["view"] + EVENT_WEIGHTS["save"], 5, 1], [2, 5, 0]])
    capped = interaction_matrix(np.zeros(3, int), np.zeros(3, int), np.array(["apply", "save", "view"]), 1, 1)
    assert capped[0, 0] == max(EVENT_WEIGHTS.values())
    assert interaction_matrix(np.zeros(0, int), np.zeros(0, int), np.array([]), 2, 2).nnz == 0


def test_als_fold_in_equals_implicit_recalculate_user(interactions):
    m, user_ids, item_ids = interactions
    als = AlternatingLeastSquares(factors=ALS_PARAMS["factors"], regularization=ALS_PARAMS["regularization"],
                                  alpha=ALS_PARAMS["alpha"], iterations=ALS_PARAMS["iterations"], random_state=0)
    als.fit(m, show_progress=False)
    model = CollaborativeModel("als", ALS_PARAMS, user_ids, item_ids, np.ones(len(item_ids), np.float32), m,
                               user_factors=np.asarray(als.user_factors), item_factors=np.asarray(als.item_factors))
    items, events = np.array([20, 21, 25, 40]), np.array(["apply", "save", "view", "view"])
    row = interaction_matrix(np.zeros(4, int), items, events, 1, len(item_ids))
    expected = als.recalculate_user(0, row) @ als.item_factors.T
    got = model.fold_in(items, events)
    assert got.shape == (len(item_ids),)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # A student who interacted with group-1 internships gets group-1 internships recommended.
    top = np.argsort(-got)
    assert np.mean((top[:10] >= 20) & (top[:10] < 40)) >= 0.8


def test_als_fit_learns_groups(interactions):
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("als", ALS_PARAMS, m, user_ids, item_ids)
    assert model.user_factors.shape == (300, 8) and model.item_factors.shape == (60, 8)
    scores = model.score_users(np.array([0, 1, 2]))
    for user in range(3):
        top = np.argsort(-scores[user])[:10]
        assert np.mean(top // 20 == user % 3) >= 0.8


def test_ease_fold_in_equals_scoring_the_user_row(interactions):
    m, user_ids, item_ids = interactions
    lam = 5.0
    model = CollaborativeModel.fit("ease", {"lambda": lam}, m, user_ids, item_ids)
    # closed form, independently: B = I - P diag(1/diag P), diagonal zeroed
    x = (m.toarray() > 0).astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(len(p)) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.ease_b, b, atol=1e-5)
    for user in (0, 7, 123):
        items = m[user].indices
        events = np.array(["view"] * len(items))  # EASE uses binary relevance: event weights do not matter
        np.testing.assert_allclose(model.fold_in(items, events), model.score_users(np.array([user]))[0], atol=1e-5)
        np.testing.assert_allclose(model.score_users(np.array([user]))[0], x[user] @ b, atol=1e-4)


def test_popularity_fallback(interactions):
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("ease", {"lambda": 5.0}, m, user_ids, item_ids)
    counts = np.asarray(m.sum(axis=0)).ravel()
    np.testing.assert_allclose(model.popularity, counts / counts.max(), rtol=1e-6)
    assert model.popularity.max() == pytest.approx(1.0)
    pop = model.popularity_scores(3)
    assert pop.shape == (3, 60)
    np.testing.assert_array_equal(pop[2], model.popularity)
    assert model.known(["S0000", "S0299", "nobody", ""]).tolist() == [True, True, False, False]


def test_item_knn_scores_as_implicit_does_and_learns_groups(interactions):
    from implicit.nearest_neighbours import BM25Recommender

    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("knn", KNN_PARAMS, m, user_ids, item_ids)
    reference = BM25Recommender(K=KNN_PARAMS["neighbours"], K1=KNN_PARAMS["k1"], B=KNN_PARAMS["b"], num_threads=1)
    with warnings.catch_warnings():  # implicit converts its own BM25 weights to CSR and says so
        warnings.simplefilter("ignore")
        reference.fit(m, show_progress=False)
    users = np.array([0, 1, 2, 150])
    ids, scores = reference.recommend(users, m[users], N=len(item_ids), filter_already_liked_items=False)
    ours = model.score_users(users)
    for row, user in enumerate(users):
        scored = scores[row] > -1e30  # implicit leaves items with no neighbour unscored
        np.testing.assert_allclose(ours[row][ids[row][scored]], scores[row][scored], rtol=1e-4, atol=1e-4)
        assert not ours[row][np.setdiff1d(np.arange(len(item_ids)), ids[row][scored])].any()
        top = np.argsort(-ours[row])[:10]
        assert np.mean(top // 20 == user % 3) >= 0.8
    # a student's own row is all it needs: scoring fresh interactions is the same arithmetic
    items, events = m[7].indices, np.array(["apply"] * m[7].nnz)
    np.testing.assert_allclose(model.fold_in(items, events),
                               model.scores_for_rows(model.history_row(items, events))[0], rtol=1e-6)


@pytest.mark.parametrize("kind,params", [("als", ALS_PARAMS), ("ease", {"lambda": 5.0}), ("knn", KNN_PARAMS)])
def test_collaborative_bundle_round_trip(interactions, tmp_path, kind, params):
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit(kind, params, m, user_ids, item_ids)
    ref = model.save(tmp_path, {"data_version": "t"})
    bundle = load_bundle(ref.path)
    big = {"als": "item_factors", "ease": "ease_b", "knn": "similarity_data"}[kind]
    assert isinstance(bundle.arrays[big], np.memmap) and not bundle.arrays[big].flags.writeable
    assert isinstance(bundle.arrays["popularity"], np.memmap)
    loaded = CollaborativeModel.from_bundle(bundle)
    assert loaded.kind == kind and loaded.user_ids.tolist() == user_ids.tolist()
    users = np.array([0, 5, 299])
    np.testing.assert_array_equal(loaded.score_users(users), model.score_users(users))
    np.testing.assert_array_equal(loaded.popularity_scores(1)[0], model.popularity)
    assert (loaded.user_items != model.user_items).nnz == 0
    if kind != "als":
        items, events = np.array([1, 2, 3]), np.array(["apply", "view", "save"])
        np.testing.assert_allclose(loaded.fold_in(items, events), model.fold_in(items, events), atol=1e-6)


def _fold_in_after_load(interactions, tmp_path, mmap: bool):
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("als", ALS_PARAMS, m, user_ids, item_ids)
    loaded = CollaborativeModel.from_bundle(load_bundle(model.save(tmp_path, {}).path, mmap=mmap))
    items, events = np.array([1, 2, 3]), np.array(["apply", "view", "save"])
    np.testing.assert_allclose(loaded.fold_in(items, events), model.fold_in(items, events), atol=1e-6)


def test_als_fold_in_after_eager_bundle_load(interactions, tmp_path):
    _fold_in_after_load(interactions, tmp_path, mmap=False)


def test_als_fold_in_after_memmapped_bundle_load(interactions, tmp_path):
    _fold_in_after_load(interactions, tmp_path, mmap=True)


# --------------------------------------------------------------------------- serving arithmetic
# What the servers compute directly from a bundle must equal what the libraries compute.


def test_batched_fold_in_equals_one_student_at_a_time(interactions):
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("als", ALS_PARAMS, m, user_ids, item_ids)
    rows = m[:6]
    batched = model.scores_of(rows, model.fold_in_rows(rows))
    positions = np.array([7, 3, 11])
    for r in range(6):
        one = model.fold_in_rows(m[r])
        np.testing.assert_allclose(model.scores_of(m[r], one)[0], batched[r], atol=1e-5)
        np.testing.assert_allclose(model.scores_of(m[r], one, positions)[0], batched[r, positions], atol=1e-5)


def test_history_row_equals_the_interaction_matrix():
    class Items(CollaborativeModel):
        def __init__(self):  # only what history_row needs
            self.item_ids = np.arange(50)

    pos = np.array([3, 7, 3, 3, 9, 49, 0])
    events = ["view", "apply", "save", "apply", "view", "save", "view"]
    expected = interaction_matrix(np.zeros(len(pos), int), pos, events, 1, 50)
    got = Items().history_row(pos, events)
    assert got.dtype == expected.dtype and (got != expected).nnz == 0


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.37])
def test_fold_in_solves_exactly_as_implicit_recalculate_user(interactions, alpha):
    """The fold-in calls implicit's least-squares kernel on the rows' arrays directly; the factors
    must be recalculate_user's, to the bit, whatever alpha does to the confidences."""
    m, user_ids, item_ids = interactions
    model = CollaborativeModel.fit("als", {**ALS_PARAMS, "alpha": alpha}, m, user_ids, item_ids)
    rows = m[:7]
    expected = model._als.recalculate_user(np.arange(7), rows)
    np.testing.assert_array_equal(model.fold_in_rows(rows), expected)
    np.testing.assert_array_equal(model.fold_in_rows(rows.astype(np.float64)), expected)


def test_fold_in_of_a_history_equals_fold_in_of_its_row(interactions):
    m, user_ids, item_ids = interactions
    pos = np.array([3, 7, 3, 3, 9, 49, 0])
    events = ["view", "apply", "save", "apply", "view", "save", "view"]
    columns, confidences = history(pos, event_weights(events))
    row = interaction_matrix(np.zeros(len(pos), int), pos, events, 1, len(item_ids))
    for kind, params in (("als", ALS_PARAMS), ("ease", {"lambda": 10.0}), ("knn", KNN_PARAMS)):
        model = CollaborativeModel.fit(kind, params, m, user_ids, item_ids)
        assert (model.row_of(columns, confidences) != row).nnz == 0
        folded, expected = model.fold_in_history(columns, confidences), model.fold_in_rows(row)
        assert (folded is None) == (expected is None) == (kind != "als")
        if folded is not None:
            np.testing.assert_array_equal(folded, expected)
        np.testing.assert_array_equal(model.fold_in(pos, events), model.scores_of(row, expected)[0])
