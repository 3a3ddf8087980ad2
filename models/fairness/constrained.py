"""Re-ranking under per-prefix group floors (and ceilings): DetConstSort and DetGreedy of Geyik,
Ambler & Kenthapadi, "Fairness-Aware Ranking in Search & Recommendation Systems with Application
to LinkedIn Talent Search", KDD 2019 -- implemented from the paper -- and :func:`rerank`, the
entry point the re-ranker (models/fairness/reranker.py) calls.

DetConstSort (Algorithm 3), the exact rule implemented
------------------------------------------------------
Items of each group are queued in plain order (score desc, index asc; models/fairness/prefix.py).
A pseudo-group *fill* receives the residual proportion ``p_fill = 1 - sum_a p_a`` (the paper's
p_a sum to exactly 1 over all attribute values; with ``targets`` all 0 the fill gets p = 1 and
the output is the plain order).  ``count_a`` counts group-a items inserted so far by any route.

For t = 1, 2, ... (the paper's ``k``):

1. ``need_a(t) = floor(p_a * t)`` for every group a, and ``floor(p_fill * t)`` for fill.
2. Every unit increase of a floor since t-1 (the paper's "changedMins") buys exactly one
   insertion.  Constrained groups are visited in order of the plain rank of their next item
   (the paper's "ordChangedMins").  A group that is still short (``count_a < need_a(t)``) and
   has items left inserts its own next item.  Otherwise -- it is already at its floor (because
   fill picks took some of its items) or its pool is exhausted -- and for every fill increase,
   the *best remaining item of any group* is inserted instead.
3. Each inserted item gets ``deadline = t`` (the paper's ``maxIndices``) and is appended at the
   end of the list, then bubbled towards the top: it swaps with the item just above it while
   that item ranks worse in plain order *and* moving that item one place down keeps it within
   its own deadline, i.e. its new 1-based position is ``<= deadline``.
4. Stop when all n items are placed, or (k < n) as soon as every remaining item ranks worse than
   all of the current top k (nothing can enter the top k any more); return the first k.

Guarantees (property-tested):

* at most ``sum_a floor(p_a t) + floor(p_fill t) <= t`` items are inserted by step t, so every
  item is inserted at a position <= its deadline and never pushed past it; hence at every prefix
  t, ``count_a(t) >= min(floor(p_a t), n_a)`` (``prefix_constraints_met``);
* within a group, plain order is kept (an item never passes a better-ranked one);
* if the plain order already satisfies every floor it is returned unchanged (every inserted
  item's plain position is <= its deadline, so the insertion sort never gets blocked);
* the top-k output equals the head of the full (k = n) output.

The refinement in step 2 ("already at its floor -> best remaining") only matters when fill
exists; without it a group whose floor was pre-paid by fill picks would insert a lower-ranked
item with an unnecessarily tight deadline and reorder an already-fair ranking.

Note on the paper's pseudo-code: it uses a 0-based ``lastEmpty`` with 1-based deadlines
(``maxIndices[lastEmpty] := k``) and the swap test ``maxIndices[start-1] >= start``, which lets
an item slip one position past its deadline (e.g. p=(.5,.5) with group 0 holding the four best
scores gives 0,0,1,1, violating floor(.5*2)=1 at prefix 2).  We use the 1-based-correct test
``maxIndices[start-1] >= start + 1``.

The paper also defines ceil(p_a t) maximums (``max_counts``) for DetGreedy/DetCons/DetRelaxed;
Algorithm 3 does not enforce them and neither do we -- the floors plus the bounded fill rate
already keep any one group from crowding out the others' minimums.

Complexity: O(n * G) for the queue bookkeeping plus O(n^2) worst case for the bubbling
(insertion-sort like); fine for candidate lists of a few hundred items.
"""

from __future__ import annotations

import math

import numpy as np

from models.fairness.prefix import EPS, as_targets, group_queues, plain_order, ranking_inputs


class _GroupQueues:
    """Each group's items in plain order, consumed from the front. Plain Python lists: DetConstSort
    touches them once per placed item, where numpy scalars cost more than the arithmetic."""

    def __init__(self, scores: np.ndarray, groups: np.ndarray, n_groups: int):
        rank, by_group, bounds = group_queues(scores, groups, n_groups)
        self.n, self.n_groups = scores.size, n_groups
        self.rank, self.group_of = rank.tolist(), groups.tolist()
        self.queues = [by_group[bounds[a]: bounds[a + 1]].tolist() for a in range(n_groups)]
        self.head = [0] * n_groups  # next unused item per group

    def has_items(self, a: int) -> bool:
        return self.head[a] < len(self.queues[a])

    def head_rank(self, a: int) -> int:
        """Plain rank of group a's next item; n when the group is exhausted."""
        return self.rank[self.queues[a][self.head[a]]] if self.has_items(a) else self.n

    def pop(self, a: int) -> int:
        item = self.queues[a][self.head[a]]
        self.head[a] += 1
        return item

    def pop_best(self) -> int:
        """The best remaining item of any group: the best of the group heads (each queue is sorted)."""
        return self.pop(min(range(self.n_groups), key=self.head_rank))

    def best_left(self) -> int:
        return min(map(self.head_rank, range(self.n_groups)))


