"""The PostgreSQL catalog exported as a dataset for training (models/data/snapshot.py), against the
real server: the round trip dataset -> database -> snapshot gives back the same validated data,
and the snapshot's data version names its content."""

from __future__ import annotations

import pandas as pd

from models.data.contract import data_version, load_dataset as read_dataset
from models.data.generate import generate
from models.data.postgres import connect, load_dataset
from models.data.snapshot import export_snapshot

KEYS = {"students": ["student_id"], "internships": ["internship_id"], "companies": ["company_id"],
        "interactions": ["student_id", "internship_id", "event", "timestamp"],
        "outcomes": ["student_id", "internship_id"]}


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys).reset_index(drop=True).astype(str)


def test_a_snapshot_gives_back_the_loaded_dataset_and_names_it(pg_url, tmp_path):
    generate(tmp_path / "data", students=300, internships=60, seed=3, progress=False)
    load_dataset(pg_url, tmp_path / "data", progress=False)

    counts = export_snapshot(pg_url, tmp_path / "snapshot", progress=False)

    original, exported = read_dataset(tmp_path / "data"), read_dataset(tmp_path / "snapshot")
    for table, keys in KEYS.items():
        assert counts[table] == len(getattr(original, table))
        pd.testing.assert_frame_equal(_sorted(getattr(original, table), keys), _sorted(getattr(exported, table), keys))
    version = data_version(tmp_path / "snapshot")
    export_snapshot(pg_url, tmp_path / "again", progress=False)
    assert data_version(tmp_path / "again") == version  # the same content, the same version

    with connect(pg_url) as conn:
        conn.execute("INSERT INTO interactions (student_id, internship_id, event, timestamp, event_id) "
                     "SELECT student_id, 'I000001', 'view', 2000000000, 'snapshot-test' FROM students LIMIT 1")
    export_snapshot(pg_url, tmp_path / "snapshot", progress=False)  # replaces the folder
    assert data_version(tmp_path / "snapshot") != version
    assert len(read_dataset(tmp_path / "snapshot").interactions) == counts["interactions"] + 1
    assert not (tmp_path / "snapshot.exporting").exists() and not (tmp_path / "snapshot.replaced").exists()


def test_pmis_db_export_writes_a_dataset_that_trains_as_the_original(pg_url, tmp_path, capsys):
    from services.cli import main

    generate(tmp_path / "data", students=200, internships=40, seed=5, progress=False)
    assert main(["db", "load", "--data", str(tmp_path / "data"), "--database-url", pg_url, "--quiet"]) == 0
    assert main(["db", "export", "--data", str(tmp_path / "snapshot"), "--database-url", pg_url, "--quiet"]) == 0
    out = capsys.readouterr().out
    version = data_version(tmp_path / "snapshot")
    assert f"(data version {version})" in out
    assert main(["validate", "--data", str(tmp_path / "snapshot")]) == 0
