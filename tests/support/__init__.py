"""Helpers shared by the tests, one definition each.

- `waiting`: `wait_until` (poll a condition, fail early if a process died) and `wait_serving`
  (the standard health check says SERVING).
- `grpcurl`: run grpcurl as an operator would, parse its JSON.
- `loopback`: the four component servers and the asyncio gateway in-process, on ports they bind
  themselves.
- `processes`: servers as real processes on ports they bind themselves and report back.
- `configs`: the small training configuration the tests train with.
- `trainer`: what the trainer's tests share (admin token, in-process trainer, the tiny system).
"""
