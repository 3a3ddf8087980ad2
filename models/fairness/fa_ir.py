"""FA*IR (Zehlike et al., "FA*IR: A Fair Top-k Ranking Algorithm", CIKM 2017): statistical
(binomial) ranked group fairness for one protected group, with the multiple-testing correction
of alpha.  Implemented from the paper, not from the PyPI ``fairsearchcore`` package (which is
broken on current numpy / pandas).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from models.fairness.prefix import plain_order


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
