"""Vocabulary bitsets and student x internship pair features, on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.components import ranker, success
from models.data.contract import load_dataset
from models.data.domain import ELSEWHERE, NEIGHBOURING, REMOTE, SAME_DISTRICT, SAME_STATE
from models.data.generate import generate
from models.data.schema import PROTECTED_ATTRIBUTES
from models.components.features import (PAIR_FEATURES, BitLocations, FeatureSpace, Vocabulary, matched_missing,
                                         pair_features)

F = {name: i for i, name in enumerate(PAIR_FEATURES)}

PUNE, MUMBAI, NAGPUR, CHENNAI, KANCHEEPURAM = (18.52, 73.86), (19.08, 72.88), (21.15, 79.09), (13.08, 80.27), (12.83, 79.70)


def _km(a, b) -> float:
    """Independent haversine, to check the feature code's distances."""
    lat1, lon1, lat2, lon2 = map(np.radians, (*a, *b))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return float(2 * 6371.0 * np.arcsin(np.sqrt(h)))


# --------------------------------------------------------------------------- Vocabulary


def test_vocabulary_bitsets_round_trip_beyond_64_tokens():
    tokens = [f"Skill {i:03d}" for i in range(150)]  # 150 tokens: three uint64 words
    vocab = Vocabulary(tokens + ["", "  "])
    assert len(vocab) == 150
    assert vocab.tokens[0] == "skill 000"  # lowercased, sorted, blanks dropped
    lists = [["skill 000", "skill 063", "skill 064", "skill 149"], [], ["SKILL 100", "not a skill", "skill 065"],
             [f"skill {i:03d}" for i in range(150)]]
    bits = vocab.bitsets(lists)
    assert bits.shape == (4, 3) and bits.dtype == np.uint64
    assert vocab.decode(bits[0]) == ["skill 000", "skill 063", "skill 064", "skill 149"]
    assert int(bits[0, 0]) == (1 << 0) | (1 << 63)
    assert int(bits[0, 1]) == 1 and int(bits[0, 2]) == 1 << (149 - 128)
    assert vocab.decode(bits[1]) == [] and not bits[1].any()
    assert vocab.decode(bits[2]) == ["skill 065", "skill 100"]  # unknown ignored, case folded
    assert vocab.decode(bits[3]) == sorted(t.lower() for t in tokens)
    assert np.bitwise_count(bits).sum(axis=1).tolist() == [4, 0, 2, 150]
    assert "not a skill" not in vocab.index  # unknown tokens are never added


def test_bit_locations_read_the_bitsets_beyond_64_tokens():
    vocab = Vocabulary([f"t{i:03d}" for i in range(150)])
    bits = vocab.bitsets([["t000", "t063", "t064", "t149"], ["t100"]])
    codes = np.array([0, 63, 64, 149, 100, 5, -1])  # -1: not in the vocabulary
    where = BitLocations.of(codes)
    every = np.arange(len(codes))
    assert where.is_set(bits, np.zeros(1, dtype=np.int64), every).tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert where.is_set(bits, np.ones(len(codes), dtype=np.int64), every).tolist() == [0, 0, 0, 0, 1, 0, 0]


def test_vocabulary_empty_and_duplicates():
    vocab = Vocabulary([])
    bits = vocab.bitsets([["a"], []])
    assert bits.shape == (2, 1) and not bits.any()
    v = Vocabulary(["x", "X", " x "])
    assert len(v) == 1
    assert v.decode(v.bitsets([["x", "x", "X"]])[0]) == ["x"]


# --------------------------------------------------------------------------- pair features


def _students(**overrides) -> pd.DataFrame:
    df = pd.DataFrame({
        "student_id": ["S1", "S2"],
        "skills": [["python", "sql", "excel"], ["welding"]],
        "education": ["BSc", "ITI"],
        "cgpa": [8.0, np.nan],
        "college_tier": [1.0, 2.0],
        "district": ["Pune", "Chennai"],
        "state": ["Maharashtra", "Tamil Nadu"],
        "latitude": [PUNE[0], CHENNAI[0]],
        "longitude": [PUNE[1], CHENNAI[1]],
        "gender": ["F", "M"],
        "social_category": ["SC", "General"],
        "disability": [False, True],
        "preferred_sectors": [["information technology"], ["manufacturing"]],
        "preferred_districts": [["mumbai"], []],
    })
    for k, v in overrides.items():
        df[k] = v
    return df


