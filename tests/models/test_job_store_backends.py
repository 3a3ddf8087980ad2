"""The job table and the registry on both backends: the SQLite file beside the bundles (the default)
and PostgreSQL (PMIS_DATABASE_URL=postgresql://...; a fresh schema of the real server per test,
skipped where none is reachable, a failure in CI).

The same scenarios run on each: a job's transitions, paging, events, the trigger log, a restart's
recovery, registration guarded against a cancel; two trainers racing to start the same queued jobs
(each job runs once); and the one setting that chooses where the tables are.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from models.bundle.registry import Registry, RegistryError, open_registry, registry_exists
from models.bundle.writing import write_bundle
from models.lifecycle.store import RESTART_MESSAGE, JobStopped, JobStore, open_job_store

CONFIG = {"components": ["content"]}


@pytest.fixture(autouse=True)
def _no_signing_key(unsigned_bundles):
    """Bundles written here are unsigned; a key in the environment must not leak in."""


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    return tmp_path / "bundles"


@pytest.fixture
def store(registry_location, bundles: Path) -> JobStore:
    return JobStore(registry_location, bundles=bundles)


def test_a_job_from_queued_to_succeeded(store: JobStore) -> None:
    job = store.create(CONFIG, source="cli", reason="by hand")
    assert (job["status"], job["source"], job["reason"], job["config"]) == ("QUEUED", "cli", "by hand", CONFIG)
    assert [j["job_id"] for j in store.queued(5)] == [job["job_id"]]
    assert store.start(job["job_id"], pid=11, host="a") is True
    assert store.start(job["job_id"], pid=12, host="b") is False  # no longer queued
    assert store.progress(job["job_id"], "stage_started", "fit", 40.0, "fitting", {"auc": 0.7}) == "RUNNING"
    store.progress(job["job_id"], "stage_started", "fit", 10.0, "late report")  # percent never goes back
    row = store.get(job["job_id"])
    assert (row["status"], row["pid"], row["host"], row["percent"], row["metrics"]) == ("RUNNING", 11, "a", 40.0,
                                                                                       {"auc": 0.7})
    assert store.finish(job["job_id"], "SUCCEEDED", "done", activation=[{"component": "content"}]) is True
    assert store.finish(job["job_id"], "FAILED", "again") is False
    row = store.get(job["job_id"])
    assert (row["status"], row["percent"], row["activation"]) == ("SUCCEEDED", 100.0, [{"component": "content"}])
    events = store.events(job["job_id"])
    assert [e["status"] for e in events] == ["QUEUED", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert events[2]["metrics"] == {"auc": 0.7} and events[3]["percent"] == 40.0
    assert store.events(job["job_id"], after=events[-2]["id"]) == events[-1:]
    assert store.counts() == {"QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 1, "FAILED": 0, "CANCELLED": 0}


def test_listing_pages_newest_first(store: JobStore) -> None:
    ids = [store.create(CONFIG)["job_id"] for _ in range(5)]
    store.start(ids[0], 1, "h")
    first, after = store.list(page_size=2)
    assert [j["job_id"] for j in first] == ids[:2:-1][:2] == [ids[4], ids[3]]
    second, after = store.list(page_size=2, after=after)
    third, end = store.list(page_size=2, after=after)
    assert [j["job_id"] for j in second + third] == [ids[2], ids[1], ids[0]] and end is None
    assert [j["job_id"] for j in store.list(["RUNNING"])[0]] == [ids[0]]
    assert store.list(["QUEUED", "RUNNING"], page_size=10)[0][-1]["job_id"] == ids[0]


def test_created_already_claimed_and_stopped_from_outside(store: JobStore) -> None:
    job = store.create(CONFIG, claimed_by=(99, "cli-host"))
    assert (job["status"], job["pid"], job["host"]) == ("RUNNING", 99, "cli-host")
    changed, row = store.stop(job["job_id"], "CANCELLED", "cancelled by request")
    assert changed and row["status"] == "CANCELLED" and row["error"] == ""
    assert store.stop(job["job_id"], "FAILED", "again")[0] is False
    store.note(job["job_id"], "cleaned up")
    assert store.events(job["job_id"])[-1]["message"] == "cleaned up"


def test_recovery_after_a_restart(store: JobStore, registry_location, bundles: Path) -> None:
    running, queued = (store.create(CONFIG)["job_id"] for _ in range(2))
    store.start(running, 5, "old-pod")
    store.progress(running, "stage_started", "ranker", 21.0, "ranker")
    again = JobStore(registry_location, bundles=bundles)  # the new trainer
    assert again.recover() == [running]
    assert again.get(running)["message"] == f"{RESTART_MESSAGE} during 'ranker' at 21%"
    assert again.get(queued)["status"] == "QUEUED" and again.recover() == []


def test_registration_guarded_against_a_cancel(store: JobStore, bundles: Path) -> None:
    registry = store.registry
    cancelled, ok = (store.create(CONFIG)["job_id"] for _ in range(2))
    for job_id in (cancelled, ok):
        store.start(job_id, 1, "h")
    store.stop(cancelled, "CANCELLED", "cancelled by request")
    ref = write_bundle(bundles, "content", documents={"x": 1})
    with pytest.raises(JobStopped):
        registry.register_many([(ref, {})], alias="champion", guard=store.guard(cancelled))
    assert registry.components() == []  # nothing registered, not even in part
    registry.register_many([(ref, {})], alias="champion", guard=store.guard(ok))
    assert registry.resolve("content")["version"] == 1
    assert store.get(ok)["committed"] and store.get(ok)["versions"] == {"content": 1}
    assert store.stop(ok, "CANCELLED", "too late")[0] is False  # registered: a cancel would lie


def test_trigger_log(store: JobStore) -> None:
    first = store.record_trigger("cli", "data", False, ["nothing new"], {"new": 0})
    second = store.record_trigger("api", "data", True, ["old"], {"age_hours": 30})
    assert second > first
    job = store.create(CONFIG)["job_id"]
    store.link_trigger(second, job)
    checks = store.triggers()
    assert [(c["id"], c["should_train"], c["job_id"]) for c in checks] == [(second, True, job), (first, False, None)]
    assert checks[0]["reasons"] == ["old"] and checks[0]["details"] == {"age_hours": 30}


def test_two_trainers_never_start_the_same_job(registry_location, bundles: Path) -> None:
    """Two stores (two trainers: their own connections) race to start the same 30 queued jobs."""
    first, second = JobStore(registry_location, bundles=bundles), JobStore(registry_location, bundles=bundles)
    ids = [first.create(CONFIG)["job_id"] for _ in range(30)]
    won: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def claim(store: JobStore, name: str) -> None:
        try:
            barrier.wait()
            for job in store.queued(len(ids)):  # both see every job queued at first
                if store.start(job["job_id"], pid=1, host=name):
                    won[name].append(job["job_id"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(s, n)) for s, n in ((first, "a"), (second, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not set(won["a"]) & set(won["b"])  # no job started twice
    assert sorted(won["a"] + won["b"]) == sorted(ids)  # and every one started
    for job_id in ids:
        winner = "a" if job_id in won["a"] else "b"
        assert first.get(job_id)["host"] == winner
        assert [e["status"] for e in first.events(job_id)].count("RUNNING") == 1


def test_one_setting_chooses_the_database(bundles: Path, pg_url, monkeypatch) -> None:
    monkeypatch.setenv("PMIS_DATABASE_URL", str(bundles.parent / "catalog.db"))  # a path: the file, as before
    elsewhere = bundles.parent / "elsewhere"
    assert open_registry(elsewhere).db_path == (elsewhere / "registry.db").resolve()
    monkeypatch.setenv("PMIS_DATABASE_URL", pg_url)
    store = open_job_store(bundles)
    assert store.db_path is None and store.registry.db.postgres and store.location == pg_url
    ref = write_bundle(bundles, "content", documents={"x": 1})
    store.registry.register(ref)
    store.registry.set_alias("content", 1, reason="first")
    with store.registry.db.transaction() as con:
        assert con.execute("SELECT path FROM versions").fetchone()["path"] == "content/1"  # bundles-relative
    assert not (bundles / "registry.db").exists()  # the metadata is in the database only
    reader = open_registry(bundles, read_only=True)  # any replica, bundles mounted anywhere
    assert registry_exists(bundles) and reader.resolve("content")["path"] == ref.path
    with pytest.raises(RegistryError, match="read-only"):
        reader.set_alias("content", 1, alias="challenger")
    with pytest.raises(ValueError, match="bundles folder"):
        Registry(pg_url)


def test_a_reader_refuses_a_database_with_no_registry(pg_url, bundles: Path) -> None:
    with pytest.raises(RegistryError, match="no registry in postgresql://"):
        Registry(pg_url, bundles=bundles, read_only=True)
