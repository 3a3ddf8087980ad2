"""Registry: versions, aliases with append-only history, rollback and comparison.

Every test runs on both backends: the SQLite file beside the bundles and PostgreSQL (a fresh schema
of the real server; skipped where none is reachable, a failure in CI)."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from models.bundle.format import BundleRef
from models.bundle.writing import write_bundle
from models.bundle.registry import Registry, RegistryError


@pytest.fixture(autouse=True)
def _no_signing_key(unsigned_bundles):
    """Tests opt in to signing explicitly; a key in the environment must not leak in."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bundles"


@pytest.fixture
def registry(registry_location, root: Path) -> Registry:
    return Registry(registry_location, bundles=root)


def _rows(registry: Registry, sql: str) -> list:
    """What the tables hold, read through the registry's own database (either backend)."""
    with registry.db.transaction() as con:
        return [tuple(r) for r in con.execute(sql).fetchall()]


def _publish(root: Path, registry: Registry, component: str, n: int) -> list[BundleRef]:
    refs = []
    for i in range(n):
        ref = write_bundle(
            root,
            component,
            documents={"i": i},
            metadata={"metrics": {"ndcg": {"10": 0.1 * (i + 1)}, "auc": 0.6 + i / 100},
                      "data_version": f"d{i}"},
        )
        registry.register(ref)
        refs.append(ref)
    return refs


def test_register_versions_get(root: Path, registry: Registry) -> None:
    refs = _publish(root, registry, "ranker", 3)
    _publish(root, registry, "content", 1)

    rows = registry.versions("ranker")
    assert [r["version"] for r in rows] == [3, 2, 1]  # newest first
    row = registry.get("ranker", 2)
    assert row["path"] == refs[1].path and row["path"].is_absolute()
    assert row["content_hash"] == refs[1].content_hash
    assert row["run_id"] == refs[1].run_id
    assert row["data_version"] == "d1"
    assert row["metrics"] == {"ndcg": {"10": 0.2}, "auc": 0.61}  # taken from the manifest
    assert row["created_at"].endswith("Z")
    assert row["aliases"] == []
    assert registry.components() == ["content", "ranker"]
    assert registry.versions("unknown") == []

    with pytest.raises(RegistryError, match="ranker version 9 is not registered"):
        registry.get("ranker", 9)
    with pytest.raises(KeyError):  # KeyError-like
        registry.get("nope", 1)


def test_paths_stored_relative_inside_registry_folder(
    root: Path, registry: Registry, tmp_path: Path
) -> None:
    inside = write_bundle(root, "cf", documents={"x": 1})
    outside = write_bundle(tmp_path / "elsewhere", "cf", documents={"x": 2})
    registry.register(inside)
    registry.register(replace(outside, version=2))
    stored = dict(_rows(registry, "SELECT version, path FROM versions"))
    assert stored[1] == "cf/1"
    assert Path(stored[2]).is_absolute()
    assert registry.get("cf", 1)["path"] == inside.path
    assert registry.get("cf", 2)["path"] == outside.path


def test_register_is_idempotent_but_versions_are_immutable(root: Path, registry: Registry) -> None:
    ref = write_bundle(root, "cf", documents={"x": 1})
    registry.register(ref, metrics={"auc": 0.7})
    registry.register(ref, metrics={"auc": 0.7})
    assert len(registry.versions("cf")) == 1
    forged = replace(ref, content_hash="0" * 64)
    with pytest.raises(RegistryError, match="already registered with different content"):
        registry.register(forged)


def test_set_alias_and_resolve(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 2)
    with pytest.raises(RegistryError, match="alias 'champion' is not set"):
        registry.resolve("ranker")
    registry.set_alias("ranker", 1, reason="first model")
    registry.set_alias("ranker", 2, alias="challenger")
    assert registry.resolve("ranker")["version"] == 1
    assert registry.resolve("ranker", "challenger")["version"] == 2
    assert registry.get("ranker", 1)["aliases"] == ["champion"]
    assert [r["aliases"] for r in registry.versions("ranker")] == [["challenger"], ["champion"]]


