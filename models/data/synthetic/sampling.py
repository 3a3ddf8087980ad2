"""Vectorised draws and the Arrow column helpers the entity generators share.

Everything here works on whole arrays at once: the generator's speed at a million students
rests on never looping over rows in Python where numpy or Arrow can do it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.data.synthetic.vocab import Vocab


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent, reproducible stream per purpose (and per chunk)."""
    return np.random.default_rng([seed, *stream])


def gumbel_topk(rng, logw: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, sample k[row] distinct columns with probability proportional to exp(logw).

    Gumbel-top-k is sampling without replacement, vectorised over rows. Returns the chosen
    column indices sorted ascending (padded with -1) and the validity mask.
    """
    kmax = int(k.max())
    g = logw + rng.gumbel(size=logw.shape)
    top = np.argsort(-g, axis=1)[:, :kmax]
    valid = np.arange(kmax)[None, :] < k[:, None]
    big = np.iinfo(np.int64).max
    idx = np.sort(np.where(valid, top, big), axis=1)
    valid = idx != big
    return np.where(valid, idx, -1), valid


def categorical(rng, p: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(len(p), size=n, p=np.asarray(p) / np.sum(p))


def draw_places(rng, n: int, v: Vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """District by population share, and a point scattered around its centre (lat, lon)."""
    district = categorical(rng, v.d_pop, n)
    lat = v.d_lat[district] + rng.normal(0, 0.08, n)
    lon = v.d_lon[district] + rng.normal(0, 0.08, n)
    return district, lat, lon


@dataclass(frozen=True)
class Groups:
    """Items grouped by a key (district or sector): sorted item indices + offsets per key."""

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, n_keys: int) -> "Groups":
        order = np.argsort(keys, kind="stable").astype(np.int32)
        count = np.bincount(keys, minlength=n_keys)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def draw(self, rng, keys: np.ndarray, n_items: int) -> np.ndarray:
        """One uniform item per key in `keys`; an empty group falls back to any item."""
        cnt = self.count[keys]
        r = (rng.random(keys.shape) * cnt).astype(np.int64)
        pos = np.minimum(self.start[keys] + r, len(self.order) - 1)
        fallback = rng.integers(0, n_items, size=keys.shape, dtype=np.int32)
        return np.where(cnt > 0, self.order[pos], fallback).astype(np.int32)


def list_array(idx: np.ndarray, valid: np.ndarray, values: pa.Array) -> pa.ListArray:
    """Arrow list<string> column from a padded index matrix (row-major = list order)."""
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(idx[valid])))


def bitmasks(idx: np.ndarray, valid: np.ndarray, n_words: int) -> np.ndarray:
    """(n, n_words) uint64 bitmask of the valid indices in each row."""
    out = np.zeros((idx.shape[0], n_words), dtype=np.uint64)
    safe = np.where(valid, idx, 0).astype(np.uint64)
    bits = np.where(valid, np.left_shift(np.uint64(1), safe % np.uint64(64)), np.uint64(0))
    for w in range(n_words):
        out[:, w] = np.bitwise_or.reduce(np.where(safe // np.uint64(64) == w, bits, np.uint64(0)), axis=1)
    return out


def id_array(prefix: str, start: int, n: int, width: int) -> pa.Array:
    """Ids `<prefix><number>` zero-padded to `width`, numbered from start + 1."""
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(start + 1, start + n + 1)])


def timestamps(seconds: np.ndarray) -> pa.Array:
    """Epoch seconds -> timestamp[us, tz=UTC]."""
    return pa.array(np.asarray(seconds, dtype=np.int64) * 1_000_000, type=pa.timestamp("us", tz="UTC"))
