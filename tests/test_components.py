"""The model components: content, collaborative, success predictor and ranker, with bundle round trips."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from implicit.als import AlternatingLeastSquares
from sklearn.metrics import ndcg_score, roc_auc_score
from threadpoolctl import threadpool_limits

from models.bundle.format import BundleError, load_bundle
from models.components.collaborative import EVENT_WEIGHTS, CollaborativeModel, interaction_matrix
from models.components.content import ContentModel, SkillExplainer, internship_text, profile_text
from models.components.features import PAIR_FEATURES, Vocabulary
from models.components.ranker import RankerModel, ranker_features
from models.components.scores import COMPONENT_SCORES, blend_scores
from models.components.ranker import FEATURES as RANKER_FEATURES
from models.components.success import FEATURES as SUCCESS_FEATURES
from models.components.success import SuccessModel, search


@pytest.fixture(autouse=True)
def _no_signing_key(unsigned_bundles):
    """Tests opt in to signing explicitly; a key in the environment must not leak in."""


@pytest.fixture(autouse=True)
def _one_thread():
    # On a small, busy machine OpenMP pools (HistGradientBoosting) spin and take 50x longer;
    # these tests are about numbers, not speed, so run single-threaded.
    with threadpool_limits(1):
        yield


# --------------------------------------------------------------------------- content


def _internships() -> pd.DataFrame:
    return pd.DataFrame({
        "internship_id": ["I1", "I2", "I3", "I4"],
        "title": ["Data Analyst Intern", "Welding Trainee", "Accounts Assistant", "Store Operations"],
        "description": ["Work with dashboards and reports.", "Fabrication shop floor work.",
                        "Book keeping for a small firm.", "Help run a retail store."],
        "sector": ["Information Technology", "Manufacturing", "Banking and Finance", "Retail and FMCG"],
        "skills": [["python", "sql", "data analysis"], ["welding", "fitting"], ["tally", "accounting"],
                   ["sales", "customer service"]],
    })


@pytest.fixture(scope="module")
def content_model() -> ContentModel:
    return ContentModel.fit(_internships())


def test_content_ranks_shared_skills_first(content_model):
    scores = content_model.score([profile_text(["python", "sql"]), profile_text(["welding"]),
                                  profile_text(["tally", "accounting"], field="Commerce")])
    assert scores.shape == (3, 4) and scores.dtype == np.float32
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]
    assert scores[0, 0] > 0.2 and scores[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert (scores >= 0).all() and (scores <= 1 + 1e-5).all()  # cosine of non-negative tf-idf
    # scoring a subset of items gives the same numbers for those items
    sub = content_model.score([profile_text(["python", "sql"])], item_pos=np.array([2, 0]))
    np.testing.assert_allclose(sub[0], scores[0, [2, 0]], rtol=1e-6)


def _explainer(model) -> SkillExplainer:
    skills = Vocabulary(t for row in _internships()["skills"] for t in row)
    return SkillExplainer(model, skills, skills.bitsets(list(_internships()["skills"])))


def test_content_skill_terms_are_parts_of_the_cosine(content_model):
    text = profile_text(["python", "sql", "welding"])
    (terms, missing), *_ = _explainer(content_model).table(content_model.embed([text]), ["python", "SQL ", "welding"],
                                                           [0]).rows()
    assert {t for t, _ in terms} == {"python", "sql"} and missing == ["data analysis"]
    assert terms[0][1] >= terms[1][1] > 0
    # each term is a share of the score, so together they cannot exceed it
    assert sum(v for _, v in terms) <= content_model.score([text], item_pos=np.array([0]))[0, 0] + 1e-6


def test_content_skill_table_equals_a_per_item_reference(content_model):
    """The packed, vectorised table against the obvious loop: per internship, matched skills with
    profile weight x internship weight of the skill's phrase token, strongest first (ties in
    vocabulary order), and missing skills by their weight in the internship."""
    explainer = _explainer(content_model)
    vocabulary, m = content_model.vectorizer.vocabulary_, content_model.item_matrix.toarray()
    for student in (["python", "sql"], ["welding", "sales", "tally"], ["quantum basket weaving"], []):
        vector = content_model.embed([profile_text(student)])
        q = vector.toarray()[0]
        positions = [3, 0, 2, 1, 0]
        rows = explainer.table(vector, student, positions).rows()
        for p, (terms, missing) in zip(positions, rows):
            have = [t for t in explainer.tokens.tolist() if t in _internships()["skills"][p] and t in student]
            lack = [t for t in explainer.tokens.tolist() if t in _internships()["skills"][p] and t not in student]
            column = {t: vocabulary["skill_" + t.replace(" ", "_")] for t in have + lack}
            expected = sorted(((t, float(q[column[t]]) * float(m[p, column[t]])) for t in have), key=lambda x: -x[1])
            assert [t for t, _ in terms] == [t for t, _ in expected]
            np.testing.assert_allclose([w for _, w in terms], [w for _, w in expected], rtol=1e-12)
            assert missing == sorted(lack, key=lambda t: -m[p, column[t]])


def test_content_brand_new_profile(content_model):
    fresh = profile_text(["Data Analysis"], field="Computer Science", preferred_sectors=["information technology"])
    s = content_model.score([fresh])[0]
    assert s.argmax() == 0 and s[0] > s[1:].max()
    # A profile of words the vectoriser has never seen scores zero everywhere, without crashing.
    np.testing.assert_array_equal(content_model.score([profile_text(["quantum basket weaving"])]),
                                  np.zeros((1, 4), np.float32))
    np.testing.assert_array_equal(content_model.score([profile_text([], field=np.nan)]), np.zeros((1, 4)))
    assert "skill_data_analysis" in internship_text("t", "d", "s", ["data analysis"])


def test_content_bundle_round_trip(content_model, tmp_path):
    ref = content_model.save(tmp_path, {"data_version": "test"}, {})
    loaded = ContentModel.from_bundle(load_bundle(ref.path))
    texts = [profile_text(["python"]), profile_text(["sales", "welding"], preferred_sectors=["retail and fmcg"])]
    np.testing.assert_array_equal(loaded.score(texts), content_model.score(texts))
    assert loaded.item_ids.tolist() == ["I1", "I2", "I3", "I4"]


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


# --------------------------------------------------------------------------- success predictor

F = {name: i for i, name in enumerate(PAIR_FEATURES)}


def _success_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(SUCCESS_FEATURES))).astype(np.float32)
    x[:, F["skill_overlap"]] = rng.uniform(0, 1, n)
    x[:, F["cgpa"]] = rng.uniform(5, 10, n)
    x[:, F["distance_class"]] = rng.integers(0, 5, n)
    x[rng.random(n) < 0.05, F["cgpa"]] = np.nan  # some missing CGPAs are imputed
    cgpa = np.nan_to_num(x[:, F["cgpa"]], nan=7.5)
    p = 1 / (1 + np.exp(-(-2.6 + 3.0 * x[:, F["skill_overlap"]] + 0.6 * (cgpa - 7.5))))
    y = (rng.random(n) < p).astype(int)
    return x, y, p


@pytest.fixture(scope="module")
def success_model():
    x, y, _ = _success_data(4000, seed=1)
    return SuccessModel.fit(x, y, "logistic_regression", {"clf__C": 1.0}, folds=3, seed=0)


def test_success_model_is_discriminative_and_calibrated(success_model):
    x, y, p_true = _success_data(8000, seed=2)
    pred = success_model.predict(x)
    assert pred.shape == (8000,) and pred.dtype == np.float32
    assert ((pred > 0) & (pred < 1)).all()
    assert roc_auc_score(y, pred) > 0.7
    assert abs(pred.mean() - y.mean()) < 0.02
    assert abs(pred.mean() - p_true.mean()) < 0.02
    # higher skill overlap -> higher predicted chance, all else equal
    a, b = x[:1].copy(), x[:1].copy()
    a[0, F["skill_overlap"]], b[0, F["skill_overlap"]] = 0.0, 1.0
    assert success_model.predict(b)[0] > success_model.predict(a)[0] + 0.1


def test_success_search_compares_all_candidates():
    x, y, _ = _success_data(600, seed=3)
    best, params, results = search(x, y, folds=2, budget=1, seed=0)
    assert set(results) == {"logistic_regression", "hist_gradient_boosting", "random_forest"}
    assert best == min(results, key=lambda k: results[k]["cv_log_loss"])
    assert params == results[best]["params"]
    assert all(0 < r["cv_log_loss"] < 0.7 for r in results.values())


def test_success_bundle_round_trip_and_tamper(success_model, tmp_path):
    x, _, _ = _success_data(500, seed=4)
    ref = success_model.save(tmp_path, {"data_version": "t"}, {})
    loaded = SuccessModel.from_bundle(load_bundle(ref.path))
    np.testing.assert_array_equal(loaded.predict(x), success_model.predict(x))
    assert loaded.algorithm == "logistic_regression"

    target = ref.path / "model.joblib"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.joblib"):
        load_bundle(ref.path)


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


def test_logistic_success_is_served_as_arithmetic_equal_to_the_library(success_model):
    from models.components.success import design_matrix

    assert success_model.linear is not None  # a logistic regression: served as a dot product
    x, _, _ = _success_data(3000, seed=5)
    x[::17, F["distance_class"]] = np.nan  # missing values go through the imputer's medians
    library = success_model.model.predict_proba(design_matrix(x))[:, 1]
    assert np.abs(success_model.predict(x) - library).max() <= 1e-6
    # and the factors are measured on the same log-odds
    counts = success_model.factor_table(x[:5], 3)[0]
    assert ((1 <= counts) & (counts <= 3)).all()


def test_a_success_model_that_serves_the_base_rate(success_model, tmp_path):
    """Training found it no better than the base rate: the bundle serves the base rate to every
    pair, with no factors, and keeps saying so after a round trip."""
    x, _, _ = _success_data(50, seed=9)
    success_model.serves_base_rate = True
    try:
        loaded = SuccessModel.from_bundle(load_bundle(success_model.save(tmp_path, {}, {}).path))
    finally:
        success_model.serves_base_rate = False
    assert loaded.serves_base_rate
    np.testing.assert_array_equal(loaded.predict(x), np.float32(loaded.base_rate))
    assert loaded.factor_table(x, 3)[0].sum() == 0


def test_success_factor_table_equals_one_swap_at_a_time(success_model):
    """The vectorised table against its definition, one row and one feature at a time: the change
    in log-odds when the feature is set to the typical pair's value, strongest three first."""
    x, _, _ = _success_data(60, seed=8)
    x[::7, F["distance_class"]] = np.nan
    counts, features, values, contributions = success_model.factor_table(x, 3)
    assert counts.sum() == len(features) == len(values) == len(contributions)
    at = 0
    for r in range(len(x)):
        base = success_model._log_odds(x[r:r + 1])[0]
        change = []
        for j in range(x.shape[1]):
            swapped = x[r:r + 1].copy()
            swapped[0, j] = success_model.reference[j]
            change.append(base - success_model._log_odds(swapped)[0])
        expected = [j for j in np.argsort(-np.abs(change), kind="stable")[:3] if abs(change[j]) > 1e-6]
        n = counts[r]
        assert features[at:at + n].tolist() == expected
        np.testing.assert_allclose(contributions[at:at + n], [change[j] for j in expected], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(values[at:at + n], x[r, expected].astype(np.float64))
        at += n


def test_non_linear_success_models_go_through_the_library():
    from models.components.success import design_matrix

    x, y, _ = _success_data(1500, seed=6)
    model = SuccessModel.fit(x, y, "hist_gradient_boosting", {"clf__max_leaf_nodes": 7}, folds=3, seed=0)
    assert model.linear is None
    np.testing.assert_array_equal(model.predict(x[:50]),
                                  model.model.predict_proba(design_matrix(x[:50]))[:, 1].astype(np.float32))


def test_content_embedding_and_cosine_equal_the_library(content_model):
    texts = [profile_text(["python", "sql"], "Computer Applications", ["Information Technology"]),
             "", "words nobody wrote", profile_text(["Welding", "fitting"]), "sales sales sales retail store"]
    ours, library = content_model.embed(texts), content_model.vectorizer.transform(texts)
    assert ours.shape == library.shape and ours.dtype == np.float32
    assert np.abs(ours.toarray() - library.toarray()).max() <= 1e-6
    expected = (library @ content_model.item_matrix.T).toarray()
    assert np.abs(content_model.similarity(ours) - expected).max() <= 1e-6
    # given items: the same numbers, to the bit, as the whole-catalogue scores, whether through
    # the postings or (a few items of a large catalogue) through the items' own rows
    np.testing.assert_array_equal(content_model.similarity(ours, np.array([3, 0])),
                                  content_model.similarity(ours)[:, [3, 0]])
    np.testing.assert_array_equal(content_model._similarity_of_rows(ours, np.array([3, 0, 2])),
                                  content_model.similarity(ours)[:, [3, 0, 2]])


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
