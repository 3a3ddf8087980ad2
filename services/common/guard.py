"""One interceptor per server kind between the network and every method: what a client sent that
cannot be used becomes INVALID_ARGUMENT, `RpcError`s become their status, a bug of ours becomes
INTERNAL without its text, and every call -- unary or streaming, OK or not -- is counted and
timed by method and status code.

- A request that cannot be decoded is answered INVALID_ARGUMENT ("request is not a valid
  pmis.v1.X message") and logged as one WARNING line without traceback, at most once a second
  per method (the others are counted in the next line). grpcio would answer INTERNAL (sync) or
  UNKNOWN with the exception's text (asyncio) and log a traceback per call: a cheap way for
  anyone to fill a disk. Here the deserializer never raises: it returns `Undecodable`, and the
  method's handler is never called with it.
- Servicers raise `RpcError` (services/common/errors.py) and never catch-and-abort themselves.
- A request over MAX_REQUEST_BYTES is RESOURCE_EXHAUSTED, counted like any other call. gRPC's
  core is told to pass up to CORE_RECEIVE_LIMIT (`server_options()`), so that only requests
  beyond that -- refused by the core before any Python code runs -- go uncounted.
- With `allowed_callers` (services/common/tls.py), a call whose client certificate names none of
  them is PERMISSION_DENIED before the method runs; health and reflection stay open.

`ServerGuard` is for the sync `grpc.server` of the components and the trainer; list it after
admission control (which must be first, see admission.py). The gateway's front is a sync server too
(gateway/front.py), so there is one guard.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from services.common import telemetry
from services.common.admission import is_exempt
from services.common.errors import RpcError
from services.common.tls import caller_identities

log = logging.getLogger("pmis.guard")


MAX_REQUEST_BYTES = 4 * 1024 * 1024       # gRPC's own default limit, enforced here where it is counted
CORE_RECEIVE_LIMIT = 4 * MAX_REQUEST_BYTES  # what the core lets through to the guard


def server_options() -> list[tuple[str, int]]:
    """gRPC server options of every server: the core passes requests up to CORE_RECEIVE_LIMIT."""
    return [("grpc.max_receive_message_length", CORE_RECEIVE_LIMIT)]


class Undecodable:
    """What the safe deserializer returns for bytes that are not the method's request message."""
    __slots__ = ()


class TooLarge:
    """What the safe deserializer returns for a request over MAX_REQUEST_BYTES."""
    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size


UNDECODABLE = Undecodable()
_END = object()  # the end of a streamed answer, as `next(answers, _END)` returns it


