"""The bundle signing key and HMAC-SHA256 signatures of manifests.

The key is ``PMIS_BUNDLE_SIGNING_KEY``, or the contents of the file named by
``PMIS_BUNDLE_SIGNING_KEY_FILE`` (a mounted Secret; `pmis` creates ``$PMIS_HOME/signing-key`` the
first time). Readers refuse a bundle that is not signed with it, and refuse everything when no
key is configured, unless ``PMIS_ALLOW_UNSIGNED_BUNDLES=1`` (development only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.bundle.format import MANIFEST, BundleError, canonical_json, unsigned

SIGNING_KEY_ENV = "PMIS_BUNDLE_SIGNING_KEY"
SIGNING_KEY_FILE_ENV = "PMIS_BUNDLE_SIGNING_KEY_FILE"
ALLOW_UNSIGNED_ENV = "PMIS_ALLOW_UNSIGNED_BUNDLES"


def signing_key() -> bytes | None:
    # Read on every call (not cached) so a rotated key or a test's monkeypatch takes effect.
    key = os.environ.get(SIGNING_KEY_ENV, "")
    if not key and os.environ.get(SIGNING_KEY_FILE_ENV):
        try:
            key = Path(os.environ[SIGNING_KEY_FILE_ENV]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BundleError(f"{SIGNING_KEY_FILE_ENV}: cannot read the signing key: {exc}") from exc
    return key.encode("utf-8") if key else None


def unsigned_allowed() -> bool:
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


def sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(unsigned(manifest)), hashlib.sha256).hexdigest()


def check_signature(path: Path, manifest: Mapping[str, Any]) -> None:
    mpath = path / MANIFEST
    key = signing_key()
    if key is None:
        if unsigned_allowed():
            return  # development only: hashes still protect against rot, not against tampering
        raise BundleError(
            f"{mpath}: no bundle signing key configured ({SIGNING_KEY_ENV} or {SIGNING_KEY_FILE_ENV}; "
            f"`pmis` creates $PMIS_HOME/signing-key); refusing to load. Set {ALLOW_UNSIGNED_ENV}=1 to "
            "accept unsigned bundles (development only)"
        )
    signature = manifest.get("signature")
    if not isinstance(signature, str) or not signature:
        if unsigned_allowed():
            return
        raise BundleError(
            f"{mpath}: not signed; refusing it (a signing key is configured). Retrain to sign it, or set "
            f"{ALLOW_UNSIGNED_ENV}=1 to accept unsigned bundles (development only)"
        )
    if not hmac.compare_digest(signature, sign(manifest, key)):
        raise BundleError(
            f"{mpath}: signature mismatch (manifest tampered or signed with another key)"
        )
