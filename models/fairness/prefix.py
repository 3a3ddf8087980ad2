"""Plain order and the per-prefix group constraints that every fair re-ranker here is held to.

Conventions used throughout the fair re-rankers
-----------------------------------------------
* "Plain order" is ``np.argsort(-scores, kind="stable")``: descending score, ties broken by the
  lower input index.  Every algorithm compares items by their rank in the plain order, so ties
  are resolved exactly the same way everywhere and "no constraint binds" reproduces the plain
  order exactly.
* Orders returned are ``np.ndarray[int64]`` of indices into the input arrays.
* Prefix lengths ``t`` are 1-based (the prefix of length ``t`` is ``order[:t]``).
"""

from __future__ import annotations

import numpy as np

# floor(p * t) is evaluated as floor(p * t + EPS) so that e.g. 0.29 * 100 = 28.999999999999996
# counts as 29, as it does in exact arithmetic.
EPS = 1e-9


def plain_order(scores) -> np.ndarray:
    """Descending-score order, ties broken by input index (stable)."""
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable").astype(np.int64)


def as_targets(groups: np.ndarray, targets) -> np.ndarray:
    """Targets padded with zeros so that every group label present has an entry."""
    targets = np.asarray(targets, dtype=float).ravel()
    if np.any(targets < 0) or not np.all(np.isfinite(targets)):
        raise ValueError("targets must be finite and non-negative")
    if targets.sum() > 1.0 + 1e-6:
        raise ValueError(f"targets must sum to <= 1, got {targets.sum():.6f}")
    n_groups = max(len(targets), int(groups.max()) + 1 if groups.size else 0)
    out = np.zeros(n_groups, dtype=float)
    out[: len(targets)] = targets
    return out


def min_counts(targets, t: int) -> np.ndarray:
    """Minimum number of items of each group required in a prefix of length ``t``: floor(p_a * t)."""
    targets = np.asarray(targets, dtype=float)
    return np.floor(targets * t + EPS).astype(np.int64)


def max_counts(targets, t: int) -> np.ndarray:
    """Maximum count ceil(p_a * t) of the paper's DetGreedy/DetCons family (informational here;
    DetConstSort itself only enforces the minimums -- see :func:`det_const_sort`)."""
    targets = np.asarray(targets, dtype=float)
    return np.ceil(targets * t - EPS).astype(np.int64)


def prefix_constraints_met(order, groups, targets) -> bool:
    """True iff every prefix of ``order`` satisfies the minimum-representation constraints.

    For each prefix length t = 1..len(order) and each group a the requirement is
    ``count_a(t) >= min(floor(p_a * t), n_a)`` where ``n_a`` is the number of items of group a in
    the *whole input pool* (``groups``), i.e. a group is only held to its floor while its pool
    still had items available.  Vectorised: one cumulative count matrix (len(order), G).
    """
    order = np.asarray(order, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if order.size == 0:
        return True
    p = as_targets(groups, targets)
    n_groups = len(p)
    pool = np.bincount(groups, minlength=n_groups)
    onehot = np.zeros((order.size, n_groups), dtype=np.int64)
    onehot[np.arange(order.size), groups[order]] = 1
    counts = np.cumsum(onehot, axis=0)  # counts[t-1, a] = count of group a in prefix t
    t = np.arange(1, order.size + 1)[:, None]
    need = np.minimum(np.floor(p[None, :] * t + EPS).astype(np.int64), pool[None, :])
    return bool(np.all(counts >= need))


def ranking_inputs(scores, groups, k: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated (scores, groups, k) for the re-rankers; k clipped to 0..n (None = n)."""
    scores = np.asarray(scores, dtype=float).ravel()
    groups = np.asarray(groups, dtype=np.int64).ravel()
    if groups.size != scores.size:
        raise ValueError("scores and groups must have the same length")
    if groups.size and groups.min() < 0:
        raise ValueError("group labels must be >= 0")
    k = scores.size if k is None else int(min(max(k, 0), scores.size))
    return scores, groups, k


def group_queues(scores: np.ndarray, groups: np.ndarray, n_groups: int):
    """(rank, by_group, bounds): rank[i] = item i's position in plain order (0 = best);
    by_group[bounds[a]:bounds[a + 1]] = group a's items in plain order (a stable sort of the plain
    order by group keeps plain order inside each group)."""
    plain = plain_order(scores)
    rank = np.empty(scores.size, dtype=np.int64)
    rank[plain] = np.arange(scores.size)
    by_group = plain[np.argsort(groups[plain], kind="stable")]
    bounds = np.searchsorted(groups[by_group], np.arange(n_groups + 1))
    return rank, by_group, bounds


def prefix_ceilings_met(order, groups, max_targets) -> bool:
    """True iff ``count_a(t) <= ceil(max_a * t)`` for every prefix t and every bounded group a."""
    order = np.asarray(order, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if order.size == 0:
        return True
    m = np.asarray(max_targets, dtype=float).ravel()
    n_groups = max(len(m), int(groups.max()) + 1)
    hi = np.ones(n_groups)
    hi[: len(m)] = m
    onehot = np.zeros((order.size, n_groups), dtype=np.int64)
    onehot[np.arange(order.size), groups[order]] = 1
    t = np.arange(1, order.size + 1)[:, None]
    return bool(np.all(np.cumsum(onehot, axis=0) <= np.ceil(hi[None, :] * t - EPS)))