def test_unregistered_version_refused(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 1)
    with pytest.raises(RegistryError, match="ranker version 5 is not registered"):
        registry.set_alias("ranker", 5)
    assert registry.history("ranker") == []


def test_rollback_walks_back(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 3)
    for v in (1, 2, 3):
        registry.set_alias("ranker", v, reason=f"promote v{v}")

    assert registry.rollback("ranker", reason="bad ndcg")["version"] == 2
    assert registry.resolve("ranker")["version"] == 2
    assert registry.rollback("ranker")["version"] == 1  # again: the one before, not back to 3
    assert registry.resolve("ranker")["version"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("ranker")

    # A new promotion after rollbacks starts a new lineage on top of the current value.
    registry.set_alias("ranker", 3, reason="fixed")
    assert registry.rollback("ranker")["version"] == 1


def test_rollback_with_no_history(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 2)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback("ranker")
    registry.set_alias("ranker", 1)
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("ranker")


def test_history_is_append_only_and_records_reasons(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 2)
    registry.set_alias("ranker", 1, reason="initial")
    registry.set_alias("ranker", 1, reason="same again")  # no move, no entry
    registry.set_alias("ranker", 2, reason="better ndcg")
    registry.rollback("ranker", reason="latency regression")

    hist = registry.history("ranker")
    assert [(h["version"], h["previous_version"], h["action"], h["reason"]) for h in hist] == [
        (1, None, "set", "initial"),
        (2, 1, "set", "better ndcg"),
        (1, 2, "rollback", "latency regression"),
    ]
    assert all(h["changed_at"].endswith("Z") for h in hist)
    assert registry.history("ranker", "challenger") == []

    refused = (sqlite3.DatabaseError, psycopg.Error)
    for change in ("UPDATE alias_history SET reason = 'rewritten'", "DELETE FROM alias_history"):
        with pytest.raises(refused, match="append-only"):
            with registry.db.transaction(write=True) as con:
                con.execute(change)
    if registry.db.postgres:  # TRUNCATE skips row triggers; a statement trigger refuses it too
        with pytest.raises(refused, match="append-only"):
            with registry.db.transaction(write=True) as con:
                con.execute("TRUNCATE alias_history")
    assert len(registry.history("ranker")) == 3


def test_compare_flattens_metrics(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 2)
    extra = write_bundle(root, "ranker", documents={"i": 9})
    registry.register(extra, metrics={"auc": 0.9, "fairness": {"gender": {"gap": 0.01}}})

    result = registry.compare("ranker", [1, 3])
    assert result["versions"] == [1, 3]
    assert result["metrics"] == {
        "auc": {1: 0.6, 3: 0.9},
        "fairness.gender.gap": {1: None, 3: 0.01},
        "ndcg.10": {1: 0.1, 3: None},
    }
    with pytest.raises(RegistryError):
        registry.compare("ranker", [1, 7])


def test_two_registries_see_each_others_writes(root: Path, registry_location) -> None:
    a = Registry(registry_location, bundles=root)
    b = Registry(registry_location, bundles=root)
    ref = write_bundle(root, "cf", documents={"x": 1})
    a.register(ref)
    assert [r["version"] for r in b.versions("cf")] == [1]
    b.set_alias("cf", 1, reason="from b")
    assert a.resolve("cf")["version"] == 1
    assert a.history("cf")[0]["reason"] == "from b"
    assert a.db.schema_version() == 1
    if a.db.postgres:
        return
    with sqlite3.connect(root / "registry.db") as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 1
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_alias_moves_from_threads(root: Path, registry: Registry) -> None:
    _publish(root, registry, "ranker", 4)
    errors: list[Exception] = []

    def flip(v: int) -> None:
        try:
            for _ in range(10):
                registry.set_alias("ranker", v, reason=f"t{v}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(v,)) for v in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    hist = registry.history("ranker")
    # Each entry's previous_version is exactly the value before it: no lost updates.
    for before, after in zip(hist, hist[1:]):
        assert after["previous_version"] == before["version"]
    assert registry.resolve("ranker")["version"] == hist[-1]["version"]
