"""Fair re-ranking primitives for the gateway (pure functions + one small stateful ledger).

Implemented from the papers, not from the PyPI ``fairsearchcore`` package (which is broken on
current numpy / pandas):

* :func:`det_const_sort` -- DetConstSort, Algorithm 3 of Geyik, Ambler & Kenthapadi,
  "Fairness-Aware Ranking in Search & Recommendation Systems with Application to LinkedIn Talent
  Search", KDD 2019.  Proportional *minimum* representation of several groups at every prefix.
* :func:`fair_mtable`, :func:`adjusted_alpha`, :func:`fa_ir` -- FA*IR, Zehlike et al.,
  "FA*IR: A Fair Top-k Ranking Algorithm", CIKM 2017.  Statistical (binomial) ranked group
  fairness for one protected group, with the multiple-testing correction of alpha.
* :class:`ExposureLedger` -- capacity-aware exposure control across requests: each internship
  should receive position-weighted exposure in proportion to its number of open slots.
* :func:`rerank` -- the convenience the gateway calls: DetConstSort with targets scaled by a
  strength knob, plus a mask of the items that were promoted.

Conventions used throughout
---------------------------
* "Plain order" is ``np.argsort(-scores, kind="stable")``: descending score, ties broken by the
  lower input index.  Every algorithm here compares items by their rank in the plain order, so
  ties are resolved exactly the same way everywhere and "no constraint binds" reproduces the plain
  order exactly.
* Orders returned are ``np.ndarray[int64]`` of indices into the input arrays.
* Prefix lengths ``t`` are 1-based (the prefix of length ``t`` is ``order[:t]``).
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np

__all__ = [
    "plain_order",
    "min_counts",
    "max_counts",
    "prefix_constraints_met",
    "det_const_sort",
    "det_greedy",
    "prefix_ceilings_met",
    "fair_mtable",
    "fail_probability",
    "adjusted_alpha",
    "fa_ir",
    "mtable_met",
    "ExposureLedger",
    "GroupExposureController",
    "position_weights",
    "gini",
    "rerank",
]

# floor(p * t) is evaluated as floor(p * t + _EPS) so that e.g. 0.29 * 100 = 28.999999999999996
# counts as 29, as it does in exact arithmetic.
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def plain_order(scores) -> np.ndarray:
    """Descending-score order, ties broken by input index (stable)."""
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable").astype(np.int64)


def _as_targets(groups: np.ndarray, targets) -> np.ndarray:
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
    return np.floor(targets * t + _EPS).astype(np.int64)


def max_counts(targets, t: int) -> np.ndarray:
    """Maximum count ceil(p_a * t) of the paper's DetGreedy/DetCons family (informational here;
    DetConstSort itself only enforces the minimums -- see :func:`det_const_sort`)."""
    targets = np.asarray(targets, dtype=float)
    return np.ceil(targets * t - _EPS).astype(np.int64)


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
    p = _as_targets(groups, targets)
    n_groups = len(p)
    pool = np.bincount(groups, minlength=n_groups)
    onehot = np.zeros((order.size, n_groups), dtype=np.int64)
    onehot[np.arange(order.size), groups[order]] = 1
    counts = np.cumsum(onehot, axis=0)  # counts[t-1, a] = count of group a in prefix t
    t = np.arange(1, order.size + 1)[:, None]
    need = np.minimum(np.floor(p[None, :] * t + _EPS).astype(np.int64), pool[None, :])
    return bool(np.all(counts >= need))


def _ranking_inputs(scores, groups, k: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated (scores, groups, k) for the re-rankers; k clipped to 0..n (None = n)."""
    scores = np.asarray(scores, dtype=float).ravel()
    groups = np.asarray(groups, dtype=np.int64).ravel()
    if groups.size != scores.size:
        raise ValueError("scores and groups must have the same length")
    if groups.size and groups.min() < 0:
        raise ValueError("group labels must be >= 0")
    k = scores.size if k is None else int(min(max(k, 0), scores.size))
    return scores, groups, k


