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

The package's modules: this one (the format's constants, types and hashing), `signing.py` (the
key, signatures), `writing.py` (atomic writes of new versions) and `reading.py` (verification,
then loading).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"

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

KIND_BY_SUFFIX = {".npy": "array", ".joblib": "object", ".json": "document"}
# Names become file names: keep them boring so they cannot escape the folder or hide.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HASH_BLOCK = 1 << 20  # 1 MiB: stream big arrays instead of reading them whole


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


def utc_now_iso(timespec: str = "milliseconds") -> str:
    """Now, UTC, ISO 8601 with a Z: the form of every timestamp in manifests and the registry."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def json_default(value: Any) -> Any:
    # Metrics usually arrive as numpy scalars; store them as plain JSON numbers.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(obj: Any) -> bytes:
    """The byte form that is hashed and signed: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def unsigned(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "signature"}


def content_hash(manifest: Mapping[str, Any]) -> str:
    # The signature is excluded so that the same content has the same identity whether or
    # not (and with whichever key) it was signed.
    return hashlib.sha256(canonical_json(unsigned(manifest))).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise BundleError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.' "
            "and do not start with '.' or '-'"
        )


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in (*RECORDED_LIBRARIES, *extra):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def ref_from_manifest(path: Path, manifest: Mapping[str, Any]) -> BundleRef:
    return BundleRef(
        component=manifest["component"],
        version=int(manifest["version"]),
        path=path.resolve(),
        content_hash=content_hash(manifest),
        run_id=manifest["run_id"],
        data_version=manifest.get("data_version"),
    )


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
