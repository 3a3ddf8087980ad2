"""Choosing between models whose scores are means over students, with the noise in view.

A validation NDCG is a mean over a few thousand students; two candidates 0.0003 apart are not
different models, they are one draw of noise. Each candidate gets a percentile-bootstrap
interval over students, and its difference to the best one a paired interval (the same
resampled students for both, which cancels the students' own spread). Candidates whose
difference to the best is within the noise are ties, and a tie goes to the model that is
cheaper to serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
SAMPLES = 1000
_CHUNK = 25  # resamples drawn at once: (25, students, candidates) floats at a time


def bootstrap_means(values: np.ndarray, *, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """Means of `samples` resamples (with replacement) of `values` along axis 0; `values` may be
    (students,) or (students, m) for m candidates resampled together (paired)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(values)
    out = []
    for start in range(0, samples, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, samples - start), n))
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return float(low), float(high)


def mean_interval(values: np.ndarray, *, seed: int = 0, level: float = LEVEL) -> list[float]:
    """The percentile-bootstrap interval of the mean of `values` (one per student)."""
    return list(interval(bootstrap_means(values, seed=seed), level))


@dataclass
class Choice:
    index: int          # the chosen candidate
    best: int           # the candidate with the highest mean
    intervals: list[tuple[float, float]]           # each candidate's mean, bootstrap interval
    differences: list[tuple[float, float, float]]  # (mean, low, high) of candidate - best, paired
    reason: str


MATERIALLY_CHEAPER = 0.5  # at most half the best candidate's serving parameters


def choose(per_student: list[np.ndarray], costs: list[float], names: list[str], *, seed: int = 0,
           level: float = LEVEL) -> Choice:
    """The best candidate by mean, unless materially cheaper ones (at most half its `costs`) are
    within the noise of it: then the cheapest of those (ties by mean)."""
    stacked = np.column_stack([np.asarray(v, dtype=np.float64) for v in per_student])
    means = stacked.mean(axis=0)
    best = int(np.argmax(means))
    draws = bootstrap_means(stacked, seed=seed)                      # (samples, candidates)
    diff_draws = draws - draws[:, [best]]
    intervals = [interval(draws[:, j], level) for j in range(len(names))]
    differences = [(float(means[j] - means[best]), *interval(diff_draws[:, j], level)) for j in range(len(names))]
    tied = [j for j in range(len(names)) if differences[j][2] >= 0]  # not clearly worse than the best
    # A tie goes to a cheaper model only when the saving matters: a few factors fewer is not worth
    # a lower mean (and among many search trials some always land within noise of the best).
    worth_it = [j for j in tied if j == best or costs[j] <= MATERIALLY_CHEAPER * costs[best]]
    chosen = min(worth_it, key=lambda j: (costs[j], -means[j]))
    if chosen == best:
        reason = f"{names[best]}: the best mean"
        if len(tied) > 1:
            reason += (f"; within noise of it: {', '.join(names[j] for j in tied if j != best)}, none at most "
                       f"half its serving cost")
    else:
        d = differences[chosen]
        reason = (f"{names[chosen]}: within noise of the best ({names[best]}; difference {d[0]:+.4f}, "
                  f"{int(100 * level)} % interval [{d[1]:+.4f}, {d[2]:+.4f}]) and cheaper to serve "
                  f"({costs[chosen]:,.0f} against {costs[best]:,.0f} parameters)")
    return Choice(chosen, best, intervals, differences, reason)


def compare(a: np.ndarray, b: np.ndarray, *, seed: int = 0, level: float = LEVEL) -> dict:
    """Mean of a - b over the same students, with its paired bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = mean_interval(d, seed=seed, level=level)
    return {"difference": float(d.mean()), "interval": [low, high], "beyond_noise": bool(low > 0 or high < 0)}
