"""Admin authentication for the mutating RPCs of every server.

Mutating admin RPCs (each component's `Reload`; the trainer's `StartTraining`, `CancelJob`,
`Activate`, `Rollback`, and `CheckTriggers` when it may start a job) require the call metadata

    authorization: Bearer <token>

where <token> equals the server's secret: `PMIS_ADMIN_TOKEN`, or the contents of the file named
by `PMIS_ADMIN_TOKEN_FILE` (a mounted Kubernetes Secret; re-read on every admin call, so a rotated
secret takes effect without a restart). The comparison is constant-time (hmac.compare_digest
over SHA-256 digests, so the token's length does not leak either).

- no header, or not `Bearer <token>`   -> UNAUTHENTICATED
- a token that does not match          -> PERMISSION_DENIED
- the server has no secret configured  -> PERMISSION_DENIED, saying admin RPCs are disabled.
  There is no "open in dev" mode: loopback is not a trust boundary (a sidecar proxy makes every
  caller look local). `pmis up` and the test clusters generate a token for their servers.

Read-only RPCs never look at the header. Tokens are never logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
from pathlib import Path

import grpc

from services.common.errors import RpcError

log = logging.getLogger("pmis.auth")

TOKEN_ENV = "PMIS_ADMIN_TOKEN"
TOKEN_FILE_ENV = "PMIS_ADMIN_TOKEN_FILE"
HEADER = "authorization"


def configured_token() -> bytes | None:
    """The admin secret, read now (environment first, then the file); None if not configured."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token and os.environ.get(TOKEN_FILE_ENV):
        try:
            token = Path(os.environ[TOKEN_FILE_ENV]).read_text(encoding="utf-8").strip()
        except OSError as e:
            log.error("admin token file unreadable: %s", e.strerror)
            token = ""
    return token.encode("utf-8") if token else None


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Client side: the call metadata that authenticates an admin call."""
    return ((HEADER, f"Bearer {token}"),)


def check_admin(context, method: str = "") -> None:
    """Raise RpcError unless the call carries the configured admin token."""
    expected = configured_token()
    peer = _peer(context)
    if expected is None:
        log.warning("admin call refused: no admin token configured", extra={"fields": {"method": method, "peer": peer}})
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                       f"{method or 'this RPC'} is an admin RPC and admin RPCs are disabled on this server: "
                       f"it has no admin token configured (set {TOKEN_ENV} or {TOKEN_FILE_ENV})")
    values = [v for k, v in (context.invocation_metadata() or ()) if k.lower() == HEADER]
    if not values:
        log.warning("admin call refused: no credentials", extra={"fields": {"method": method, "peer": peer}})
        raise RpcError(grpc.StatusCode.UNAUTHENTICATED,
                       f"{method or 'this RPC'} is an admin RPC: send the metadata 'authorization: Bearer <token>'")
    value = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        log.warning("admin call refused: malformed credentials", extra={"fields": {"method": method, "peer": peer}})
        raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata: expected 'Bearer <token>'")
    if not hmac.compare_digest(hashlib.sha256(token.encode("utf-8")).digest(), hashlib.sha256(expected).digest()):
        log.warning("admin call refused: wrong token", extra={"fields": {"method": method, "peer": peer}})
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "admin token rejected")
    log.info("admin call", extra={"fields": {"method": method, "peer": peer}})


def admin_only(method):
    """Decorate a servicer method (inside `@rpc`, which turns the RpcError into the status)."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        check_admin(context, method.__name__)
        return method(self, request, context)
    return wrapper


def _peer(context) -> str:
    try:
        return context.peer()
    except Exception:  # noqa: BLE001 - grpc_testing contexts do not implement peer()
        return ""
