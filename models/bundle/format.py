"""Verified, versioned model bundles.

A bundle is an immutable folder ``<root>/<component>/<version>/`` holding

* ``<name>.npy``     large arrays, saved without pickle and loaded memory-mapped, so replicas
                     share pages and a load is near-instant;
* ``<name>.joblib``  small fitted estimators (pickles: they run code when loaded);
* ``<name>.json``    plain documents (vocabularies, id lists, configs);
* ``manifest.json``  the sha256 of every file, library versions, run id, data version and
                     free-form metadata (metrics, feature schema, params ...), HMAC-SHA256
                     signed with the bundle signing key.

The signing key is ``PMIS_BUNDLE_SIGNING_KEY``, or the contents of the file named by
``PMIS_BUNDLE_SIGNING_KEY_FILE`` (a mounted Secret; `pmis` creates ``$PMIS_HOME/signing-key`` the
first time). Loaders refuse a bundle that is not signed with it, and refuse everything when no key
is configured, unless ``PMIS_ALLOW_UNSIGNED_BUNDLES=1`` (development only): a manifest whose
hashes were rewritten to match a changed payload must never load.

Writers build the bundle in a temporary sibling folder and rename it into place, so a reader
never sees half a bundle. Readers verify the manifest (signature, hashes, no stray files,
interpreter and pickled-library versions) *before* anything is unpickled.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import re
import secrets
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "ALLOW_UNSIGNED_ENV",
    "SIGNING_KEY_ENV",
    "SIGNING_KEY_FILE_ENV",
    "Bundle",
    "BundleError",
    "BundleRef",
    "arrays_to_csr",
    "bundle_versions",
    "csr_to_arrays",
    "ensure_signing_key",
    "load_bundle",
    "verify_bundle",
    "write_bundle",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
SIGNING_KEY_ENV = "PMIS_BUNDLE_SIGNING_KEY"
SIGNING_KEY_FILE_ENV = "PMIS_BUNDLE_SIGNING_KEY_FILE"
ALLOW_UNSIGNED_ENV = "PMIS_ALLOW_UNSIGNED_BUNDLES"

# Libraries whose versions are recorded in every manifest (distribution names).
RECORDED_LIBRARIES: tuple[str, ...] = (
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "joblib",
    "lightgbm",
    "implicit",
)

_KIND_BY_SUFFIX = {".npy": "array", ".joblib": "object", ".json": "document"}
# Names become file names: keep them boring so they cannot escape the folder or hide.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HASH_BLOCK = 1 << 20  # 1 MiB: stream big arrays instead of reading them whole
_MAX_VERSION_ATTEMPTS = 1000


class BundleError(Exception):
    """A bundle cannot be written, verified or loaded; the message names the file and reason."""


@dataclass(frozen=True)
class BundleRef:
    """Identifies one bundle on disk. ``content_hash`` is the bundle's identity."""

    component: str
    version: int
    path: Path
    content_hash: str
    run_id: str
    data_version: str | None


@dataclass
class Bundle:
    """A verified, loaded bundle."""

    ref: BundleRef
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.metadata.get("metrics", {})


# --------------------------------------------------------------------------- helpers


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def _json_default(value: Any) -> Any:
    # Metrics usually arrive as numpy scalars; store them as plain JSON numbers.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical_json(obj: Any) -> bytes:
    """The byte form that is hashed and signed: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _unsigned(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "signature"}


def _content_hash(manifest: Mapping[str, Any]) -> str:
    # The signature is excluded so that the same content has the same identity whether or
    # not (and with whichever key) it was signed.
    return hashlib.sha256(_canonical_json(_unsigned(manifest))).hexdigest()


def _signing_key() -> bytes | None:
    # Read on every call (not cached) so a rotated key or a test's monkeypatch takes effect.
    key = os.environ.get(SIGNING_KEY_ENV, "")
    if not key and os.environ.get(SIGNING_KEY_FILE_ENV):
        try:
            key = Path(os.environ[SIGNING_KEY_FILE_ENV]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BundleError(f"{SIGNING_KEY_FILE_ENV}: cannot read the signing key: {exc}") from exc
    return key.encode("utf-8") if key else None


def _unsigned_allowed() -> bool:
    return os.environ.get(ALLOW_UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes")


def ensure_signing_key(path: Path) -> Path:
    """Create a random signing key at `path` (readable by its owner only) unless one exists;
    point this process (and the processes it starts) at it unless a key is configured already."""
    path = Path(path)
    if not path.exists():
        _create_key_file(path)
    if not os.environ.get(SIGNING_KEY_ENV) and not os.environ.get(SIGNING_KEY_FILE_ENV):
        os.environ[SIGNING_KEY_FILE_ENV] = str(path.resolve())
    return path


def _create_key_file(path: Path) -> None:
    """Write the key whole, then link it into place: two commands starting at once both end up
    with the one key that won, and nobody reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: theirs is the key
    finally:
        tmp.unlink()


