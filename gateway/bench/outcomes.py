"""What one bench call came to, and the summaries of a phase's calls (pure functions of the outcomes)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np


@dataclass
class Outcome:
    code: str                 # grpc status code name, "OK" for an answer
    latency: float            # seconds
    degraded: bool = False    # OK, but the answer names skipped components


Send = Callable[[object], Awaitable[tuple[str, bool]]]  # request -> (code name, degraded)


def percentiles_ms(latencies: list[float], qs=(50, 95, 99)) -> dict:
    """{"p50_ms": ...} for latencies in seconds; NaN when there are none."""
    arr = np.asarray(latencies, dtype=float) * 1000
    return {f"p{q}_ms": float(np.percentile(arr, q)) if arr.size else float("nan") for q in qs}


def count_codes(outcomes: list[Outcome]) -> Counter:
    return Counter(o.code for o in outcomes)


def summarize_closed(outcomes: list[Outcome], elapsed: float) -> dict:
    ok = [o for o in outcomes if o.code == "OK"]
    codes = count_codes(outcomes)
    return {"requests": len(ok), "errors": len(outcomes) - len(ok), "degraded": sum(o.degraded for o in ok),
            "rps": len(ok) / elapsed if elapsed > 0 else float("nan"), "elapsed_s": elapsed,
            **percentiles_ms([o.latency for o in ok]),
            "codes": {k: v for k, v in sorted(codes.items()) if k != "OK"}}


def summarize_open(outcomes: list[Outcome], rate: float, send_span: float, lags: list[float]) -> dict:
    """`send_span`: seconds from the first scheduled send to just after the last actual one."""
    sent = len(outcomes)
    ok = [o for o in outcomes if o.code == "OK"]
    refused = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    codes = count_codes(outcomes)
    achieved = sent / send_span if send_span > 0 else float("nan")
    other = {k: v for k, v in sorted(codes.items()) if k not in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")}
    lag = percentiles_ms(lags, (50, 99)) if lags else {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"rate": rate, "sent": sent, "ok": sum(not o.degraded for o in ok), "ok_degraded": sum(o.degraded for o in ok),
            "resource_exhausted": len(refused),
            "resource_exhausted_p99_ms": percentiles_ms([o.latency for o in refused], (99,))["p99_ms"],
            "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0), "other_errors": sum(other.values()),
            "other_codes": other, **percentiles_ms([o.latency for o in ok], (50, 99)),
            "achieved_rate": achieved, "behind_schedule": bool(achieved < 0.9 * rate),
            "send_lag_p50_ms": lag["p50_ms"], "send_lag_p99_ms": lag["p99_ms"]}


def summarize_shortlist(latencies: list[float], codes: Counter, responses: list) -> dict:
    cands = [c for r in responses for c in r.candidates]
    unset = lambda c, f: not c.HasField(f) or math.isnan(getattr(c, f))  # noqa: E731
    return {"calls": sum(codes.values()), "ok": codes.get("OK", 0),
            "errors": {k: v for k, v in sorted(codes.items()) if k != "OK"},
            **percentiles_ms(latencies, (50, 99)),
            "mean_pool_size": float(np.mean([r.pool_size for r in responses])) if responses else float("nan"),
            "candidates": len(cands), "missing_match": sum(unset(c, "match") for c in cands),
            "missing_success": sum(unset(c, "success_probability") for c in cands),
            "missing_either": sum(unset(c, "match") or unset(c, "success_probability") for c in cands),
            "degraded": sum(bool(r.degraded) for r in responses)}