def _internships() -> pd.DataFrame:
    return pd.DataFrame({
        "internship_id": ["I1", "I2", "I3", "I4"],
        "title": ["Developer", "Welder", "Accounts", "Remote Writer"],
        "sector": ["Information Technology", "Manufacturing", "Banking and Finance", "Media and Marketing"],
        "skills": [["python", "sql", "git", "react"], ["excel", "welding"], [], ["content writing"]],
        "district": ["Pune", "Mumbai", "Nagpur", "Kancheepuram"],
        "state": ["Maharashtra", "Maharashtra", "Maharashtra", "Tamil Nadu"],
        "latitude": [PUNE[0], MUMBAI[0], NAGPUR[0], KANCHEEPURAM[0]],
        "longitude": [PUNE[1], MUMBAI[1], NAGPUR[1], KANCHEEPURAM[1]],
        "remote": pd.array([False, False, False, True], dtype="boolean"),
        "stipend": [10000.0, 5000.0, np.nan, 3000.0],
        "slots": [4.0, 1.0, 2.0, np.nan],
        "duration_months": [6.0, 3.0, 2.0, 1.0],
        "deadline": pd.to_datetime(["2025-06-01", None, "2025-07-01", None], utc=True),
    })


APPLICANTS = np.array([8.0, 3.0, 0.0, 5.0])


@pytest.fixture
def space() -> FeatureSpace:
    return FeatureSpace.build(_students(), _internships(), applicants=APPLICANTS)


def _all_pairs(space, students_df):
    st = space.students(students_df)
    s_pos, i_pos = np.repeat(np.arange(len(st)), len(space.items)), np.tile(np.arange(len(space.items)), len(st))
    return pair_features(st, s_pos, space.items, i_pos).reshape(len(st), len(space.items), -1)