def _group_queues(scores: np.ndarray, groups: np.ndarray, n_groups: int):
    """(rank, by_group, bounds): rank[i] = item i's position in plain order (0 = best);
    by_group[bounds[a]:bounds[a + 1]] = group a's items in plain order (a stable sort of the plain
    order by group keeps plain order inside each group)."""
    plain = plain_order(scores)
    rank = np.empty(scores.size, dtype=np.int64)
    rank[plain] = np.arange(scores.size)
    by_group = plain[np.argsort(groups[plain], kind="stable")]
    bounds = np.searchsorted(groups[by_group], np.arange(n_groups + 1))
    return rank, by_group, bounds


# --------------------------------------------------------------------------------------------
# DetConstSort (Geyik et al., KDD 2019, Algorithm 3)
# --------------------------------------------------------------------------------------------
def det_const_sort(scores, groups, targets, k: int | None = None) -> np.ndarray:
    """DetConstSort re-ranking (Geyik, Ambler, Kenthapadi, KDD 2019, Algorithm 3).

    Parameters
    ----------
    scores : (n,) relevance scores (higher is better).
    groups : (n,) int group label per item, in 0..G-1.
    targets : (G,) desired minimum proportions p_a, summing to <= 1.  Labels beyond
        ``len(targets)`` and groups with target 0 are unconstrained.
    k : length of the returned order (default n, which gives a permutation).

    Returns
    -------
    order : (min(k, n),) indices into the input.

    Exact rule implemented
    ----------------------
    Items of each group are queued in plain order (score desc, index asc).  A pseudo-group
    *fill* receives the residual proportion ``p_fill = 1 - sum_a p_a`` (the paper's p_a sum to
    exactly 1 over all attribute values; with ``targets`` all 0 the fill gets p = 1 and the
    output is the plain order).  ``count_a`` counts group-a items inserted so far by any route.

    For t = 1, 2, ... (the paper's ``k``):

    1. ``need_a(t) = floor(p_a * t)`` for every group a, and ``floor(p_fill * t)`` for fill.
    2. Every unit increase of a floor since t-1 (the paper's "changedMins") buys exactly one
       insertion.  Constrained groups are visited in order of the plain rank of their next item
       (the paper's "ordChangedMins").  A group that is still short (``count_a < need_a(t)``)
       and has items left inserts its own next item.  Otherwise -- it is already at its floor
       (because fill picks took some of its items) or its pool is exhausted -- and for every
       fill increase, the *best remaining item of any group* is inserted instead.
    3. Each inserted item gets ``deadline = t`` (the paper's ``maxIndices``) and is appended at
       the end of the list, then bubbled towards the top: it swaps with the item just above it
       while that item ranks worse in plain order *and* moving that item one place down keeps
       it within its own deadline, i.e. its new 1-based position is ``<= deadline``.
    4. Stop when all n items are placed, or (k < n) as soon as every remaining item ranks worse
       than all of the current top k (nothing can enter the top k any more); return the first k.

    Guarantees (property-tested):
    * at most ``sum_a floor(p_a t) + floor(p_fill t) <= t`` items are inserted by step t, so
      every item is inserted at a position <= its deadline and never pushed past it; hence at
      every prefix t, ``count_a(t) >= min(floor(p_a t), n_a)`` (:func:`prefix_constraints_met`);
    * within a group, plain order is kept (an item never passes a better-ranked one);
    * if the plain order already satisfies every floor it is returned unchanged (every inserted
      item's plain position is <= its deadline, so the insertion sort never gets blocked);
    * the top-k output equals the head of the full (k = n) output.

    The refinement in step 2 ("already at its floor -> best remaining") only matters when fill
    exists; without it a group whose floor was pre-paid by fill picks would insert a lower-ranked
    item with an unnecessarily tight deadline and reorder an already-fair ranking.

    Note on the paper's pseudo-code: it uses a 0-based ``lastEmpty`` with 1-based deadlines
    (``maxIndices[lastEmpty] := k``) and the swap test ``maxIndices[start-1] >= start``, which
    lets an item slip one position past its deadline (e.g. p=(.5,.5) with group 0 holding the four
    best scores gives 0,0,1,1, violating floor(.5*2)=1 at prefix 2).  We use the 1-based-correct
    test ``maxIndices[start-1] >= start + 1``.

    The paper also defines ceil(p_a t) maximums (:func:`max_counts`) for DetGreedy/DetCons/
    DetRelaxed; Algorithm 3 does not enforce them and neither do we -- the floors plus the
    bounded fill rate already keep any one group from crowding out the others' minimums.

    Complexity: O(n * G) for the queue bookkeeping plus O(n^2) worst case for the bubbling
    (insertion-sort like); fine for candidate lists of a few hundred items.
    """
    scores, groups, k = _ranking_inputs(scores, groups, k)
    n = scores.size
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    p = _as_targets(groups, targets)
    n_groups = len(p)
    p_fill = max(0.0, 1.0 - float(p.sum()))

    rank_arr, by_group, bounds = _group_queues(scores, groups, n_groups)
    # Plain Python lists: the loop below runs once per placed item, where numpy scalars cost more
    # than the arithmetic.
    rank, group_of = rank_arr.tolist(), groups.tolist()
    queues = [by_group[bounds[a] : bounds[a + 1]].tolist() for a in range(n_groups)]
    head = [0] * n_groups  # next unused item per group
    qlen = [len(q) for q in queues]

    def head_rank(a: int) -> int:
        return rank[queues[a][head[a]]] if head[a] < qlen[a] else n  # n = "empty"

    def pop_group(a: int) -> int:
        item = queues[a][head[a]]
        head[a] += 1
        return item

    def pop_best() -> int:
        # Best remaining item of any group = best among the group heads (each queue is sorted).
        a = min(range(n_groups), key=head_rank)
        return pop_group(a)

    items: list[int] = []  # the ranked list under construction (item indices)
    deadlines: list[int] = []  # paper's maxIndices (1-based prefix length)
    count = [0] * n_groups  # paper's rankedAttCnt, incl. fill-taken items
    prev_need = [0] * n_groups  # paper's minAttCnts
    shares = p.tolist()  # plain floats: this loop runs once per placed item
    prev_fill = 0
    placed = 0
    t = 0
    while placed < n:
        t += 1
        need = [math.floor(pa * t + _EPS) for pa in shares]  # tempMinAttCnts (min_counts, unboxed)
        need_fill = int(math.floor(p_fill * t + _EPS))
        # changedMins: one insertion per unit increase of a group's floor (at most 1 per step
        # since p_a <= 1) plus one per increase of the fill's floor.
        changed = [a for a in range(n_groups) for _ in range(need[a] - prev_need[a])]
        n_free = need_fill - prev_fill
        # ordChangedMins: by the score (plain rank) of the group's next item, best first.
        changed.sort(key=head_rank)
        picks: list[int] = []
        for a in changed:
            if count[a] < need[a] and head[a] < qlen[a]:
                picks.append(pop_group(a))  # the group is short of its floor: its own next item
                count[a] += 1
            else:
                n_free += 1  # already satisfied (e.g. by fill picks) or exhausted
        for _ in range(n_free):
            if placed + len(picks) < n:
                item = pop_best()  # best remaining item of any group
                count[group_of[item]] += 1
                picks.append(item)
        prev_need, prev_fill = need, need_fill

        # Insert in plain-rank order (the paper inserts sorted by score), then bubble up.
        picks.sort(key=lambda i: rank[i])
        for item in picks:
            items.append(item)
            deadlines.append(t)
            pos = len(items) - 1  # 0-based
            # swap while the item above ranks worse and may move down one (to 1-based pos+1).
            while pos > 0 and deadlines[pos - 1] >= pos + 1 and rank[items[pos - 1]] > rank[items[pos]]:
                items[pos - 1], items[pos] = items[pos], items[pos - 1]
                deadlines[pos - 1], deadlines[pos] = deadlines[pos], deadlines[pos - 1]
                pos -= 1
        placed = len(items)

        # Early stop for top-k: a later item can only enter the first k positions by passing the
        # item at position k-1, which needs a better plain rank than some item already there.
        # Once every remaining item ranks worse than all of the current top k, the top k is final.
        if k < n and placed >= k and placed < n:
            best_left = min(map(head_rank, range(n_groups)))
            if best_left > max(map(rank.__getitem__, items[:k])):
                break
    return np.asarray(items[:k], dtype=np.int64)


