"""The content component: tf-idf scores, skill explanations, bundle round trip, arithmetic equal to the library's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from models.bundle.reading import load_bundle
from models.components.content import (ContentModel, Embedding, SkillExplainer, _analyser, internship_text,
                                       profile_text)
from models.components.features import Vocabulary
from tests.support.bundles import no_signing_key  # noqa: F401 - autouse fixture
from tests.support.components import one_thread  # noqa: F401 - autouse fixture


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


# --------------------------------------------------------------------------- serving arithmetic
# What the servers compute directly from a bundle must equal what the libraries compute.


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


def test_content_analyser_equals_the_library(content_model):
    analyse = _analyser(content_model.vectorizer)
    library = content_model.vectorizer.build_analyzer()
    for text in ["", "one", "Two WORDS", "skill_machine_learning skill_sql, Data-Analysis!  ünïcode café x y",
                 profile_text(["Python", "sql"], "Computer Applications", ["Information Technology"]), "a b c"]:
        assert analyse(text) == library(text)
    # any configuration the shortcut does not cover falls back to scikit-learn's own analyser
    for other in (TfidfVectorizer(ngram_range=(1, 3)), TfidfVectorizer(ngram_range=(1, 2), stop_words=["bb"])):
        other.fit(["aa bb cc dd"])
        assert _analyser(other)("aa bb cc dd") == other.build_analyzer()("aa bb cc dd")


def test_content_embedding_arrays_equal_the_matrix(content_model):
    """What a server passes around (`Embedding`) scores and explains as the scipy matrix does."""
    student = ["python", "sql", "welding"]
    rows = content_model.embed_rows([profile_text(student)])
    matrix = content_model.embed([profile_text(student)])
    assert isinstance(rows, Embedding) and (rows.matrix() != matrix).nnz == 0
    np.testing.assert_array_equal(content_model.similarity(rows), content_model.similarity(matrix))
    np.testing.assert_array_equal(content_model.similarity(rows, np.array([2, 0])),
                                  content_model.similarity(matrix, np.array([2, 0])))
    np.testing.assert_array_equal(content_model._similarity_of_rows(rows, np.array([1, 0])),
                                  content_model._similarity_of_rows(matrix, np.array([1, 0])))
    explainer = _explainer(content_model)
    assert explainer.table(rows, student, [0, 1, 0]).rows() == explainer.table(matrix, student, [0, 1, 0]).rows()
    # a vector passed back with repeated terms weighs them together, as scipy's toarray does
    twice = Embedding(np.repeat(rows.data, 2), np.repeat(rows.indices, 2), np.array([0, 2 * len(rows.data)]),
                      rows.shape)
    np.testing.assert_array_equal(explainer.profile_weights(twice), explainer.profile_weights(twice.matrix()))