class _RateLimitedWarning:
    """One WARNING line per method per `interval` seconds; the suppressed ones are counted in it."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.lock, self.last, self.suppressed = interval, threading.Lock(), {}, {}

    def __call__(self, component: str, method: str, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(method, -self.interval) < self.interval:
                self.suppressed[method] = self.suppressed.get(method, 0) + 1
                return
            self.last[method], more = now, self.suppressed.pop(method, 0)
        log.warning(message, extra={"fields": {"component": component, "method": method,
                                                "suppressed_since_last": more}})


warn_undecodable = _RateLimitedWarning()


def _request_type(deserializer) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is bound to the class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request"


def _safe(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes):
        if len(raw) > MAX_REQUEST_BYTES:
            return TooLarge(len(raw))
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 - any failure to parse is the client's
            return UNDECODABLE
    return deserialize


def _unusable(request) -> bool:
    return request is UNDECODABLE or isinstance(request, TooLarge)


def _too_large(request: TooLarge) -> str:
    return f"request of {request.size} bytes is over the {MAX_REQUEST_BYTES}-byte limit"


def _code_name(context) -> str:
    code = context.code()
    return "OK" if code is None else getattr(code, "name", str(code))


def _kind(handler) -> str:
    if handler.unary_unary:
        return "unary_unary"
    if handler.unary_stream:
        return "unary_stream"
    return "stream_unary" if handler.stream_unary else "stream_stream"


_FACTORIES = {"unary_unary": grpc.unary_unary_rpc_method_handler,
              "unary_stream": grpc.unary_stream_rpc_method_handler,
              "stream_unary": grpc.stream_unary_rpc_method_handler,
              "stream_stream": grpc.stream_stream_rpc_method_handler}


def _rewrap(handler, kind: str, behavior):
    return _FACTORIES[kind](behavior, request_deserializer=_safe(handler.request_deserializer),
                            response_serializer=handler.response_serializer)


def _refusal_of_caller(allowed: frozenset, method: str, context) -> str | None:
    """Why this caller may not call `method`, or None."""
    if not allowed or is_exempt(method):
        return None
    names = caller_identities(context)
    if names & allowed:
        return None
    who = ", ".join(sorted(names)) if names else "a client without a certificate"
    return f"{who} may not call {method}"


class ServerGuard(grpc.ServerInterceptor):
    """Sync servers: safe decoding, errors to status codes, caller identities, every method counted."""

    def __init__(self, component: str, allowed_callers: frozenset = frozenset()):
        self.component, self.allowed_callers = component, frozenset(allowed_callers)
        self._guarded: dict[str, tuple] = {}  # method -> (the handler, its guarded form)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        # A method's guarded handler holds no per-call state: wrap each handler once, not per call.
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is None or known[0] is not handler:
            known = self._guarded[method] = (handler, self._wrap(handler, method))
        return known[1]

    def _wrap(self, handler, method: str):
        kind = _kind(handler)
        guarded = _Guarded(self.component, method, self.allowed_callers, _request_type(handler.request_deserializer))
        inner = getattr(handler, kind)
        if kind == "unary_stream" and getattr(inner, "experimental_non_blocking", False):
            return _rewrap(handler, kind, guarded.non_blocking(inner))
        if kind == "unary_unary":
            return _rewrap(handler, kind, guarded.observed(guarded.unary(inner)))
        if kind == "stream_unary":
            return _rewrap(handler, kind, guarded.observed(guarded.stream_in(inner)))
        return _rewrap(handler, kind, guarded.streaming(inner, kind))


class _Guarded:
    """One method's guard: its checks, its error mapping and its count, around the behaviour of
    each RPC kind."""

    def __init__(self, component: str, method: str, allowed_callers: frozenset, request_type: str):
        self.component, self.method, self.allowed_callers = component, method, allowed_callers
        self.name = method.rsplit("/", 1)[-1]
        self.bad = f"request is not a valid {request_type} message"

    def refuse_unusable(self, request, context) -> None:
        if isinstance(request, TooLarge):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _too_large(request))
        warn_undecodable(self.component, self.method, "undecodable request")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.bad)

    def check_caller(self, context) -> None:
        if (refusal := _refusal_of_caller(self.allowed_callers, self.method, context)) is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    def requests(self, iterator, context):
        for request in iterator:
            if _unusable(request):
                self.refuse_unusable(request, context)
            yield request

    def run(self, call: Callable, context):
        """`call()`, its errors mapped to status codes: an RpcError to its own, anything else
        (not already aborted) to INTERNAL, logged."""
        try:
            return call()
        except RpcError as e:
            context.abort_with_status(e.to_status())
        except Exception:
            if context.code() not in (None, grpc.StatusCode.OK):
                raise  # context.abort(): the status is already set
            log.exception("unhandled error", extra={"fields": {"component": self.component, "method": self.name}})
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def observe(self, context, start: float) -> None:
        telemetry.observe(self.component, self.name, _code_name(context), time.perf_counter() - start)

    def observed(self, body):
        def behavior(request_or_iterator, context):
            start = time.perf_counter()
            try:
                return body(request_or_iterator, context)
            finally:
                self.observe(context, start)
        return behavior

    def unary(self, inner):
        def body(request, context):
            self.check_caller(context)
            if _unusable(request):
                self.refuse_unusable(request, context)
            return self.run(lambda: inner(request, context), context)
        return body

    def stream_in(self, inner):
        def body(iterator, context):
            self.check_caller(context)
            return self.run(lambda: inner(self.requests(iterator, context), context), context)
        return body

    def streaming(self, inner, kind: str):
        """Streaming answers: the body is a generator; the call is counted when it ends."""
        def body(request_or_iterator, context):
            self.check_caller(context)
            if kind == "unary_stream" and _unusable(request_or_iterator):
                self.refuse_unusable(request_or_iterator, context)
            source = (self.requests(request_or_iterator, context) if kind == "stream_stream"
                      else request_or_iterator)
            answers = self.run(lambda: inner(source, context), context)
            while True:
                item = self.run(lambda: next(answers, _END), context)
                if item is _END:
                    return
                yield item

        def behavior(request_or_iterator, context):
            start = time.perf_counter()
            try:
                yield from body(request_or_iterator, context)
            finally:
                self.observe(context, start)
        return behavior

    def non_blocking(self, inner):
        """A stream that answers through grpcio's `send_response_callback` (health Watch) keeps
        that form: it returns at once and holds no worker thread while it is open. Wrapped as a
        generator, every open Watch -- one per gateway replica's channel -- would hold one of the
        server's workers for its whole life, and as many watchers as workers stop every call."""
        def behavior(request, context, send_response_callback=None):
            start = time.perf_counter()
            context.add_callback(lambda: self.observe(context, start))
            self.check_caller(context)
            if _unusable(request):
                self.refuse_unusable(request, context)
            self.run(lambda: inner(request, context, send_response_callback=send_response_callback), context)

        behavior.experimental_non_blocking = True
        behavior.experimental_thread_pool = getattr(inner, "experimental_thread_pool", None)
        return behavior
