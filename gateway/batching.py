"""Adaptive batching: the calls that concurrent requests make to one component method, coalesced
into batch RPCs (services/common/batch.py).

Most of what a component call costs is the RPC itself -- both sides' gRPC machinery,
interceptors, metrics, thread hand-offs -- not the work. A `Batcher` sends a call at once while
fewer than `max_outstanding` batches of its method are in flight; otherwise the call waits, and
when a batch comes back everything that waited goes out as the next one. Under light load every
call goes alone and waits for nothing (calls issued in the same event-loop turn still share one
batch); under heavy load the batches grow with the queue and the per-RPC cost is shared by up to
`max_batch` requests. It is the dynamic batching of inference servers, without a timer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

# A member with less time than this left is answered DEADLINE_EXCEEDED instead of shortening the
# deadline of the batch it would join.
MIN_MEMBER_MS = 5.0

# (requests, deadline) -> one (answer, None) or (None, reason) per request, in order.
SendBatch = Callable[[list, float], Awaitable[list]]


@dataclass
class _Waiting:
    request: object
    deadline: float          # time.monotonic()
    future: asyncio.Future   # -> (answer, None) | (None, reason)


class Batcher:
    """One component method's calls: `call` awaits its own answer; the batch is invisible."""

    def __init__(self, send: SendBatch, *, max_outstanding: int = 2, max_batch: int = 32):
        if max_outstanding < 1 or max_batch < 1:
            raise ValueError("max_outstanding and max_batch must be >= 1")
        self.send, self.max_outstanding, self.max_batch = send, max_outstanding, max_batch
        self.outstanding = 0
        self._waiting: list[_Waiting] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()

    async def call(self, request, deadline: float):
        """(answer, None) or (None, reason): the same contract as a single call."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, deadline, loop.create_future())
        self._waiting.append(waiting)
        if not self._flush_scheduled:  # after this turn of the loop: its other calls join the batch
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await waiting.future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and self.outstanding < self.max_outstanding:
            batch = [w for w in self._waiting[:self.max_batch] if not w.future.done()]  # done: caller gave up
            del self._waiting[:self.max_batch]
            if batch:
                self.outstanding += 1
                task = asyncio.ensure_future(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            now = time.monotonic()
            live = []
            for w in batch:
                if (w.deadline - now) * 1000.0 < MIN_MEMBER_MS:
                    _answer(w, (None, "DEADLINE_EXCEEDED"))
                else:
                    live.append(w)
            if live:
                results = await self.send([w.request for w in live], min(w.deadline for w in live))
                for w, result in zip(live, results):
                    _answer(w, result)
        finally:
            for w in batch:  # a send that raised (or was cancelled) leaves no caller hanging
                _answer(w, (None, "CANCELLED"))
            self.outstanding -= 1
            self._flush()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _answer(w: _Waiting, result) -> None:
    if not w.future.done():
        w.future.set_result(result)
