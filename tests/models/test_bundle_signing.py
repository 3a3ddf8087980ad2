"""Bundle signatures: nothing unsigned loads by default, tampering and other keys are refused, the key file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from models.bundle.format import BundleError
from models.bundle.reading import load_bundle, verify_bundle
from models.bundle.signing import ALLOW_UNSIGNED_ENV, SIGNING_KEY_ENV, SIGNING_KEY_FILE_ENV, ensure_signing_key
from models.bundle.writing import write_bundle
from tests.support.bundles import no_signing_key, rewrite_manifest  # noqa: F401 - no_signing_key: autouse


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
    rewrite_manifest(ref.path, lambda m: None)  # adds a signature
    assert verify_bundle(ref.path).content_hash == ref.content_hash


def test_key_file_created_once_by_racing_processes(tmp_path: Path) -> None:
    """Two pmis commands started at once on a new home must share one key, not crash."""
    import multiprocessing

    path = tmp_path / "home" / "signing-key"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(ensure_signing_key, [path] * 8)
    assert len(path.read_text().strip()) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["signing-key"]  # no temporary left behind
