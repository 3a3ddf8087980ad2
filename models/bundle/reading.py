"""Reading a bundle: every check first (signature, hashes, no stray files, interpreter and
pickled-library versions), then the files: arrays memory-mapped read-only, objects unpickled from
exactly the bytes that were hashed, documents parsed. Nothing is unpickled before it all checks."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import platform
import threading
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from models.bundle.format import (BUNDLE_FORMAT, KIND_BY_SUFFIX, MANIFEST, SAFE_NAME, Bundle, BundleError, BundleRef,
                                  ref_from_manifest, sha256_file)
from models.bundle.signing import check_signature

log = logging.getLogger(__name__)


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing (not a bundle folder?)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath}: unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{mpath}: unsupported bundle format {fmt!r} (expected {BUNDLE_FORMAT})")
    for key in ("component", "version", "run_id", "files"):
        if key not in manifest:
            raise BundleError(f"{mpath}: field {key!r} missing")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise BundleError(f"{mpath}: field 'files' is malformed")
    return manifest


def _check_files(path: Path, manifest: Mapping[str, Any]) -> None:
    files: Mapping[str, Any] = manifest["files"]
    for filename, entry in files.items():
        fpath = path / filename
        # The manifest could itself be hostile when unsigned: never follow names out of the folder.
        if not SAFE_NAME.match(filename) or Path(filename).suffix not in KIND_BY_SUFFIX:
            raise BundleError(f"{fpath}: invalid file name in manifest")
        if entry.get("kind") != KIND_BY_SUFFIX[Path(filename).suffix]:
            raise BundleError(f"{fpath}: kind {entry.get('kind')!r} does not match its suffix")
        if fpath.is_symlink() or not fpath.is_file():
            raise BundleError(f"{fpath}: listed in manifest but missing or not a regular file")
        if fpath.stat().st_size != entry.get("bytes"):
            raise BundleError(f"{fpath}: size mismatch (bundle corrupted or tampered)")
        if not hmac.compare_digest(sha256_file(fpath), str(entry.get("sha256"))):
            raise BundleError(f"{fpath}: sha256 mismatch (bundle corrupted or tampered)")
    for entry_path in path.iterdir():
        if entry_path.name != MANIFEST and entry_path.name not in files:
            raise BundleError(f"{entry_path}: not listed in manifest (unexpected file in bundle)")


def _check_environment(path: Path, manifest: Mapping[str, Any]) -> None:
    """Pickles need the same interpreter and library versions; other differences only warn."""
    has_pickles = any(e.get("kind") == "object" for e in manifest["files"].values())
    libraries: Mapping[str, str] = manifest.get("libraries", {})
    pickled = set(manifest.get("pickled_libraries", []))
    if has_pickles:
        # Array and JSON files do not depend on the interpreter, so only pickles pin it.
        built = ".".join(str(manifest.get("python", "")).split(".")[:2])
        running = ".".join(platform.python_version().split(".")[:2])
        if built != running:
            raise BundleError(
                f"{path}: bundle was built with Python {built}, this process runs Python "
                f"{running}; retrain or use the matching interpreter"
            )
    for name in sorted(set(libraries) | pickled):
        wanted = libraries.get(name)
        try:
            installed: str | None = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            installed = None
        if installed == wanted:
            continue
        if name in pickled:
            have = f"has {installed}" if installed else "does not have it installed"
            raise BundleError(
                f"{path}: bundle was built with {name} {wanted}, this process {have}; "
                "retrain or install the matching version"
            )
        log.warning(
            "%s: bundle was built with %s %s, this process has %s", path, name, wanted, installed
        )


def _verify(path: Path) -> tuple[dict[str, Any], BundleRef]:
    path = Path(path).resolve()
    manifest = _read_manifest(path)
    check_signature(path, manifest)
    _check_files(path, manifest)
    _check_environment(path, manifest)
    if path.name.isdigit() and int(path.name) != int(manifest["version"]):
        raise BundleError(
            f"{path / MANIFEST}: says version {manifest['version']} but the folder is {path.name}"
        )
    return manifest, ref_from_manifest(path, manifest)


def verify_bundle(path: Path) -> BundleRef:
    """Run every check :func:`load_bundle` runs, without loading (or unpickling) anything."""
    return _verify(path)[1]


def _load_object(fpath: Path, expected_sha256: str) -> Any:
    # Unpickle exactly the bytes that were hashed: re-reading the file after the check would
    # leave a window in which it could be swapped. Objects are small, so memory is no issue.
    data = fpath.read_bytes()
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), expected_sha256):
        raise BundleError(f"{fpath}: sha256 mismatch (file changed during load)")
    return joblib.load(io.BytesIO(data))


# numpy parses each .npy header with ast.literal_eval, and CPython 3.11 can fail that with a
# spurious "AST constructor recursion depth mismatch" SystemError when threads parse at once
# (python/cpython#106905): several servers loading in one process (the tests), or a reload
# beside the registry watch. Array headers are read one at a time; the data stays memory-mapped.
_HEADER_LOCK = threading.Lock()


def _load_array(fpath: Path, mmap: bool) -> np.ndarray:
    with _HEADER_LOCK:
        return np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_bundle(path: Path, *, mmap: bool = True) -> Bundle:
    """Verify and load a bundle folder; arrays are memory-mapped read-only when ``mmap`` is true."""
    path = Path(path).resolve()
    manifest, ref = _verify(path)
    bundle = Bundle(ref=ref, manifest=manifest)
    for filename, entry in manifest["files"].items():
        fpath = path / filename
        name = filename.rsplit(".", 1)[0]
        kind = entry["kind"]
        try:
            if kind == "array":
                bundle.arrays[name] = _load_array(fpath, mmap)
            elif kind == "object":
                bundle.objects[name] = _load_object(fpath, entry["sha256"])
            elif kind == "document":
                bundle.documents[name] = json.loads(fpath.read_text(encoding="utf-8"))
            else:
                raise BundleError(f"{fpath}: unknown kind {kind!r}")
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"{fpath}: cannot load {kind}: {exc}") from exc
    return bundle
