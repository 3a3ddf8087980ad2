"""Batch RPCs: several calls of one method in one RPC, answered one by one.

The gateway coalesces the calls that concurrent requests make to a component (gateway/batching.py)
so that the fixed cost of an RPC -- both sides' gRPC machinery, interceptors, metrics -- is paid
once per batch. Each request of a batch is answered exactly as it would be alone; one that fails
gets an empty answer at its index and a `CallFailure` with the status it would have had, and the
others are unaffected.
"""

from __future__ import annotations

from typing import Callable

from pmis.v1 import common_pb2
from services.common.errors import RpcError, invalid_argument

MAX_BATCH = 64  # requests per batch RPC (the proto's documented bound)


def answer_each(handler: Callable, batch, context, response):
    """Fill `response` (answers, failures) with `handler(request, context)` for each request of
    `batch.requests`, in order."""
    requests = batch.requests
    if not 1 <= len(requests) <= MAX_BATCH:
        raise invalid_argument([("requests", f"must hold 1..{MAX_BATCH} requests, got {len(requests)}")])
    for index, request in enumerate(requests):
        try:
            answer = handler(request, context)
        except RpcError as e:
            response.answers.add()
            response.failures.add(index=index, code=e.code.value[0], message=e.message)
        else:
            response.answers.append(answer)
    return response


class RetrieveScoreBatches:
    """RetrieveBatch and ScoreBatch of a servicer with Retrieve and Score (content, collaborative).
    List it before the generated base class, which answers every RPC UNIMPLEMENTED."""

    def RetrieveBatch(self, request, context):
        return answer_each(self.Retrieve, request, context, common_pb2.ScoredItemsBatch())

    def ScoreBatch(self, request, context):
        return answer_each(self.Score, request, context, common_pb2.ScoredItemsBatch())