def det_greedy(scores, groups, min_targets, max_targets=None, k: int | None = None) -> np.ndarray:
    """DetGreedy (Geyik et al., KDD 2019, Algorithm 1) with both bounds at every prefix.

    At every position t = 1..k:

    1. groups *below their floor*, ``count_a < floor(min_a * t)``, with items left: take the best
       next item among them;
    2. otherwise groups *below their ceiling*, ``count_a < ceil(max_a * t)`` (``max_a`` = 1 when
       unset, i.e. unbounded), with items left: take the best next item among them;
    3. otherwise (every group with items left is at its ceiling) take the best remaining item.

    Use it when maximum shares are configured (target proportions with floor *and* ceiling);
    DetConstSort (:func:`det_const_sort`) stays the default for minimums only, because it
    guarantees every floor whenever the pool allows, which greedy selection cannot when two
    groups fall short at the same position.

    Guarantees (property-tested): a permutation (k = n) that keeps plain order within each group;
    the plain order is returned unchanged when it already meets every floor and ceiling; ceilings
    hold at every prefix whenever an unbounded group still has items (step 3 never runs); with a
    single floor-constrained group its floor holds at every prefix while its pool lasts.
    """
    scores, groups, k = _ranking_inputs(scores, groups, k)
    n = scores.size
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    lo = _as_targets(groups, min_targets)
    n_groups = len(lo)
    hi = np.ones(n_groups)
    if max_targets is not None:
        m = np.asarray(max_targets, dtype=float).ravel()
        if np.any(m < 0) or np.any(m > 1):
            raise ValueError("max_targets must be within [0, 1]")
        hi[: min(len(m), n_groups)] = m[:n_groups]
    if np.any(lo > hi + _EPS):
        raise ValueError("a group's minimum share exceeds its maximum")

    rank, by_group, bounds = _group_queues(scores, groups, n_groups)
    head, end = bounds[:-1].copy(), bounds[1:]
    count = np.zeros(n_groups, dtype=np.int64)
    out = np.empty(k, dtype=np.int64)
    for t in range(1, k + 1):
        left = head < end
        next_rank = np.where(left, rank[by_group[np.minimum(head, n - 1)]], n)
        short = left & (count < np.floor(lo * t + _EPS))
        room = left & (count < np.ceil(hi * t - _EPS))
        pool = short if short.any() else (room if room.any() else left)
        a = int(np.argmin(np.where(pool, next_rank, n + 1)))
        out[t - 1] = by_group[head[a]]
        head[a] += 1
        count[a] += 1
    return out


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
    return bool(np.all(np.cumsum(onehot, axis=0) <= np.ceil(hi[None, :] * t - _EPS)))


