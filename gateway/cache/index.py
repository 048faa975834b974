"""Near-duplicate lookup of 64-bit hashes without scanning: multi-index hashing.

The hash is cut into four 16-bit bands. Two hashes within Hamming distance D = 4r + a (0 <= a < 4)
differ in at most r bits on one of the first a + 1 bands, or in at most r - 1 on one of the others
(else they would differ in more than D bits). So a query visits only the buckets within that
radius of its own band values: for D = 10, 3 x 137 + 17 = 428 buckets, some 6,500 entries among a
million, whatever the number of entries.

Every band's buckets live in one flat array ordered by (band, band value) with one offsets table,
so a query is a dozen vectorized numpy steps with no loop per band or per bucket. New entries go
to a short list that queries scan linearly; when it is full it is merged into the flat arrays (a
copy, not a re-sort), so adding never stalls on sorting a million entries. A removed slot is only
marked dead, and is handed out again after the next merge has dropped its records: a stale record
never names a live slot.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

BANDS = 4
BAND_BITS = 16
_BAND_MASK = (1 << BAND_BITS) - 1
_KEYS = BANDS << BAND_BITS  # a key is (band << 16) | band value
_SHIFTS = np.arange(BANDS, dtype=np.uint64) * np.uint64(BAND_BITS)
_BAND_KEY = np.arange(BANDS, dtype=np.uint64) << np.uint64(BAND_BITS)
PENDING_MAX = 8192  # entries a query scans linearly before they are merged (~10 us)


def radii(max_distance: int) -> list[int]:
    """Per band, the band distance to probe (-1: the band is not probed)."""
    r, a = divmod(max(max_distance, 0), BANDS)
    return [r if b <= a else r - 1 for b in range(BANDS)]


def flip_masks(radius: int, bits: int = BAND_BITS) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` bits set."""
    masks = [0] if radius >= 0 else []
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in c) for c in combinations(range(bits), r)]
    return np.array(masks, dtype=np.int32)


def _band_values(hashes: np.ndarray) -> np.ndarray:
    """(BANDS, n) uint16: each hash's value in each band, one row per band."""
    values: np.ndarray = ((hashes[None, :] >> _SHIFTS[:, None]) & np.uint64(_BAND_MASK)).astype(np.uint16)
    return values


