"""Helpers for servers that answer over a bundle's internship ids."""

from __future__ import annotations

from itertools import compress, repeat

import numpy as np

from models.pipeline import open_items


def look_up(position: dict, ids) -> np.ndarray:
    """`position[id]` for each of `ids`, in order, as int64; -1 for an id `position` lacks."""
    return np.fromiter(map(position.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))


class ItemIndex:
    """internship id <-> position in a bundle's arrays."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        # The ids as Python strings: an answer lists them without converting each one.
        self.names = self.ids.astype(object)
        self.position = {str(i): p for p, i in enumerate(self.ids.tolist())}

    def lookup(self, ids) -> np.ndarray:
        """Position of each id in request order, -1 for an id this bundle does not know."""
        return look_up(self.position, ids)

    def positions(self, ids) -> tuple[np.ndarray, list[str]]:
        """Positions of the known ids (in request order) and the ids this bundle does not know."""
        found = self.lookup(ids)
        unknown = found < 0
        return found[~unknown], list(compress(ids, unknown.tolist()))

    def mask_of(self, ids) -> np.ndarray:
        mask = np.zeros(len(self.ids), dtype=bool)
        pos, _ = self.positions(ids)
        mask[pos] = True
        return mask


def excluded(index: ItemIndex, ids, deadline: np.ndarray | None, open_at: int) -> np.ndarray | None:
    """What a retrieval must skip, as a mask over the bundle's internships: `ids` (those the
    student has seen) and, when `open_at` is set, those closed then; None when nothing is."""
    mask = index.mask_of(ids) if ids else None
    if open_at and deadline is not None:
        closed = ~open_items(deadline, open_at)
        mask = closed if mask is None else mask | closed
    return mask
