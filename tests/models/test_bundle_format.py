"""Bundles (models/bundle/format.py): round trips of arrays, objects and documents; atomic, increasing versions."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import models.bundle.writing as bundle_mod
from models.bundle.format import arrays_to_csr, BundleError, csr_to_arrays
from models.bundle.reading import load_bundle
from models.bundle.writing import bundle_versions, write_bundle
from tests.support.bundles import fitted_model, no_signing_key  # noqa: F401 - no_signing_key: autouse


# --------------------------------------------------------------------------- round trips


def test_arrays_round_trip_memory_mapped(tmp_path: Path) -> None:
    idf = np.linspace(0, 1, 1000, dtype=np.float32)
    emb = np.arange(12, dtype=np.int64).reshape(3, 4)
    ref = write_bundle(tmp_path, "content", arrays={"idf": idf, "emb": emb})

    b = load_bundle(ref.path)
    assert isinstance(b.arrays["idf"], np.memmap)
    assert not b.arrays["idf"].flags.writeable
    np.testing.assert_array_equal(b.arrays["idf"], idf)
    np.testing.assert_array_equal(b.arrays["emb"], emb)
    assert b.arrays["emb"].dtype == np.int64

    eager = load_bundle(ref.path, mmap=False)
    assert not isinstance(eager.arrays["idf"], np.memmap)
    np.testing.assert_array_equal(eager.arrays["idf"], idf)


def test_object_round_trip_predicts_the_same(tmp_path: Path) -> None:
    model, X = fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    loaded = load_bundle(ref.path).objects["model"]
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # The estimator's own library is pinned even though the caller did not declare it.
    assert "scikit-learn" in load_bundle(ref.path).manifest["pickled_libraries"]


def test_documents_and_manifest(tmp_path: Path) -> None:
    vocab = {"python": 0, "sql": 1}
    ref = write_bundle(
        tmp_path,
        "content",
        documents={"vocab": vocab, "ids": ["I1", "I2"]},
        metadata={
            "data_version": "synthetic-seed-7",
            "metrics": {"ndcg": {"10": np.float64(0.31)}, "recall@10": 0.5},
            "feature_schema": ["skill_overlap", "distance_km"],
        },
    )
    b = load_bundle(ref.path)
    assert b.documents == {"vocab": vocab, "ids": ["I1", "I2"]}
    m = b.manifest
    assert m["format"] == 1 and m["component"] == "content" and m["version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created_at"])
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", m["run_id"])
    assert m["data_version"] == "synthetic-seed-7" == ref.data_version
    assert m["libraries"]["numpy"] == np.__version__
    assert m["files"]["vocab.json"]["kind"] == "document"
    assert "signature" not in m
    assert b.metrics == {"ndcg": {"10": 0.31}, "recall@10": 0.5}
    assert b.metadata["feature_schema"] == ["skill_overlap", "distance_km"]
    canonical = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
    assert ref.content_hash == hashlib.sha256(canonical).hexdigest() == b.ref.content_hash


def test_run_id_taken_from_metadata(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "cf", documents={"x": 1}, metadata={"run_id": "run-42"})
    assert ref.run_id == "run-42"
    assert "run_id" not in load_bundle(ref.path).metadata


def test_csr_helpers_share_memory_with_mmapped_arrays(tmp_path: Path) -> None:
    m = sp.random(60, 45, density=0.1, format="csr", dtype=np.float32, random_state=1)
    ref = write_bundle(tmp_path, "cf", arrays=csr_to_arrays("ui", m))
    arrays = load_bundle(ref.path).arrays
    r = arrays_to_csr("ui", arrays)
    assert r.shape == m.shape
    assert (r != m).nnz == 0
    assert np.shares_memory(r.data, arrays["ui_data"])
    assert np.shares_memory(r.indices, arrays["ui_indices"])
    assert np.shares_memory(r.indptr, arrays["ui_indptr"])
    np.testing.assert_allclose(r @ np.ones(45), m @ np.ones(45), rtol=1e-6)


def test_csr_helpers_canonicalise_without_touching_the_input() -> None:
    m = sp.csr_matrix((np.array([1.0, 2.0]), np.array([1, 1]), np.array([0, 2])), shape=(1, 3))
    arrays = csr_to_arrays("x", m)
    assert m.nnz == 2  # caller's matrix untouched
    assert arrays_to_csr("x", arrays).toarray().tolist() == [[0.0, 3.0, 0.0]]


def test_sparse_and_object_arrays_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"m\.npy.*csr_to_arrays"):
        write_bundle(tmp_path, "cf", arrays={"m": sp.eye(3, format="csr")})
    with pytest.raises(BundleError, match=r"names\.npy.*object dtype"):
        write_bundle(tmp_path, "cf", arrays={"names": np.array(["a", None], dtype=object)})
    assert bundle_versions(tmp_path, "cf") == []


def test_unsafe_names_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="invalid array name"):
        write_bundle(tmp_path, "cf", arrays={"../evil": np.zeros(1)})
    with pytest.raises(BundleError, match="manifest.json"):
        write_bundle(tmp_path, "cf", documents={"manifest": {}})


# --------------------------------------------------------------------------- versions


def test_versions_increase(tmp_path: Path) -> None:
    refs = [write_bundle(tmp_path, "ranker", documents={"i": i}) for i in range(3)]
    assert [r.version for r in refs] == [1, 2, 3]
    assert bundle_versions(tmp_path, "ranker") == [1, 2, 3]
    assert refs[2].path == (tmp_path / "ranker" / "3").resolve()
    assert len({r.content_hash for r in refs}) == 3


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    n_threads, per_thread = 8, 3
    barrier = threading.Barrier(n_threads)
    refs, errors = [], []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                ref = write_bundle(
                    tmp_path,
                    "content",
                    arrays={"v": np.full(1000, t * 100 + i)},
                    documents={"who": {"thread": t, "i": i}},
                )
                with lock:
                    refs.append(ref)
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert errors == []
    total = n_threads * per_thread
    assert sorted(r.version for r in refs) == list(range(1, total + 1))
    assert bundle_versions(tmp_path, "content") == list(range(1, total + 1))
    assert not list((tmp_path / "content").glob(".tmp-*"))
    for ref in refs:
        b = load_bundle(ref.path)  # complete and consistent: hashes verified
        assert b.manifest["version"] == ref.version
        who = b.documents["who"]
        assert int(b.arrays["v"][0]) == who["thread"] * 100 + who["i"]


def test_lost_race_retries_with_next_version(tmp_path: Path, monkeypatch) -> None:
    write_bundle(tmp_path, "cf", documents={"first": True})
    real = bundle_mod.bundle_versions
    calls = {"n": 0}

    def stale(root, component):  # first look misses version 1, as if it appeared meanwhile
        calls["n"] += 1
        return [] if calls["n"] == 1 else real(root, component)

    monkeypatch.setattr(bundle_mod, "bundle_versions", stale)
    ref = write_bundle(tmp_path, "cf", documents={"second": True})
    assert ref.version == 2
    assert load_bundle(ref.path).manifest["version"] == 2
    assert load_bundle(tmp_path / "cf" / "1").documents == {"first": True}


def test_failed_write_leaves_no_temp_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"f\.joblib.*cannot pickle"):
        write_bundle(
            tmp_path, "ranker", arrays={"a": np.zeros(10)}, objects={"f": lambda x: x}
        )
    assert list((tmp_path / "ranker").iterdir()) == []