# --------------------------------------------------------------------------------------------
# FA*IR (Zehlike et al., CIKM 2017)
# --------------------------------------------------------------------------------------------
def fair_mtable(k: int, p: float, alpha: float) -> np.ndarray:
    """Minimum number of protected items in each prefix t = 1..k (FA*IR's mtable).

    ``m(t) = F^{-1}(alpha; t, p)`` -- the smallest x with ``Binom(t, p).cdf(x) >= alpha``
    (``scipy.stats.binom.ppf``).  A prefix with fewer than m(t) protected items would be rejected
    by a one-sided binomial test at level alpha.  Returned as int64 array of length k
    (``out[t-1] = m(t)``); it is non-decreasing in t.
    """
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    return _mtable_cached(int(k), float(p), float(alpha)).copy()


@lru_cache(maxsize=256)
def _mtable_cached(k: int, p: float, alpha: float) -> np.ndarray:
    # Imported here: scipy.stats takes over a second to import and only FA*IR needs it, not the
    # gateway's start-up.
    from scipy import stats

    t = np.arange(1, k + 1)
    if alpha <= 0.0:
        return np.zeros(k, dtype=np.int64)
    m = stats.binom.ppf(alpha, t, p)
    m = np.nan_to_num(m, nan=0.0)
    # ppf can be off by one through floating error right at a step; fix with the cdf definition.
    m = m.astype(np.int64)
    cdf_below = stats.binom.cdf(m - 1, t, p)
    m = np.where((m > 0) & (cdf_below >= alpha * (1 + 1e-12)), m - 1, m)
    m = np.clip(m, 0, t)
    return np.maximum.accumulate(m).astype(np.int64)


