"""Writing a bundle: a new immutable version ``<root>/<component>/<version>/``, built in a temporary
sibling folder and renamed into place, so that a reader never sees half a bundle."""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp

from models.bundle.format import (BUNDLE_FORMAT, MANIFEST, BundleError, BundleRef, check_name, fsync_file,
                                  json_default, library_versions, ref_from_manifest, sha256_file, utc_now_iso)
from models.bundle.signing import sign, signing_key

_MAX_VERSION_ATTEMPTS = 1000


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


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
        text = json.dumps(value, default=json_default, ensure_ascii=False, indent=1)
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
            check_name(name, kind)
            filename = name + suffix
            if filename == MANIFEST or filename in files:
                raise BundleError(f"{filename}: name clashes with another bundle file")
            path = tmp / filename
            writer(path, name, value)
            fsync_file(path)
            files[filename] = {
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "kind": kind,
            }
    return files


def _write_manifest(tmp: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` (signed if a key is set); return it as a reader will see it."""
    # Round-trip through JSON first so that the hash is computed over exactly what a reader
    # parses (numpy scalars become numbers, int dict keys become strings, ...).
    try:
        manifest = json.loads(json.dumps(manifest, default=json_default))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST}: metadata is not JSON serialisable: {exc}") from exc
    key = signing_key()
    if key is not None:
        manifest["signature"] = sign(manifest, key)
    path = tmp / MANIFEST
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    fsync_file(path)
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
    check_name(component, "component")
    arrays, objects, documents = arrays or {}, objects or {}, documents or {}
    meta = dict(metadata or {})
    run_id = str(meta.pop("run_id", None) or _new_run_id())
    data_version = meta.pop("data_version", None)

    pickled = set(pickled_libraries)
    for obj in objects.values():
        dist = _distribution_of(obj)
        if dist is not None:
            pickled.add(dist)
    libraries = library_versions(tuple(sorted(pickled)))
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
            "created_at": utc_now_iso("seconds"),
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
        return ref_from_manifest(final, manifest)
    raise BundleError(f"{component_dir}: could not find a free version number")
