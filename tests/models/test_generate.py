"""Behaviour of the synthetic data generator and the SQLite catalog (small sizes, fast)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data import domain
from models.data.catalog import SCHEMA_VERSION, build_catalog
from models.data.generate import TABLES, generate

SMALL = dict(students=800, internships=200, companies=20, progress=False)

TS = pa.timestamp("us", tz="UTC")
LIST = pa.list_(pa.string())
EXPECTED_SCHEMA = {
    "students": [("student_id", pa.string()), ("skills", LIST), ("education", pa.string()),
                 ("field", pa.string()), ("cgpa", pa.float64()), ("college_tier", pa.int64()),
                 ("age", pa.int64()), ("district", pa.string()), ("state", pa.string()),
                 ("latitude", pa.float64()), ("longitude", pa.float64()), ("rural", pa.bool_()),
                 ("gender", pa.string()), ("social_category", pa.string()),
                 ("disability", pa.bool_()), ("preferred_sectors", LIST),
                 ("preferred_districts", LIST)],
    "internships": [("internship_id", pa.string()), ("title", pa.string()),
                    ("company_id", pa.string()), ("sector", pa.string()),
                    ("description", pa.string()), ("skills", LIST), ("district", pa.string()),
                    ("state", pa.string()), ("latitude", pa.float64()),
                    ("longitude", pa.float64()), ("remote", pa.bool_()), ("stipend", pa.int64()),
                    ("slots", pa.int64()), ("duration_months", pa.int64()), ("posted_at", TS),
                    ("deadline", TS)],
    "companies": [("company_id", pa.string()), ("name", pa.string()), ("industry", pa.string()),
                  ("size", pa.string())],
    "interactions": [("student_id", pa.string()), ("internship_id", pa.string()),
                     ("event", pa.string()), ("timestamp", TS)],
    "outcomes": [("student_id", pa.string()), ("internship_id", pa.string()),
                 ("selected", pa.int64()), ("decided_at", TS)],
}


def _load(d):
    return {t: pd.read_parquet(d / f"{t}.parquet") for t in TABLES}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen") / "data"
    summary = generate(d, seed=7, **SMALL)
    return d, summary, _load(d)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Default-sized dataset for statistical checks that need more rows."""
    d = tmp_path_factory.mktemp("gen") / "data"
    summary = generate(d, seed=3, catalog=False, progress=False)
    t = _load(d)
    pairs = (t["interactions"]
             .merge(t["students"], on="student_id")
             .merge(t["internships"], on="internship_id", suffixes=("_s", "_i")))
    pairs["overlap"] = [len(set(a) & set(b)) / len(b) for a, b in zip(pairs.skills_s, pairs.skills_i)]
    return summary, t, pairs


def test_files_and_exact_schema(small):
    d, summary, _ = small
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{t}.parquet" for t in TABLES] + ["catalog.db", "dataset.json"])
    for table, cols in EXPECTED_SCHEMA.items():
        schema = pq.read_schema(d / f"{table}.parquet")
        assert [(f.name, f.type) for f in schema] == cols, table
    assert json.loads((d / "dataset.json").read_text()) == summary
    assert summary["rows"] == {t: pq.ParquetFile(d / f"{t}.parquet").metadata.num_rows for t in TABLES}
    # no temporary sibling folder left behind
    assert [p.name for p in d.parent.iterdir()] == ["data"]


def test_same_seed_identical_different_seed_differs(small, tmp_path):
    d, summary, tables = small
    again = generate(tmp_path / "again", seed=7, catalog=False, **SMALL)
    assert again == summary
    for t in TABLES:
        assert (tmp_path / "again" / f"{t}.parquet").read_bytes() == (d / f"{t}.parquet").read_bytes()
    other = generate(tmp_path / "other", seed=8, catalog=False, **SMALL)
    o = _load(tmp_path / "other")
    assert not o["students"].equals(tables["students"])
    assert not o["interactions"].equals(tables["interactions"])
    assert other["rows"]["interactions"] != summary["rows"]["interactions"]


def test_ids_unique_and_foreign_keys_resolve(small):
    _, _, t = small
    assert t["students"].student_id.is_unique and t["students"].student_id.iloc[0] == "S0000001"
    assert t["internships"].internship_id.is_unique and t["internships"].internship_id.iloc[0] == "I000001"
    assert t["companies"].company_id.is_unique and t["companies"].company_id.iloc[0] == "C0001"
    assert t["companies"].name.is_unique
    assert t["internships"].company_id.isin(t["companies"].company_id).all()
    for name in ("interactions", "outcomes"):
        assert t[name].student_id.isin(t["students"].student_id).all()
        assert t[name].internship_id.isin(t["internships"].internship_id).all()
    assert not t["interactions"].duplicated(["student_id", "internship_id"]).any()


