"""gRPC status helpers: meaningful codes with google.rpc details, for sync and asyncio servers."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class RpcError(Exception):
    """Raised by request handling; the server plumbing turns it into a status for the client."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.code, self.message, self.violations = code, message, violations or []

    def to_status(self) -> grpc.Status:
        details = []
        if self.violations:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in self.violations])
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        return rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message, details=details))


# A status travels in the trailers, which clients cap (16 KiB in gRPC's core): a request with a
# thousand bad fields must still get its INVALID_ARGUMENT, so the details are bounded.
MAX_VIOLATIONS = 20
MAX_DESCRIPTION = 120
MAX_MESSAGE = 1000


def invalid_argument(violations: list[tuple[str, str]]) -> RpcError:
    shown = [(f[:MAX_DESCRIPTION], d[:MAX_DESCRIPTION]) for f, d in violations[:MAX_VIOLATIONS]]
    more = len(violations) - len(shown)
    summary = "; ".join(f"{f}: {d}" for f, d in shown)
    if len(summary) > MAX_MESSAGE:
        summary = summary[:MAX_MESSAGE] + "..."
    summary += f"; and {more} more" if more else ""
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {summary}", shown)


def not_found(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAVAILABLE, message)


def failed_precondition(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, message)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """Client side: the BadRequest field violations carried by a failed call."""
    status = rpc_status.from_call(error)
    out = []
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out

