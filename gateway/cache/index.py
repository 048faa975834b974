"""Near-duplicate lookup of 64-bit hashes without scanning: multi-index hashing.

The hash is cut into four 16-bit bands. Two hashes within Hamming distance D agree to within
D // 4 bits on at least one band (pigeonhole), so a query only visits the buckets whose band value
lies within that radius of its own: 4 x 137 buckets for D <= 11, whatever the number of entries.

Buckets live in flat sorted arrays (one offsets table per band), so a query is a handful of
vectorized numpy steps rather than hundreds of Python lookups. New entries go to a small dict
until it reaches an eighth of the whole, then everything is re-sorted (amortized O(log n) per add);
removal is a tombstone until that re-sort.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

BANDS = 4
BAND_BITS = 16
_BAND_MASK = (1 << BAND_BITS) - 1
_SHIFTS = np.array([BAND_BITS * b for b in range(BANDS)], dtype=np.uint64)


def band_values(h: int) -> list[int]:
    return [(h >> (BAND_BITS * b)) & _BAND_MASK for b in range(BANDS)]


def flip_masks(radius: int) -> np.ndarray:
    """Every 16-bit mask with at most ``radius`` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in bits) for bits in combinations(range(BAND_BITS), r)]
    return np.array(masks, dtype=np.int64)


class NearIndex:
    """Slots (small non-negative ints chosen by the caller) keyed by their hash."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self._masks = flip_masks(max(max_distance, 0) // BANDS)
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._alive = np.zeros(1024, dtype=bool)
        self._size = 0
        self._offsets: list[np.ndarray] = []  # per band: 65537 offsets into _order
        self._order: list[np.ndarray] = []  # per band: slots sorted by band value
        self._order_h: list[np.ndarray] = []  # their hashes, in the same order: read in runs, not gathered
        self._sorted = 0
        self._delta: list[dict[int, list[int]]] = [{} for _ in range(BANDS)]
        self._delta_size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, slot: int, h: int) -> None:
        if slot >= len(self._hashes):
            cap = max(slot + 1, 2 * len(self._hashes))
            self._hashes = np.concatenate([self._hashes, np.zeros(cap - len(self._hashes), np.uint64)])
            self._alive = np.concatenate([self._alive, np.zeros(cap - len(self._alive), bool)])
        if self._alive[slot]:
            raise ValueError(f"slot {slot} is in use")
        self._hashes[slot] = h
        self._alive[slot] = True
        self._size += 1
        for band, v in zip(self._delta, band_values(h), strict=True):
            band.setdefault(v, []).append(slot)
        self._delta_size += 1
        if self._delta_size > max(4096, self._sorted // 8):
            self._rebuild()

    def remove(self, slot: int, h: int) -> None:
        if slot >= len(self._alive) or not self._alive[slot]:
            return
        self._alive[slot] = False
        self._size -= 1
        for band, v in zip(self._delta, band_values(h), strict=True):
            lst = band.get(v)
            if lst is not None and slot in lst:
                lst.remove(slot)
                if not lst:
                    del band[v]

    def _rebuild(self) -> None:
        slots = np.flatnonzero(self._alive).astype(np.int64)
        vals = ((self._hashes[slots][None, :] >> _SHIFTS[:, None]) & np.uint64(_BAND_MASK)).astype(np.int64)
        self._order, self._order_h, self._offsets = [], [], []
        for b in range(BANDS):
            order = np.argsort(vals[b], kind="stable")
            self._order.append(slots[order])
            self._order_h.append(self._hashes[slots[order]])
            counts = np.bincount(vals[b], minlength=1 << BAND_BITS)
            self._offsets.append(np.concatenate([[0], np.cumsum(counts)]))
        self._sorted = len(slots)
        self._delta = [{} for _ in range(BANDS)]
        self._delta_size = 0

    def query(self, h: int, max_distance: int | None = None) -> list[tuple[int, int]]:
        """(distance, slot) of every entry within ``max_distance``, nearest first."""
        limit = self.max_distance if max_distance is None else min(max_distance, self.max_distance)
        q = np.uint64(h)
        found: list[np.ndarray] = []
        extra: list[int] = []
        for b, v in enumerate(band_values(h)):
            keys = self._masks ^ v
            if self._offsets:
                offs = self._offsets[b]
                starts, lens = offs[keys], offs[keys + 1] - offs[keys]
                total = int(lens.sum())
                if total:
                    # all [start, start + len) ranges at once
                    idx = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
                    near = np.bitwise_count(self._order_h[b][idx] ^ q) <= limit
                    found.append(self._order[b][idx[near]])
            delta = self._delta[b]
            if delta:
                for key in keys.tolist():
                    lst = delta.get(key)
                    if lst:
                        extra.extend(lst)
        if extra:
            found.append(np.array(extra, dtype=np.int64))
        if not found:
            return []
        slots = np.unique(np.concatenate(found))  # a slot may sit in several bands' buckets
        # a slot re-used since the last re-sort is listed under its old hash too: check the live one
        dist = np.bitwise_count(self._hashes[slots] ^ q).astype(np.int64)
        keep = (dist <= limit) & self._alive[slots]
        slots, dist = slots[keep], dist[keep]
        order = np.argsort(dist, kind="stable")
        return list(zip(dist[order].tolist(), slots[order].tolist(), strict=True))
