"""Bundles refused when corrupted or mismatched: changed, unlisted or missing files, escaping names,
library and Python versions other than the process's."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

import models.bundle.reading as bundle_mod
from models.bundle.format import BundleError
from models.bundle.reading import load_bundle, verify_bundle
from models.bundle.signing import SIGNING_KEY_ENV
from models.bundle.writing import write_bundle
from tests.support.bundles import fitted_model, no_signing_key, rewrite_manifest  # noqa: F401 - no_signing_key: autouse


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- integrity


def test_flipped_byte_in_npy_is_refused(tmp_path: Path) -> None:
    ref = write_bundle(tmp_path, "content", arrays={"idf": np.ones(100)})
    _flip_last_byte(ref.path / "idf.npy")
    with pytest.raises(BundleError, match=r"content/1/idf\.npy: sha256 mismatch"):
        load_bundle(ref.path)
    with pytest.raises(BundleError, match=r"idf\.npy"):
        verify_bundle(ref.path)


def test_flipped_byte_in_joblib_refused_before_unpickling(tmp_path: Path, monkeypatch) -> None:
    model, _ = fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    _flip_last_byte(ref.path / "model.joblib")

    def must_not_unpickle(*args, **kwargs):
        pytest.fail("joblib.load called on an unverified file")

    monkeypatch.setattr(bundle_mod.joblib, "load", must_not_unpickle)
    with pytest.raises(BundleError, match=r"model\.joblib: sha256 mismatch"):
        load_bundle(ref.path)


def test_verify_bundle_never_unpickles(tmp_path: Path, monkeypatch) -> None:
    model, _ = fitted_model()
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

    rewrite_manifest(ref.path, escape)
    with pytest.raises(BundleError, match="invalid file name"):
        load_bundle(ref.path)


# --------------------------------------------------------------------------- environment


def test_pickled_library_mismatch_in_manifest_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    model, _ = fitted_model()
    ref = write_bundle(
        tmp_path, "success", objects={"model": model}, pickled_libraries=("scikit-learn",)
    )
    installed = bundle_mod.importlib_metadata.version("scikit-learn")
    rewrite_manifest(ref.path, lambda m: m["libraries"].update({"scikit-learn": "0.0.1"}))
    monkeypatch.setattr(bundle_mod.joblib, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(BundleError) as info:
        load_bundle(ref.path)
    msg = str(info.value)
    assert f"built with scikit-learn 0.0.1, this process has {installed}" in msg
    assert "retrain or install the matching version" in msg


def test_pickled_library_mismatch_in_process_is_refused(tmp_path: Path, monkeypatch) -> None:
    model, _ = fitted_model()
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
    rewrite_manifest(ref.path, lambda m: m["libraries"].update({"pandas": "0.0.1"}))
    with caplog.at_level(logging.WARNING, logger="models.bundle.format"):
        b = load_bundle(ref.path)
    assert b.arrays["idf"].sum() == 3
    assert "pandas 0.0.1" in caplog.text


def test_python_version_mismatch_refused_for_pickles(tmp_path: Path) -> None:
    model, _ = fitted_model()
    ref = write_bundle(tmp_path, "success", objects={"model": model})
    rewrite_manifest(ref.path, lambda m: m.update({"python": "2.7.18"}))
    with pytest.raises(BundleError, match=r"built with Python 2\.7, this process runs Python"):
        verify_bundle(ref.path)
