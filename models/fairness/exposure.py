"""Exposure across requests: capacity-aware exposure control for internships
(:class:`ExposureLedger`: each internship should receive position-weighted exposure in
proportion to its open slots) and the group exposure controller, plus the measures they use.
"""

from __future__ import annotations

import threading

import numpy as np


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
