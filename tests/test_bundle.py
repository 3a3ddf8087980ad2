"""Bundles: round trips, atomic versioning, and refusal of anything corrupted or mismatched."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

import models.bundle.format as bundle_mod
from models.bundle.format import (
    ALLOW_UNSIGNED_ENV,
    SIGNING_KEY_ENV,
    SIGNING_KEY_FILE_ENV,
    BundleError,
    arrays_to_csr,
    bundle_versions,
    csr_to_arrays,
    ensure_signing_key,
    load_bundle,
    verify_bundle,
    write_bundle,
)


@pytest.fixture(autouse=True)
def _no_signing_key(unsigned_bundles):
    """Tests opt in to signing explicitly; a key in the environment must not leak in."""


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(path: Path, edit) -> None:
    """Edit a manifest and re-sign it with the current key, like a careful attacker would."""
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    manifest.pop("signature", None)
    key = bundle_mod._signing_key()
    if key is not None:
        manifest["signature"] = bundle_mod._sign(manifest, key)
    mpath.write_text(json.dumps(manifest))


def _fitted_model() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return LogisticRegression().fit(X, y), X


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
    model, X = _fitted_model()
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


# --------------------------------------------------------------------------- integrity


def test_flipped_byte_in_npy_is_refused(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "content", arrays={"idf": np.ones(100)})
    _flip_last_byte(ref.path / "idf.npy")
    with pytest.raises(BundleError, match=r"content/1/idf\.npy: sha256 mismatch"):
        load_bundle(ref.path)
    with pytest.raises(BundleError, match=r"idf\.npy"):
        verify_bundle(ref.path)


def test_flipped_byte_in_joblib_refused_before_unpickling(tmp_path: Path, monkeypatch) -> None:
    model, _ = _fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    _flip_last_byte(ref.path / "model.joblib")

    def must_not_unpickle(*args, **kwargs):
        pytest.fail("joblib.load called on an unverified file")

    monkeypatch.setattr(bundle_mod.joblib, "load", must_not_unpickle)
    with pytest.raises(BundleError, match=r"model\.joblib: sha256 mismatch"):
        load_bundle(ref.path)


def test_verify_bundle_never_unpickles(tmp_path: Path, monkeypatch) -> None:
    model, _ = _fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    monkeypatch.setattr(bundle_mod.joblib, "load", lambda *a, **k: pytest.fail("unpickled"))
    assert verify_bundle(ref.path) == ref


def test_unlisted_file_is_refused(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "content", arrays={"idf": np.ones(3)})
    (ref.path / "extra.joblib").write_bytes(b"not listed")
    with pytest.raises(BundleError, match=r"extra\.joblib: not listed in manifest"):
        load_bundle(ref.path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "content", arrays={"idf": np.ones(3)}, documents={"d": 1})
    (ref.path / "d.json").unlink()
    with pytest.raises(BundleError, match=r"d\.json: listed in manifest but missing"):
        load_bundle(ref.path)


def test_manifest_pointing_outside_the_folder_is_refused(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "content", documents={"d": 1})
    (tmp_path / "outside.json").write_text("1")

    def escape(m: dict) -> None:
        m["files"]["../../outside.json"] = m["files"].pop("d.json")

    _rewrite_manifest(ref.path, escape)
    with pytest.raises(BundleError, match="invalid file name"):
        load_bundle(ref.path)


# --------------------------------------------------------------------------- signatures


def test_signing(tmp_path: Path, monkeypatch) -> None:
    meta = {"metrics": {"auc": 0.7}}
    unsigned = write_bundle(tmp_path, "ranker", documents={"d": 1}, metadata=meta)
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV)  # the default: nothing unsigned loads

    with pytest.raises(BundleError, match=r"manifest\.json: no bundle signing key configured.*"
                                          r"PMIS_ALLOW_UNSIGNED_BUNDLES=1"):
        load_bundle(unsigned.path)
    monkeypatch.setenv(SIGNING_KEY_ENV, "s3cret")
    with pytest.raises(BundleError, match=r"manifest\.json: not signed; refusing it"):
        load_bundle(unsigned.path)

    signed = write_bundle(tmp_path, "ranker", documents={"d": 1}, metadata=meta)
    b = load_bundle(signed.path)
    assert b.manifest["signature"]
    assert b.metrics == {"auc": 0.7}

    # Tamper with the metrics without re-signing (no key available to the attacker).
    mpath = signed.path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["metadata"]["metrics"]["auc"] = 0.99
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: signature mismatch"):
        load_bundle(signed.path)

    other = write_bundle(tmp_path, "ranker", documents={"d": 1})
    monkeypatch.setenv(SIGNING_KEY_ENV, "another-key")
    with pytest.raises(BundleError, match="signature mismatch"):
        verify_bundle(other.path)


def test_key_file_is_created_private_and_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV)
    key = ensure_signing_key(tmp_path / "home" / "signing-key")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) == 64
    assert os.environ[SIGNING_KEY_FILE_ENV] == str(key.resolve())
    assert ensure_signing_key(key).read_text() == key.read_text()  # never replaced
    signed = write_bundle(tmp_path, "ranker", documents={"d": 1})
    assert load_bundle(signed.path).manifest["signature"]
    key.write_text("rotated-to-another-key\n")
    with pytest.raises(BundleError, match="signature mismatch"):
        load_bundle(signed.path)


def test_rewritten_hash_is_refused_when_signed(tmp_path: Path, monkeypatch) -> None:
    """The attack of an unsigned deployment: change a payload, rewrite its hash in the manifest."""
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV)
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    ref = write_bundle(tmp_path, "ranker", documents={"d": 1})
    doc = ref.path / "d.json"
    doc.write_text(json.dumps(2))
    mpath = ref.path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"]["d.json"]["sha256"] = hashlib.sha256(doc.read_bytes()).hexdigest()
    manifest["files"]["d.json"]["bytes"] = doc.stat().st_size
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature mismatch"):
        load_bundle(ref.path)


def test_signature_does_not_change_content_hash(tmp_path: Path, monkeypatch) -> None:
    ref = write_bundle(tmp_path, "ranker", documents={"d": 1})
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    _rewrite_manifest(ref.path, lambda m: None)  # adds a signature
    assert verify_bundle(ref.path).content_hash == ref.content_hash


# --------------------------------------------------------------------------- environment


def test_pickled_library_mismatch_in_manifest_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    model, _ = _fitted_model()
    ref = write_bundle(
        tmp_path, "success", objects={"model": model}, pickled_libraries=("scikit-learn",)
    )
    installed = bundle_mod.importlib_metadata.version("scikit-learn")
    _rewrite_manifest(ref.path, lambda m: m["libraries"].update({"scikit-learn": "0.0.1"}))
    monkeypatch.setattr(bundle_mod.joblib, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(BundleError) as info:
        load_bundle(ref.path)
    msg = str(info.value)
    assert f"built with scikit-learn 0.0.1, this process has {installed}" in msg
    assert "retrain or install the matching version" in msg


def test_pickled_library_mismatch_in_process_is_refused(tmp_path: Path, monkeypatch) -> None:
    model, _ = _fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    built = bundle_mod.importlib_metadata.version("scikit-learn")
    real_version = bundle_mod.importlib_metadata.version

    def fake_version(name: str) -> str:
        return "99.0.0" if name == "scikit-learn" else real_version(name)

    monkeypatch.setattr(bundle_mod.importlib_metadata, "version", fake_version)
    expected = rf"scikit-learn {re.escape(built)}, this process has 99\.0\.0"
    with pytest.raises(BundleError, match=expected):
        load_bundle(ref.path)


def test_other_library_difference_only_warns(tmp_path: Path, caplog) -> None:
    ref = write_bundle(tmp_path, "content", arrays={"idf": np.ones(3)})
    _rewrite_manifest(ref.path, lambda m: m["libraries"].update({"pandas": "0.0.1"}))
    with caplog.at_level(logging.WARNING, logger="models.bundle.format"):
        b = load_bundle(ref.path)
    assert b.arrays["idf"].sum() == 3
    assert "pandas 0.0.1" in caplog.text


def test_python_version_mismatch_refused_for_pickles(tmp_path: Path) -> None:
    model, _ = _fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    _rewrite_manifest(ref.path, lambda m: m.update({"python": "2.7.18"}))
    with pytest.raises(BundleError, match=r"built with Python 2\.7, this process runs Python"):
        verify_bundle(ref.path)


def test_key_file_created_once_by_racing_processes(tmp_path: Path) -> None:
    """Two pmis commands started at once on a new home must share one key, not crash."""
    import multiprocessing

    path = tmp_path / "home" / "signing-key"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(ensure_signing_key, [path] * 8)
    assert len(path.read_text().strip()) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["signing-key"]  # no temporary left behind