def test_pair_features_hand_computed(space):
    x = _all_pairs(space, _students())
    assert x.shape == (2, 4, len(PAIR_FEATURES)) and x.dtype == np.float32
    col = lambda name: x[:, :, F[name]]  # noqa: E731  (students x internships)

    np.testing.assert_array_equal(col("skills_matched"), [[2, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(col("skills_missing"), [[2, 1, 0, 1], [4, 1, 0, 1]])
    np.testing.assert_allclose(col("skill_overlap"), [[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    np.testing.assert_array_equal(col("distance_class"), [
        [SAME_DISTRICT, NEIGHBOURING, SAME_STATE, REMOTE],   # Pune: Pune, Mumbai ~120 km, Nagpur, remote
        [ELSEWHERE, ELSEWHERE, ELSEWHERE, REMOTE],           # Chennai: nothing near except the remote one
    ])
    assert _km(PUNE, MUMBAI) < 150 < _km(PUNE, NAGPUR)
    np.testing.assert_allclose(col("log_distance_km"), [
        [0.0, np.log1p(_km(PUNE, MUMBAI)), np.log1p(_km(PUNE, NAGPUR)), 0.0],
        [np.log1p(_km(CHENNAI, PUNE)), np.log1p(_km(CHENNAI, MUMBAI)), np.log1p(_km(CHENNAI, NAGPUR)), 0.0],
    ], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(col("preferred_sector"), [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(col("preferred_district"), [[0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(col("log_stipend")[0], [np.log(10000), np.log(5000), np.nan, np.log(3000)], rtol=1e-6)
    np.testing.assert_array_equal(col("remote")[0], [0, 0, 0, 1])
    np.testing.assert_array_equal(col("duration_months")[1], [6, 3, 2, 1])
    np.testing.assert_allclose(col("log_slots")[0], [np.log(4), 0.0, np.log(2), np.nan], rtol=1e-6)
    # competition = log1p(applicants / slots); unknown slots count as 1
    np.testing.assert_allclose(col("competition")[0], np.log1p([8 / 4, 3 / 1, 0 / 2, 5 / 1]), rtol=1e-6)
    np.testing.assert_array_equal(col("competition")[0], col("competition")[1])
    np.testing.assert_array_equal(col("cgpa")[0], [8, 8, 8, 8])
    assert np.isnan(col("cgpa")[1]).all()
    np.testing.assert_array_equal(col("college_tier"), [[1] * 4, [2] * 4])
    np.testing.assert_array_equal(col("education_level"), [[4] * 4, [2] * 4])  # bsc -> 4, iti -> 2


def test_matched_missing_decodes_skill_names(space):
    st = space.students(_students())
    matched, missing = matched_missing(st, 0, space.items, 0, space.skills)
    assert matched == ["python", "sql"] and missing == ["git", "react"]
    matched, missing = matched_missing(st, 1, space.items, 1, space.skills)
    assert matched == ["welding"] and missing == ["excel"]


def test_missing_values_give_nan_and_elsewhere(space):
    df = _students(cgpa=[np.nan, np.nan], district=[None, ""], state=[None, np.nan],
                   latitude=[np.nan, None], longitude=[np.nan, None], education=[None, "unknown"])
    x = _all_pairs(space, df)
    assert np.isnan(x[:, :, F["cgpa"]]).all()
    assert np.isnan(x[:, :, F["education_level"]]).all()
    np.testing.assert_array_equal(x[:, :, F["distance_class"]], [[ELSEWHERE] * 3 + [REMOTE]] * 2)
    assert np.isnan(x[:, :3, F["log_distance_km"]]).all()
    assert (x[:, 3, F["log_distance_km"]] == 0).all()  # remote: distance does not matter
    # Missing location says nothing about skills.
    np.testing.assert_array_equal(x[:, :, F["skills_matched"]], [[2, 1, 0, 0], [0, 1, 0, 0]])


def test_missing_values_as_pandas_na_from_the_loader(space):
    df = _students(district=pd.array([pd.NA, "Chennai"], dtype="string"),
                   state=pd.array([pd.NA, "Tamil Nadu"], dtype="string"))
    x = _all_pairs(space, df)
    assert x[0, 0, F["distance_class"]] != SAME_DISTRICT


def test_empty_district_in_a_csv_dataset_builds_features(tmp_path):
    generate(tmp_path / "d", students=60, internships=20, seed=5, fmt="csv", progress=False, catalog=False)
    path = tmp_path / "d" / "students.csv"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.loc[3, "district"] = ""
    raw.to_csv(path, index=False)
    ds = load_dataset(tmp_path / "d")
    assert ds.students["district"].isna().sum() == 1
    fs = FeatureSpace.build(ds.students, ds.internships)
    st = fs.students(ds.students)
    assert st.district[3] == ""


def test_profile_dict_of_lists_matches_dataframe_path(space):
    df = _students()
    from_frame = _all_pairs(space, df)
    for r in range(len(df)):
        profile = {c: [df[c].iloc[r]] for c in df.columns}  # what a server builds from one request
        one = _all_pairs(space, profile)
        np.testing.assert_array_equal(one[0], from_frame[r])
    # A sparse profile (skills only) works and leaves the rest unknown.
    x = _all_pairs(space, {"student_id": ["new"], "skills": [["Python", "git"]]})
    np.testing.assert_array_equal(x[0, :, F["skills_matched"]], [2, 0, 0, 0])
    assert np.isnan(x[0, :, F["cgpa"]]).all()
    np.testing.assert_array_equal(x[0, :, F["preferred_sector"]], [0, 0, 0, 0])


# --------------------------------------------------------------------------- protected attributes


def test_no_protected_attribute_is_a_feature():
    for names in (PAIR_FEATURES, success.FEATURES, ranker.FEATURES):
        for name in names:
            assert not any(p in name for p in PROTECTED_ATTRIBUTES), name
    assert set(PROTECTED_ATTRIBUTES) == {"gender", "social_category", "disability"}


def test_protected_attributes_do_not_change_pair_features(tmp_path):
    generate(tmp_path / "d", students=150, internships=40, seed=9, fmt="csv", progress=False, catalog=False)
    ds = load_dataset(tmp_path / "d")
    fs = FeatureSpace.build(ds.students, ds.internships, applicants=np.arange(40, dtype=float))
    n, m = len(ds.students), len(fs.items)
    s_pos, i_pos = np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
    base = pair_features(fs.students(ds.students), s_pos, fs.items, i_pos)

    changed = ds.students.copy()
    rng = np.random.default_rng(0)
    changed["gender"] = rng.permutation(changed["gender"].to_numpy())
    changed["social_category"] = np.where(changed["social_category"] == "General", "SC", "General")
    changed["disability"] = ~changed["disability"].astype(bool)
    assert (changed["social_category"] != ds.students["social_category"]).all()
    other = pair_features(fs.students(changed), s_pos, fs.items, i_pos)
    np.testing.assert_array_equal(base, other)
    dropped = pair_features(fs.students(changed.drop(columns=list(PROTECTED_ATTRIBUTES))), s_pos, fs.items, i_pos)
    np.testing.assert_array_equal(base, dropped)