def _fail_prob(m: np.ndarray, p: float) -> float:
    """Dynamic programme over the Bernoulli(p) process.

    ``alive[j]`` = P(j protected among the first t items AND every prefix test so far passed).
    Step t: convolve with Bernoulli(p) (shift-add), then zero the states j < m(t) (those rankings
    fail at prefix t).  Fail probability = 1 - total surviving mass after k steps.  O(k^2), vectorised
    per step.
    """
    k = len(m)
    alive = np.zeros(k + 1)
    alive[0] = 1.0
    for t in range(1, k + 1):
        nxt = alive * (1.0 - p)
        nxt[1:] += alive[:-1] * p
        nxt[: m[t - 1]] = 0.0
        alive = nxt
    return float(max(0.0, 1.0 - alive.sum()))


def fail_probability(mtable, p: float) -> float:
    """Exact P(a ranking drawn from Bernoulli(p) fails >= 1 prefix test of ``mtable``)."""
    return _fail_prob(np.asarray(mtable, dtype=np.int64), float(p))


def adjusted_alpha(k: int, p: float, alpha: float, *, tol: float = 1e-10, max_iter: int = 200) -> float:
    """Multiple-test corrected significance alpha_c for FA*IR (Zehlike et al. 2017, Sec. 4 / Alg. 1).

    Testing every prefix 1..k at level alpha rejects a truly fair (Bernoulli(p)) ranking with
    probability larger than alpha.  alpha_c is chosen so that the probability of failing *any*
    prefix test with ``fair_mtable(k, p, alpha_c)`` is alpha.  We compute that probability
    exactly (:func:`fail_probability`, a DP over the binomial process, instead of the paper's
    block-length recursion -- same quantity) and bisect over alpha_c in [0, alpha].

    Because mtable is integer-valued the failure probability is a step function of alpha_c, so
    exact equality is usually impossible; we return the *largest* alpha_c whose failure
    probability is <= alpha (conservative, as in the paper).  Always ``0 <= alpha_c <= alpha``.
    """
    if k <= 0 or alpha <= 0.0:
        return float(max(alpha, 0.0))
    return _adjusted_alpha_cached(int(k), float(p), float(alpha), float(tol), int(max_iter))


@lru_cache(maxsize=256)
def _adjusted_alpha_cached(k: int, p: float, alpha: float, tol: float, max_iter: int) -> float:
    def fp(a: float) -> float:
        return _fail_prob(_mtable_cached(k, p, a), p) if a > 0 else 0.0

    if fp(alpha) <= alpha:  # already fine (e.g. k = 1)
        return alpha
    lo, hi = 0.0, alpha  # invariant: fp(lo) <= alpha < fp(hi)
    for _ in range(max_iter):
        if hi - lo <= tol * alpha:
            break
        mid = 0.5 * (lo + hi)
        if fp(mid) <= alpha:
            lo = mid
        else:
            hi = mid
    return lo


def mtable_met(order, protected, mtable) -> bool:
    """True iff every prefix t of ``order`` holds at least ``mtable[t-1]`` protected items."""
    order = np.asarray(order, dtype=np.int64)
    protected = np.asarray(protected, dtype=bool)
    m = np.asarray(mtable)[: order.size]
    return bool(np.all(np.cumsum(protected[order]) >= m))