def test_value_ranges(small, medium):
    _, _, t = small
    s, i = t["students"], t["internships"]
    assert s.cgpa.between(6.0, 10.0).all() and (s.cgpa.round(2) == s.cgpa).all()
    assert s.age.between(21, 24).all() and set(s.age) == {21, 22, 23, 24}
    assert s.skills.map(len).between(3, 8).all()
    assert s.skills.map(lambda x: set(x) <= set(domain.SKILLS)).all()
    assert s.education.isin(list(domain.EDUCATION)).all()
    assert all(f in domain.EDUCATION[e][1] for e, f in zip(s.education, s.field))
    assert s.district.isin(domain.DISTRICT_NAMES).all()
    assert s.preferred_sectors.map(len).between(1, 3).all()
    assert s.preferred_sectors.map(lambda x: set(x) <= set(domain.SECTOR_NAMES)).all()
    assert (s.preferred_districts.map(lambda x: x[0]) == s.district).all()
    assert s.preferred_districts.map(len).between(1, 3).all()
    assert set(s.gender) <= {"M", "F", "O"} and set(s.social_category) <= {"GEN", "OBC", "SC", "ST", "EWS"}
    home = pd.DataFrame(domain.DISTRICTS).set_index(0)
    assert (abs(s.latitude - home.loc[s.district, 2].to_numpy()) < 0.5).all()

    assert i.skills.map(len).between(3, 6).all()
    assert i.stipend.between(5000, 12000).all() and i.slots.ge(1).all() and i.slots.le(50).all()
    assert i.duration_months.isin([6, 9, 12]).all()
    days = (i.deadline - i.posted_at).dt.total_seconds() / 86400
    assert days.between(30, 90).all()
    assert all(t in domain.SECTORS[sec][1] or t.removesuffix(" Intern") in domain.SECTORS[sec][1]
               for t, sec in zip(i.title, i.sector))
    assert all(sec in desc for sec, desc in zip(i.sector, i.description))
    assert i.description.nunique() > 0.9 * len(i)

    # shares on the larger sample
    _, tm, _ = medium
    tier = tm["students"].college_tier.value_counts(normalize=True)
    assert abs(tier[1] - 0.15) < 0.03 and abs(tier[2] - 0.35) < 0.03 and abs(tier[3] - 0.50) < 0.03
    gender = tm["students"].gender.value_counts(normalize=True)
    assert abs(gender["M"] - 0.55) < 0.03 and abs(gender["F"] - 0.44) < 0.03
    assert abs(tm["students"].disability.mean() - 0.03) < 0.01
    assert abs(tm["internships"].remote.mean() - 0.08) < 0.03
    msme = tm["companies"]["size"].isin(["Micro", "Small", "Medium"]).mean()
    assert 0.05 < msme < 0.5


def test_interactions_counts_times_and_mix(medium):
    summary, t, pairs = medium
    ix = t["interactions"]
    per_student = ix.groupby("student_id").size()
    assert abs(per_student.mean() - 10.0) < 0.5 and per_student.min() >= 1
    # inside the window and inside each internship's availability
    assert ix.timestamp.min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert ix.timestamp.max() < pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=180)
    assert ((pairs.timestamp >= pairs.posted_at) & (pairs.timestamp <= pairs.deadline)).all()
    mix = ix.event.value_counts(normalize=True)
    for event, target in {"view": 0.60, "save": 0.15, "apply": 0.25}.items():
        assert abs(mix[event] - target) < 0.03
        assert abs(summary["event_mix"][event] - mix[event]) < 1e-3


def test_one_outcome_per_apply_after_application(small):
    _, _, t = small
    applies = t["interactions"][t["interactions"].event == "apply"]
    o = t["outcomes"]
    assert len(o) == len(applies)
    merged = applies.merge(o, on=["student_id", "internship_id"], validate="one_to_one")
    lag = (merged.decided_at - merged.timestamp).dt.total_seconds() / 86400
    assert lag.between(7, 30).all()
    assert set(o.selected) == {0, 1}


@pytest.mark.parametrize("rate", [0.13, 0.3])
def test_selection_rate_matches_target(tmp_path, rate):
    summary = generate(tmp_path / "d", selection_rate=rate, seed=11, catalog=False, **SMALL)
    o = pd.read_parquet(tmp_path / "d" / "outcomes.parquet")
    assert abs(o.selected.mean() - rate) <= 0.02
    assert summary["selection_rate"] == pytest.approx(o.selected.mean(), abs=1e-6)