def _spliced(a: np.ndarray, old: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty(len(old), dtype=a.dtype)
    out[old] = a
    out[at] = values
    return out


class NearIndex:
    """64-bit hashes, each in a slot (a small non-negative int) that ``add`` hands out."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max(max_distance, 0)
        probes = [(b << BAND_BITS) | flip_masks(r) for b, r in enumerate(radii(self.max_distance))]
        self._probes = np.concatenate(probes).astype(np.int32)
        self._probe_band = np.repeat(np.arange(BANDS), [len(p) for p in probes])
        self._hashes = np.zeros(64, dtype=np.uint64)  # per slot
        self._alive = np.zeros(64, dtype=bool)
        self._size = 0
        self._next = 0  # slots below have been handed out
        self._free: list[int] = []
        self._dead: list[int] = []  # removed, their records not yet dropped
        self._offsets: np.ndarray | None = None  # _KEYS + 1 positions in _rec_*, int32
        self._rec_h = np.zeros(0, dtype=np.uint64)  # BANDS records per merged entry, ordered by key
        self._rec_slot = np.zeros(0, dtype=np.int32)
        self._pend_h = np.zeros(64, dtype=np.uint64)
        self._pend_slot = np.zeros(64, dtype=np.int32)
        self._pending = 0

    def __len__(self) -> int:
        return self._size

    def hash_of(self, slot: int) -> int:
        return int(self._hashes[slot])

    def add(self, h: int) -> int:
        slot = self._free.pop() if self._free else int(self._new_slots(1)[0])
        self._hashes[slot] = h
        self._alive[slot] = True
        self._size += 1
        self._room(1)
        self._pend_h[self._pending] = h
        self._pend_slot[self._pending] = slot
        self._pending += 1
        if self._pending >= PENDING_MAX:
            self._merge()
        return slot

    def add_many(self, hashes: np.ndarray) -> np.ndarray:
        """Slots of ``hashes`` (uint64), in their order: the way to load many at once."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        reuse = min(len(self._free), len(hashes))
        slots = np.array(self._free[len(self._free) - reuse :], dtype=np.int64)
        del self._free[len(self._free) - reuse :]
        slots = np.concatenate([slots, self._new_slots(len(hashes) - reuse)])
        self._hashes[slots] = hashes
        self._alive[slots] = True
        self._size += len(slots)
        if self._pending + len(slots) >= PENDING_MAX:
            self._merge(hashes, slots.astype(np.int32))
        else:
            self._room(len(slots))
            self._pend_h[self._pending : self._pending + len(slots)] = hashes
            self._pend_slot[self._pending : self._pending + len(slots)] = slots
            self._pending += len(slots)
        return slots

    def remove(self, slot: int) -> None:
        if 0 <= slot < self._next and self._alive[slot]:
            self._alive[slot] = False
            self._size -= 1
            self._dead.append(slot)
            self._reclaim()

    def remove_many(self, slots: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        slots = np.unique(slots[(slots >= 0) & (slots < self._next)])
        slots = slots[self._alive[slots]]
        self._alive[slots] = False
        self._size -= len(slots)
        self._dead += slots.tolist()
        self._reclaim()

    def _reclaim(self) -> None:
        if len(self._dead) > max(PENDING_MAX, self._size):  # mostly dead: drop them now
            self._merge()

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._alive[: self._next])

    def _room(self, n: int) -> None:
        if self._pending + n > len(self._pend_h):
            size = max(self._pending + n, 2 * len(self._pend_h))
            self._pend_h, self._pend_slot = np.resize(self._pend_h, size), np.resize(self._pend_slot, size)

    def _new_slots(self, n: int) -> np.ndarray:
        if self._next + n > len(self._hashes):
            cap = max(self._next + n, 2 * len(self._hashes))
            self._hashes = np.concatenate([self._hashes, np.zeros(cap - len(self._hashes), np.uint64)])
            self._alive = np.concatenate([self._alive, np.zeros(cap - len(self._alive), bool)])
        self._next += n
        return np.arange(self._next - n, self._next, dtype=np.int64)

    def _merge(self, extra_h: np.ndarray | None = None, extra_slot: np.ndarray | None = None) -> None:
        new_h, new_slot = self._pend_h[: self._pending], self._pend_slot[: self._pending]
        if extra_h is not None and extra_slot is not None:
            new_h, new_slot = np.concatenate([new_h, extra_h]), np.concatenate([new_slot, extra_slot])
        live = self._alive[new_slot]
        new_h, new_slot = new_h[live], new_slot[live]
        offsets = self._offsets
        if offsets is None:
            offsets = np.zeros(_KEYS + 1, dtype=np.int32)
        if self._dead:
            keep = self._alive[self._rec_slot]
            if not keep.all():
                before = np.zeros(len(keep) + 1, dtype=np.int32)
                np.cumsum(keep, out=before[1:])
                offsets = before[offsets]  # each bucket now starts after the survivors before it
                self._rec_h, self._rec_slot = self._rec_h[keep], self._rec_slot[keep]
        if len(new_h):
            values = _band_values(new_h)
            # band by band, so that each sort is of 16-bit values: a radix sort, not a comparison sort
            order = np.concatenate([np.argsort(v, kind="stable") for v in values])
            keys = (values.astype(np.int32) | _BAND_KEY[:, None].astype(np.int32)).ravel()
            rows = np.repeat(np.arange(BANDS) * len(new_h), len(new_h))
            keys = keys[order + rows]
            # at each bucket's end, after what is there
            at = offsets[keys + 1]
            at += np.arange(len(at), dtype=np.int32)  # where they land once those before are in
            old = np.ones(len(self._rec_h) + len(at), dtype=bool)
            old[at] = False
            self._rec_h = _spliced(self._rec_h, old, at, new_h[order])
            self._rec_slot = _spliced(self._rec_slot, old, at, new_slot[order])
            offsets[1:] += np.cumsum(np.bincount(keys, minlength=_KEYS), dtype=np.int32)
        self._offsets = offsets
        self._pending = 0
        self._free.extend(self._dead)
        self._dead = []

    def query(self, h: int, max_distance: int | None = None) -> list[tuple[int, int]]:
        """(distance, slot) of every entry within ``max_distance``, nearest first."""
        limit = self.max_distance if max_distance is None else min(max_distance, self.max_distance)
        q = np.uint64(h)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        if self._pending:
            d = np.bitwise_count(self._pend_h[: self._pending] ^ q)
            near = np.flatnonzero(d <= limit)
            found.append((self._pend_slot[near], d[near]))
        offsets = self._offsets
        if offsets is not None and len(self._rec_h):
            values = np.array([(h >> (BAND_BITS * b)) & _BAND_MASK for b in range(BANDS)], dtype=np.int32)
            keys = self._probes ^ values[self._probe_band]
            starts = offsets[keys]
            lens = offsets[keys + 1] - starts
            ends = np.cumsum(lens, dtype=np.int32)
            if total := int(ends[-1]):
                # all the buckets' [start, start + len) ranges at once
                idx = np.arange(total, dtype=np.int32) + np.repeat(starts - (ends - lens), lens)
                d = np.bitwise_count(self._rec_h[idx] ^ q)
                within = d <= limit
                found.append((self._rec_slot[idx[within]], d[within]))
        slots = np.concatenate([s for s, _ in found]) if found else np.zeros(0, np.int32)
        if not len(slots):
            return []
        dist = np.concatenate([d for _, d in found])
        live = self._alive[slots]
        # an entry close in several bands is found in each: once is enough
        slots, first = np.unique(slots[live], return_index=True)
        dist = dist[live][first]
        order = np.argsort(dist, kind="stable")
        return list(zip(dist[order].tolist(), slots[order].tolist(), strict=True))