def det_const_sort(scores, groups, targets, k: int | None = None) -> np.ndarray:
    """DetConstSort re-ranking (Geyik, Ambler, Kenthapadi, KDD 2019, Algorithm 3; the exact rule,
    its guarantees and a correction to the paper's pseudo-code are in the module docstring).

    scores: (n,) relevance (higher is better); groups: (n,) int label per item, in 0..G-1;
    targets: (G,) desired minimum proportions p_a, summing to <= 1 (labels beyond
    ``len(targets)`` and groups with target 0 are unconstrained); k: length of the returned
    order (default n, a permutation). Returns (min(k, n),) indices into the input.
    """
    scores, groups, k = ranking_inputs(scores, groups, k)
    n = scores.size
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    p = as_targets(groups, targets)
    queues = _GroupQueues(scores, groups, len(p))
    shares, p_fill = p.tolist(), max(0.0, 1.0 - float(p.sum()))
    items: list[int] = []      # the ranked list under construction (item indices)
    deadlines: list[int] = []  # the paper's maxIndices (1-based prefix length)
    count = [0] * len(p)       # the paper's rankedAttCnt, fill-taken items included
    prev_need, prev_fill, t = [0] * len(p), 0, 0
    while len(items) < n:
        t += 1
        need = [math.floor(pa * t + EPS) for pa in shares]  # tempMinAttCnts
        need_fill = int(math.floor(p_fill * t + EPS))
        picks = _picks_at(queues, need, prev_need, need_fill - prev_fill, count, room=n - len(items))
        prev_need, prev_fill = need, need_fill
        for item in sorted(picks, key=queues.rank.__getitem__):  # the paper inserts sorted by score
            _insert(items, deadlines, item, t, queues.rank)
        # A later item can only enter the first k positions by passing the item at position k-1,
        # which needs a better plain rank than some item already there.
        if k <= len(items) < n and queues.best_left() > max(map(queues.rank.__getitem__, items[:k])):
            break
    return np.asarray(items[:k], dtype=np.int64)


def _picks_at(queues: _GroupQueues, need: list, prev_need: list, n_free: int, count: list, room: int) -> list:
    """The items inserted at one step: one per unit increase of a group's floor (changedMins; at
    most one per step since p_a <= 1), visited by the plain rank of the group's next item
    (ordChangedMins), plus one best-remaining item per increase of the fill's floor."""
    changed = sorted((a for a in range(len(need)) for _ in range(need[a] - prev_need[a])), key=queues.head_rank)
    picks: list[int] = []
    for a in changed:
        if count[a] < need[a] and queues.has_items(a):
            picks.append(queues.pop(a))  # the group is short of its floor: its own next item
            count[a] += 1
        else:
            n_free += 1  # already satisfied (e.g. by fill picks) or exhausted
    for _ in range(n_free):
        if len(picks) < room:
            item = queues.pop_best()
            count[queues.group_of[item]] += 1
            picks.append(item)
    return picks


def _insert(items: list, deadlines: list, item: int, t: int, rank: list) -> None:
    """Append `item` with deadline t, then bubble it up while the item above ranks worse and may
    move down one place (to 1-based position pos + 1) without passing its own deadline."""
    items.append(item)
    deadlines.append(t)
    pos = len(items) - 1  # 0-based
    while pos > 0 and deadlines[pos - 1] >= pos + 1 and rank[items[pos - 1]] > rank[items[pos]]:
        items[pos - 1], items[pos] = items[pos], items[pos - 1]
        deadlines[pos - 1], deadlines[pos] = deadlines[pos], deadlines[pos - 1]
        pos -= 1


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
    scores, groups, k = ranking_inputs(scores, groups, k)
    n = scores.size
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    lo = as_targets(groups, min_targets)
    n_groups = len(lo)
    hi = np.ones(n_groups)
    if max_targets is not None:
        m = np.asarray(max_targets, dtype=float).ravel()
        if np.any(m < 0) or np.any(m > 1):
            raise ValueError("max_targets must be within [0, 1]")
        hi[: min(len(m), n_groups)] = m[:n_groups]
    if np.any(lo > hi + EPS):
        raise ValueError("a group's minimum share exceeds its maximum")

    rank, by_group, bounds = group_queues(scores, groups, n_groups)
    head, end = bounds[:-1].copy(), bounds[1:]
    count = np.zeros(n_groups, dtype=np.int64)
    out = np.empty(k, dtype=np.int64)
    for t in range(1, k + 1):
        left = head < end
        next_rank = np.where(left, rank[by_group[np.minimum(head, n - 1)]], n)
        short = left & (count < np.floor(lo * t + EPS))
        room = left & (count < np.ceil(hi * t - EPS))
        pool = short if short.any() else (room if room.any() else left)
        a = int(np.argmin(np.where(pool, next_rank, n + 1)))
        out[t - 1] = by_group[head[a]]
        head[a] += 1
        count[a] += 1
    return out


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