def _sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical_json(_unsigned(manifest)), hashlib.sha256).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not supported everywhere (e.g. Windows), which is fine.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise BundleError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.' "
            "and do not start with '.' or '-'"
        )


def _library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in (*RECORDED_LIBRARIES, *extra):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    # Scans every installed distribution, so do it once per process.
    return importlib_metadata.packages_distributions()


def _distribution_of(obj: Any) -> str | None:
    """Best-effort: the installed distribution that defines ``type(obj)`` (e.g. scikit-learn).

    Used so that a caller who forgets ``pickled_libraries`` still gets the exact-version check
    for the estimator's own library. Nested objects (a LightGBM model inside a sklearn
    pipeline) must still be declared explicitly.
    """
    top = type(obj).__module__.split(".")[0]
    if top in {"builtins", "__main__"}:
        return None
    dists = _packages_distributions().get(top, [])
    return dists[0] if dists else None


# --------------------------------------------------------------------------- CSR helpers


def csr_to_arrays(prefix: str, m: sp.csr_matrix | sp.csr_array) -> dict[str, np.ndarray]:
    """Split a CSR matrix into plain arrays for ``write_bundle(arrays=...)``.

    Indices are stored in the dtype scipy itself would pick (int32 when it fits), so that
    :func:`arrays_to_csr` can wrap the memory-mapped arrays without scipy copying them.
    The matrix is stored in canonical form (sorted, no duplicates) so nothing needs to write
    into the read-only arrays after loading.
    """
    if not sp.issparse(m) or m.format != "csr":
        raise BundleError(f"{prefix}: expected a scipy CSR matrix, got {type(m).__name__}")
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()  # also sorts indices
    int32_max = np.iinfo(np.int32).max
    fits_int32 = max(m.shape) <= int32_max and m.nnz <= int32_max
    idx_dtype = np.int32 if fits_int32 else np.int64
    return {
        f"{prefix}_data": np.asarray(m.data),
        f"{prefix}_indices": np.asarray(m.indices, dtype=idx_dtype),
        f"{prefix}_indptr": np.asarray(m.indptr, dtype=idx_dtype),
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def arrays_to_csr(prefix: str, arrays: Mapping[str, np.ndarray]) -> sp.csr_matrix:
    """Rebuild the matrix saved by :func:`csr_to_arrays`, sharing (not copying) the arrays."""
    try:
        data = arrays[f"{prefix}_data"]
        indices = arrays[f"{prefix}_indices"]
        indptr = arrays[f"{prefix}_indptr"]
        shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    except KeyError as exc:
        raise BundleError(f"{prefix}: CSR array {exc.args[0]!r} missing from bundle") from None
    m = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    if not np.shares_memory(m.indices, indices):  # pragma: no cover - scipy policy change
        log.warning("%s: scipy copied the CSR index arrays instead of sharing them", prefix)
    m.has_canonical_format = True  # written canonical; avoids a scan of the arrays
    return m


# --------------------------------------------------------------------------- writing


def bundle_versions(root: Path, component: str) -> list[int]:
    """Versions of ``component`` present under ``root`` (ascending). Temp folders are ignored."""
    folder = Path(root) / component
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit()
    )