def test_planted_signal_visible(medium):
    summary, t, pairs = medium
    same = pairs.district_s == pairs.district_i
    far = (pairs.state_s != pairs.state_i) & ~pairs.remote
    apply_same = (pairs.event[same & ~pairs.remote] == "apply").mean()
    apply_far = (pairs.event[far] == "apply").mean()
    assert apply_same > apply_far + 0.08
    assert pairs.overlap[pairs.event == "apply"].mean() > pairs.overlap[pairs.event == "view"].mean() + 0.1
    pref = np.array([s in p for s, p in zip(pairs.sector, pairs.preferred_sectors)])
    assert (pairs.event[pref] == "apply").mean() > (pairs.event[~pref] == "apply").mean() + 0.08

    apps = pairs[pairs.event == "apply"].merge(t["outcomes"], on=["student_id", "internship_id"])
    sel, rej = apps[apps.selected == 1], apps[apps.selected == 0]
    assert sel.cgpa.mean() > rej.cgpa.mean() + 0.2
    assert sel.overlap.mean() > rej.overlap.mean() + 0.05
    assert sel.college_tier.mean() < rej.college_tier.mean()
    assert summary["oracle_auc"] >= 0.78


def test_protected_attributes_play_no_part(medium):
    _, t, pairs = medium
    apps = pairs[pairs.event == "apply"].merge(t["outcomes"], on=["student_id", "internship_id"])
    by_gender = apps.groupby("gender").selected.mean()
    assert abs(by_gender["M"] - by_gender["F"]) < 0.03
    by_cat = apps.groupby("social_category").selected.mean()
    assert by_cat.max() - by_cat.min() < 0.06
    # and they do not shape who applies where
    share = pairs.groupby("gender").event.apply(lambda e: (e == "apply").mean())
    assert abs(share["M"] - share["F"]) < 0.02


def test_existing_non_empty_out_dir_refused(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    # an existing empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, catalog=False, **SMALL)
    assert (empty / "dataset.json").exists()


def test_csv_output_round_trips(small, tmp_path):
    d, summary, t = small
    out = tmp_path / "csv"
    csv_summary = generate(out, seed=7, fmt="csv", catalog=False, **SMALL)
    assert csv_summary["rows"] == summary["rows"]
    s = pd.read_csv(out / "students.csv")
    assert list(s.columns) == [c for c, _ in EXPECTED_SCHEMA["students"]]
    for col in ("skills", "preferred_sectors", "preferred_districts"):
        assert s[col].str.split(";").map(list).tolist() == t["students"][col].map(list).tolist()
    ix = pd.read_csv(out / "interactions.csv")
    assert ix.timestamp.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    parsed = pd.to_datetime(ix.timestamp, utc=True)
    assert (parsed.to_numpy() == t["interactions"].timestamp.to_numpy()).all()
    i = pd.read_csv(out / "internships.csv")
    assert i.skills.str.split(";").map(list).tolist() == t["internships"].skills.map(list).tolist()


def test_catalog_matches_files(small, tmp_path):
    d, summary, t = small
    with sqlite3.connect(d / "catalog.db") as conn:
        for table in TABLES:
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == summary["rows"][table]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        skills, rural = conn.execute(
            "SELECT skills, rural FROM students WHERE student_id='S0000001'").fetchone()
        assert skills.split(";") == list(t["students"].skills[0]) and rural == int(t["students"].rural[0])
        ts = conn.execute("SELECT timestamp FROM interactions LIMIT 1").fetchone()[0]
        assert ts == int(t["interactions"].timestamp[0].timestamp())
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"idx_interactions_student_id", "idx_interactions_internship_id",
                "idx_outcomes_student_id"} <= indexes
        with pytest.raises(sqlite3.IntegrityError):  # primary key enforced
            conn.execute("INSERT INTO students (student_id) VALUES ('S0000001')")

    # the same catalog from CSV files
    csv_dir = tmp_path / "csv"
    generate(csv_dir, seed=7, fmt="csv", catalog=False, **SMALL)
    counts = build_catalog(csv_dir, tmp_path / "c.db", progress=False)
    assert counts == summary["rows"]
    with sqlite3.connect(tmp_path / "c.db") as conn:
        ts = conn.execute("SELECT timestamp FROM interactions LIMIT 1").fetchone()[0]
        assert ts == int(t["interactions"].timestamp[0].timestamp())
    assert not (tmp_path / "c.db.tmp").exists()


@pytest.mark.scale
def test_scale_one_million_students(tmp_path):
    """1M students x 100k internships in bounded memory (run with `-m scale`; ~2.5 min)."""
    summary = generate(tmp_path / "big", students=1_000_000, internships=100_000, progress=False)
    assert summary["rows"]["students"] == 1_000_000
    assert abs(summary["rows"]["interactions"] / 1_000_000 - 10.0) < 0.2
    assert abs(summary["selection_rate"] - 0.13) < 0.005
    assert summary["oracle_auc"] >= 0.8