def fa_ir(scores, protected, k: int | None = None, p: float = 0.5, alpha: float = 0.1, adjust: bool = True) -> np.ndarray:
    """FA*IR top-k (Zehlike et al., CIKM 2017, Algorithm 2).

    Two priority queues, protected and non-protected, each in plain order.  For t = 1..k:
    if the number of protected items placed so far is < m(t) take the best protected item,
    otherwise take the better of the two queue heads.  ``m = fair_mtable(k, p, alpha_c)`` with
    ``alpha_c = adjusted_alpha(k, p, alpha)`` when ``adjust`` (else alpha).  If a queue runs dry,
    the other one fills the rest (the mtable then cannot be met; no exception).
    Returns min(k, n) indices into the input (a permutation when k = n).
    """
    scores = np.asarray(scores, dtype=float).ravel()
    protected = np.asarray(protected, dtype=bool).ravel()
    n = scores.size
    if protected.size != n:
        raise ValueError("scores and protected must have the same length")
    k = n if k is None else int(min(max(k, 0), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    a = adjusted_alpha(k, p, alpha) if adjust else alpha
    m = fair_mtable(k, p, a)
    plain = plain_order(scores)
    prot_q = plain[protected[plain]]  # protected queue, best first
    np_q = plain[~protected[plain]]  # non-protected queue, best first
    rank = np.empty(n, dtype=np.int64)
    rank[plain] = np.arange(n)
    out = np.empty(k, dtype=np.int64)
    i = j = 0  # heads of the protected / non-protected queues
    for t in range(k):
        has_p, has_n = i < prot_q.size, j < np_q.size
        take_protected = has_p and (
            i < m[t] or not has_n or rank[prot_q[i]] < rank[np_q[j]]
        )
        if take_protected:
            out[t] = prot_q[i]
            i += 1
        else:
            out[t] = np_q[j]
            j += 1
    return out


# --------------------------------------------------------------------------------------------
# Exposure ledger
# --------------------------------------------------------------------------------------------
def position_weights(k: int) -> np.ndarray:
    """DCG-style position weights 1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=float))


def gini(values) -> float:
    """Gini coefficient of non-negative values (0 = perfectly equal, -> 1 = one holds all).

    ``G = sum_i (2 i - n - 1) x_(i) / (n * sum x)`` with x sorted ascending, i = 1..n.
    Returns 0.0 for empty or all-zero input.
    """
    x = np.sort(np.asarray(values, dtype=float).ravel())
    n = x.size
    total = x.sum()
    if n == 0 or total <= 0:
        return 0.0
    if np.any(x < 0):
        raise ValueError("gini needs non-negative values")
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


class ExposureLedger:
    """Capacity-aware exposure control across all requests one gateway replica serves.

    State (numpy arrays sized to the catalogue, indexed by internship position):
    ``exposure[i]`` = sum over served lists of 1/log2(rank+1) where item i was shown at ``rank``
    (optionally exponentially decayed), and ``slots[i]`` (0 for closed / full internships).

    Target share ``share_i = slots_i / S`` with ``S = sum(slots)`` over the open catalogue.
    Actual share is smoothed towards the target with ``prior`` pseudo-exposure units, so that a
    cold ledger gives zero boosts:
    ``actual_i = (exposure_i + prior * share_i) / (total + prior)``.

    Boost (additive score adjustment) for candidate i, ``kind="deficit"`` (default):
    ``boost_i = strength * tanh((share_i - actual_i) / (mean_share * temperature))``,
    ``mean_share = 1 / n_open``: the exposure deficit measured in "average items".  An item
    never shown gets ``tanh(slots_i / mean_slots)`` -- more slots, bigger push -- and an item
    hogging the lists gets pushed down in proportion to its excess.

    ``kind="log_ratio"``: ``boost_i = strength * tanh(log(share_i / actual_i) / temperature)``,
    scale-free but it saturates: every never-shown item gets ~ +strength whatever its slots.

    Both are 0 at parity, positive when under-exposed, negative when over-exposed, bounded in
    (-strength, strength), and exactly 0 everywhere when strength = 0 (``strength`` is clipped to
    [0, 1]).  Items with no open slots get ``-strength`` (their target is 0).

    Decay: with ``half_life`` (in requests) an exposure recorded h requests ago weighs 0.5**(h/half_life).
    Implemented lazily in O(k): new exposure is recorded inflated by ``g = 2**(r/half_life)`` at
    request r; shares are ratios so the common factor cancels; the arrays are renormalised (O(N))
    only when g grows past 1e12, i.e. amortised O(1).

    All methods hold one lock; ``boost`` and ``record`` are O(k) for k candidate items.
    """

    def __init__(
        self,
        slots,
        *,
        half_life: float | None = None,
        prior: float = 10.0,
        temperature: float = 1.0,
        kind: str = "deficit",
    ):
        slots = np.asarray(slots, dtype=float).ravel()
        if np.any(slots < 0):
            raise ValueError("slots must be non-negative")
        if half_life is not None and half_life <= 0:
            raise ValueError("half_life must be positive")
        if kind not in ("deficit", "log_ratio"):
            raise ValueError("kind must be 'deficit' or 'log_ratio'")
        self._kind = kind
        self._lock = threading.Lock()
        self._half_life = half_life
        self._growth = 2.0 ** (1.0 / half_life) if half_life else 1.0
        self._prior = float(prior)
        self._temperature = float(temperature)
        self._exp = np.zeros(slots.size)  # inflated exposure
        self._total = 0.0  # inflated total exposure
        self._scale = 1.0  # current inflation factor g
        self._requests = 0
        self._set_slots(slots)

    # -- configuration ------------------------------------------------------------------------
    def _set_slots(self, slots: np.ndarray) -> None:
        total = slots.sum()
        self._slots = slots.copy()
        self._share = slots / total if total > 0 else np.zeros_like(slots)
        n_open = int(np.count_nonzero(slots > 0))
        self._mean_share = 1.0 / n_open if n_open else 1.0

    def set_slots(self, slots) -> None:
        """Replace the slot vector (catalogue refresh).  The catalogue may grow; exposure is kept."""
        slots = np.asarray(slots, dtype=float).ravel()
        with self._lock:
            if slots.size > self._exp.size:
                self._exp = np.concatenate([self._exp, np.zeros(slots.size - self._exp.size)])
            elif slots.size < self._exp.size:
                self._total -= float(self._exp[slots.size :].sum())
                self._exp = self._exp[: slots.size].copy()
            self._set_slots(slots)

    def reindex(self, take, slots) -> None:
        """Follow a catalogue refresh that moved items: ``take[new_position]`` is the item's old
        position (-1 for a new internship, which starts with no exposure)."""
        take = np.asarray(take, dtype=np.int64).ravel()
        slots = np.asarray(slots, dtype=float).ravel()
        if take.size != slots.size:
            raise ValueError("take and slots must have one entry per item")
        with self._lock:
            exp = np.where(take >= 0, self._exp[np.clip(take, 0, max(self._exp.size - 1, 0))], 0.0) \
                if self._exp.size else np.zeros(take.size)
            self._exp = exp
            self._total = float(exp.sum())
            self._set_slots(slots)

    # -- read side ----------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self._exp.size

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def target_share(self) -> np.ndarray:
        return self._share.copy()

    @property
    def exposure(self) -> np.ndarray:
        """Exposure per item in real (decayed) units."""
        with self._lock:
            return self._exp / self._scale

    def exposure_share(self) -> np.ndarray:
        with self._lock:
            return self._exp / self._total if self._total > 0 else np.zeros_like(self._exp)

    def boost(self, item_positions, strength: float = 1.0) -> np.ndarray:
        """Additive score adjustment for the candidate catalogue positions (see class docstring)."""
        idx = np.asarray(item_positions, dtype=np.int64).ravel()
        strength = float(np.clip(strength, 0.0, 1.0))
        if strength == 0.0 or idx.size == 0:
            return np.zeros(idx.size)
        with self._lock:
            target = self._share[idx]
            prior = self._prior * self._scale  # prior expressed in inflated units
            actual = (self._exp[idx] + prior * target) / (self._total + prior)
            mean_share = self._mean_share
        if self._kind == "deficit":
            x = (target - actual) / (mean_share * self._temperature)
        else:
            tiny = 1e-300
            x = np.log(np.maximum(target, tiny) / np.maximum(actual, tiny)) / self._temperature
        out = strength * np.tanh(x)
        return np.where(target > 0, out, -strength)  # closed / full internships: most negative

    # -- write side ---------------------------------------------------------------------------
    def record(self, item_positions_in_rank_order) -> None:
        """Add exposure for one served list (first element shown at rank 1)."""
        idx = np.asarray(item_positions_in_rank_order, dtype=np.int64).ravel()
        w = position_weights(idx.size)
        with self._lock:
            self._requests += 1
            if self._half_life:
                self._scale *= self._growth
                if self._scale > 1e12:  # renormalise to keep numbers finite (amortised O(1))
                    self._exp /= self._scale
                    self._total /= self._scale
                    self._scale = 1.0
            w = w * self._scale
            np.add.at(self._exp, idx, w)  # add.at: correct even if an item repeats
            self._total += float(w.sum())

    def reset(self) -> None:
        with self._lock:
            self._exp[:] = 0.0
            self._total = 0.0
            self._scale = 1.0
            self._requests = 0

    def gini(self, per_slot: bool = False) -> float:
        """Gini of exposure over open items (optionally of exposure / slots)."""
        with self._lock:
            open_ = self._slots > 0
            e = self._exp[open_] / self._scale
            if per_slot:
                e = e / self._slots[open_]
        return gini(e)


class GroupExposureController:
    """Holds each item group's share of exposure at a target, across all lists served.

    A per-list minimum (DetConstSort's floors) guarantees every student a few items of a group, but
    says little about the group's *exposure*: a constrained item usually lands at its deadline, the
    last position allowed, where it weighs little. The controller closes that gap with integral
    control on the position-weighted share: each group g with a target carries an additive offset
    ``mu_g`` (in z-score units), and after every served list

        share_g <- (1 - smoothing) * share_g + smoothing * (exposure share of g in this list)
        mu_g    <- clip(mu_g + gain * (target_g - share_g), -max_offset, max_offset)

    so a group below target is lifted in the lists where it is nearly competitive anyway (the
    cheapest places to add exposure) and a group above target is lowered. The target is two-sided.
    Groups without a target keep ``mu = 0``. One controller per gateway replica, like the ledger.
    """

    def __init__(self, targets, *, gain: float = 0.05, smoothing: float = 0.01, max_offset: float = 3.0):
        self.targets = np.asarray(targets, dtype=float).ravel()  # nan = no target for that group
        self.gain, self.smoothing, self.max_offset = float(gain), float(smoothing), float(max_offset)
        self.offsets = np.zeros(self.targets.size)
        self.shares = np.where(np.isfinite(self.targets), self.targets, 0.0)  # start at target: no kick
        self._lock = threading.Lock()

    def offset(self, groups) -> np.ndarray:
        return self.offsets[np.asarray(groups, dtype=np.int64)]

    def record(self, groups_in_rank_order) -> None:
        g = np.asarray(groups_in_rank_order, dtype=np.int64).ravel()
        if g.size == 0:
            return
        w = position_weights(g.size)
        share = np.bincount(g, weights=w, minlength=self.targets.size)[: self.targets.size] / w.sum()
        with self._lock:
            self.shares = (1 - self.smoothing) * self.shares + self.smoothing * share
            has = np.isfinite(self.targets)
            step = np.where(has, self.gain * (np.nan_to_num(self.targets) - self.shares), 0.0)
            self.offsets = np.clip(self.offsets + step, -self.max_offset, self.max_offset)


# --------------------------------------------------------------------------------------------
# gateway convenience
# --------------------------------------------------------------------------------------------
def rerank(scores, item_groups, targets, *, strength: float = 1.0, k: int | None = None,
           max_targets=None) -> tuple[np.ndarray, np.ndarray]:
    """Fair re-rank used by the gateway.

    * ``strength == 0`` -> plain score order (first k), ``moved`` all False.
    * no ``max_targets`` -> ``det_const_sort(scores, item_groups, targets * strength, k)``.
    * with ``max_targets`` -> ``det_greedy`` with floors ``targets * strength`` and ceilings
      relaxed towards 1 as strength falls: ``max + (1 - strength) * (1 - max)``.

    ``moved[j]`` is True iff the item at output position j sits at a better (smaller) position
    than it has in the plain score order, i.e. it was promoted by the fairness constraints.
    Returns ``(order, moved)``; ``order`` indexes the inputs, ``len(order) == min(k, n)``.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    n = scores.size
    k = n if k is None else int(min(max(k, 0), n))
    strength = float(np.clip(strength, 0.0, 1.0))
    plain = plain_order(scores)
    if strength == 0.0 or n == 0:
        return plain[:k], np.zeros(k, dtype=bool)
    floors = np.asarray(targets, dtype=float) * strength
    if max_targets is None:
        order = det_const_sort(scores, item_groups, floors, k)
    else:
        m = np.asarray(max_targets, dtype=float)
        order = det_greedy(scores, item_groups, floors, m + (1.0 - strength) * (1.0 - m), k)
    plain_pos = np.empty(n, dtype=np.int64)
    plain_pos[plain] = np.arange(n)
    moved = plain_pos[order] > np.arange(order.size)
    return order, moved