def _write_array(path: Path, name: str, value: Any) -> None:
    if sp.issparse(value):
        raise BundleError(
            f"{path.name}: sparse matrices are not stored directly; "
            f"pass csr_to_arrays({name!r}, m) instead"
        )
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise BundleError(
            f"{path.name}: array {name!r} has object dtype, which needs pickle; "
            "store it as a document or an object instead"
        )
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _write_object(path: Path, name: str, value: Any) -> None:
    try:
        joblib.dump(value, path)
    except Exception as exc:  # pickling errors come in many types
        raise BundleError(f"{path.name}: cannot pickle object {name!r}: {exc}") from exc


def _write_document(path: Path, name: str, value: Any) -> None:
    try:
        text = json.dumps(value, default=_json_default, ensure_ascii=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path.name}: document {name!r} is not JSON: {exc}") from exc
    path.write_text(text, encoding="utf-8")


def _write_payload(
    tmp: Path,
    arrays: Mapping[str, Any],
    objects: Mapping[str, Any],
    documents: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Write the data files into ``tmp``; return the manifest's ``files`` section."""
    writers = (
        (arrays, ".npy", "array", _write_array),
        (objects, ".joblib", "object", _write_object),
        (documents, ".json", "document", _write_document),
    )
    files: dict[str, dict[str, Any]] = {}
    for items, suffix, kind, writer in writers:
        for name, value in items.items():
            _check_name(name, kind)
            filename = name + suffix
            if filename == MANIFEST or filename in files:
                raise BundleError(f"{filename}: name clashes with another bundle file")
            path = tmp / filename
            writer(path, name, value)
            _fsync_file(path)
            files[filename] = {
                "sha256": _sha256_file(path),
                "bytes": path.stat().st_size,
                "kind": kind,
            }
    return files


def _write_manifest(tmp: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (signed if a key is set); return it as a reader will see it."""
    # Round-trip through JSON first so that the hash is computed over exactly what a reader
    # parses (numpy scalars become numbers, int dict keys become strings, ...).
    try:
        manifest = json.loads(json.dumps(manifest, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST}: metadata is not JSON serialisable: {exc}") from exc
    key = _signing_key()
    if key is not None:
        manifest["signature"] = _sign(manifest, key)
    path = tmp / MANIFEST
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    _fsync_file(path)
    return manifest


def write_bundle(
    root: Path,
    component: str,
    *,
    arrays: Mapping[str, np.ndarray] | None = None,
    objects: Mapping[str, object] | None = None,
    documents: Mapping[str, object] | None = None,
    metadata: Mapping[str, Any] | None = None,
    pickled_libraries: tuple[str, ...] = (),
) -> BundleRef:
    """Write a new immutable bundle ``root/component/<next version>/`` atomically.

    ``metadata`` may carry ``run_id`` and ``data_version`` (recorded at the top level of the
    manifest); everything else (metrics, feature_schema, params ...) goes under
    ``manifest["metadata"]``. ``pickled_libraries`` names the distributions whose classes are
    inside the joblib files: loading requires exactly the same versions. The distribution of
    each object's own class is added automatically.
    """
    _check_name(component, "component")
    arrays, objects, documents = arrays or {}, objects or {}, documents or {}
    meta = dict(metadata or {})
    run_id = str(meta.pop("run_id", None) or _new_run_id())
    data_version = meta.pop("data_version", None)

    pickled = set(pickled_libraries)
    for obj in objects.values():
        dist = _distribution_of(obj)
        if dist is not None:
            pickled.add(dist)
    libraries = _library_versions(tuple(sorted(pickled)))
    missing = sorted(pickled - libraries.keys())
    if missing:
        raise BundleError(f"pickled_libraries {missing} are not installed in this process")

    component_dir = Path(root) / component
    component_dir.mkdir(parents=True, exist_ok=True)
    tmp = component_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        files = _write_payload(tmp, arrays, objects, documents)
        base_manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "component": component,
            "created_at": _utc_now_iso(),
            "run_id": run_id,
            "data_version": None if data_version is None else str(data_version),
            "python": platform.python_version(),
            "libraries": libraries,
            "pickled_libraries": sorted(pickled),
            "files": files,
            "metadata": meta,
        }
        return _publish(tmp, component_dir, base_manifest)
    finally:
        # Success renamed tmp away; any failure leaves it here, so this cleans up.
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, component_dir: Path, base_manifest: dict[str, Any]) -> BundleRef:
    """Rename ``tmp`` to the next free version, retrying if a concurrent writer won the race.

    The version number is part of the manifest (and so of the hash and signature), so the
    manifest is rewritten for each attempt; the data files are not touched.
    """
    version = max(bundle_versions(component_dir.parent, component_dir.name), default=0) + 1
    for _ in range(_MAX_VERSION_ATTEMPTS):
        manifest = _write_manifest(tmp, {**base_manifest, "version": version})
        final = component_dir / str(version)
        try:
            # Atomic; fails if ``final`` exists and is non-empty (every bundle has a manifest).
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(
                exc, FileExistsError
            ):
                raise
            taken = bundle_versions(component_dir.parent, component_dir.name)
            version = max([version, *taken]) + 1
            continue
        _fsync_dir(component_dir)
        return _ref_from_manifest(final, manifest)
    raise BundleError(f"{component_dir}: could not find a free version number")


def _ref_from_manifest(path: Path, manifest: Mapping[str, Any]) -> BundleRef:
    return BundleRef(
        component=manifest["component"],
        version=int(manifest["version"]),
        path=path.resolve(),
        content_hash=_content_hash(manifest),
        run_id=manifest["run_id"],
        data_version=manifest.get("data_version"),
    )


# --------------------------------------------------------------------------- verification


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


def _check_signature(path: Path, manifest: Mapping[str, Any]) -> None:
    mpath = path / MANIFEST
    key = _signing_key()
    if key is None:
        if _unsigned_allowed():
            return  # development only: hashes still protect against rot, not against tampering
        raise BundleError(
            f"{mpath}: no bundle signing key configured ({SIGNING_KEY_ENV} or {SIGNING_KEY_FILE_ENV}; "
            f"`pmis` creates $PMIS_HOME/signing-key); refusing to load. Set {ALLOW_UNSIGNED_ENV}=1 to "
            "accept unsigned bundles (development only)"
        )
    signature = manifest.get("signature")
    if not isinstance(signature, str) or not signature:
        if _unsigned_allowed():
            return
        raise BundleError(
            f"{mpath}: not signed; refusing it (a signing key is configured). Retrain to sign it, or set "
            f"{ALLOW_UNSIGNED_ENV}=1 to accept unsigned bundles (development only)"
        )
    if not hmac.compare_digest(signature, _sign(manifest, key)):
        raise BundleError(
            f"{mpath}: signature mismatch (manifest tampered or signed with another key)"
        )


def _check_files(path: Path, manifest: Mapping[str, Any]) -> None:
    files: Mapping[str, Any] = manifest["files"]
    for filename, entry in files.items():
        fpath = path / filename
        # The manifest could itself be hostile when unsigned: never follow names out of the folder.
        if not _SAFE_NAME.match(filename) or Path(filename).suffix not in _KIND_BY_SUFFIX:
            raise BundleError(f"{fpath}: invalid file name in manifest")
        if entry.get("kind") != _KIND_BY_SUFFIX[Path(filename).suffix]:
            raise BundleError(f"{fpath}: kind {entry.get('kind')!r} does not match its suffix")
        if fpath.is_symlink() or not fpath.is_file():
            raise BundleError(f"{fpath}: listed in manifest but missing or not a regular file")
        if fpath.stat().st_size != entry.get("bytes"):
            raise BundleError(f"{fpath}: size mismatch (bundle corrupted or tampered)")
        if not hmac.compare_digest(_sha256_file(fpath), str(entry.get("sha256"))):
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
    _check_signature(path, manifest)
    _check_files(path, manifest)
    _check_environment(path, manifest)
    if path.name.isdigit() and int(path.name) != int(manifest["version"]):
        raise BundleError(
            f"{path / MANIFEST}: says version {manifest['version']} but the folder is {path.name}"
        )
    return manifest, _ref_from_manifest(path, manifest)


def verify_bundle(path: Path) -> BundleRef:
    """Run every check :func:`load_bundle` runs, without loading (or unpickling) anything."""
    return _verify(path)[1]


# --------------------------------------------------------------------------- loading


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
