"""Aho-Corasick over the normalized text, then the rules that keep art writing out of trouble.

One automaton holds the denied and the allowed terms. A candidate counts when:
- a Latin term stands as a whole word ("shit" is not found in "shitake" nor in "his hit");
- its letters are written as in the list or spaced out one by one ("f u c k"), not split
  at random ("who re-examined" is not "whore");
- no clause punctuation lies inside it ("颜色，情绪" is not 色情);
- no longer allowed term contains it (暖色情调, the reclining nude). An allowed term protects
  only what it strictly contains, so a museum that lists "nude" itself still catches it.
The rules run only on candidates, which clean text does not have.

The automaton is ahocorasick-rs (a DFA over UTF-16 bytes), not pyahocorasick: pyahocorasick's
trie scans a node's children one by one, and Chinese gives the root thousands of children
(measured: 2-5 ms for 1,000 characters against 10,000 terms, against ~11 us here).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick_rs

from gateway.safety.normalize import HARD_BREAKS, MASK, Normalized, is_word, normalize


@dataclass(frozen=True, slots=True)
class Entry:
    category: str  # "" for an allowed term
    term: str  # as written in the list (what a verdict reports)
    key: str  # normalized
    word_start: bool
    word_end: bool
    latin: bool
    gaps: tuple[bool, ...]  # where the listed form itself has spaces

    @property
    def allowed(self) -> bool:
        return not self.category


def make_entry(term: str, category: str, *, report_as: str | None = None, exact: bool = False) -> Entry | None:
    """``exact``: found anywhere, whatever surrounds it (the canary)."""
    norm = normalize(term)
    key = norm.text.replace(MASK, "")
    if not key:
        return None
    latin = all(is_word(c) for c in key)
    return Entry(
        category=category,
        term=report_as if report_as is not None else term.strip(),
        key=key,
        word_start=not exact and is_word(key[0]),
        word_end=not exact and is_word(key[-1]),
        latin=latin and not exact,
        gaps=tuple(b - a > 1 for a, b in itertools.pairwise(norm.src)) if len(norm.src) == len(key) else (),
    )


@dataclass(frozen=True, slots=True)
class Hit:
    category: str
    term: str
    start: int  # original text, start inclusive
    end: int  # original text, end exclusive


class Matcher:
    def __init__(self, entries: Iterable[Entry]) -> None:
        by_key: dict[str, list[Entry]] = {}
        for e in entries:
            same = by_key.setdefault(e.key, [])
            if all((x.category, x.term) != (e.category, e.term) for x in same):
                same.append(e)
        self.groups = [tuple(g) for g in by_key.values()]
        self.automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                [k.encode("utf-16-le") for k in by_key],
                matchkind=ahocorasick_rs.MatchKind.Standard,
                implementation=ahocorasick_rs.Implementation.DFA,
            )
            if by_key
            else None
        )
        self.size = len(by_key)
        self.longest = max((len(k) for k in by_key), default=0)

    def find(self, raw: str, norm: Normalized) -> list[Hit]:
        """Denied terms in ``raw`` (whose normalized form is ``norm``), in order of position."""
        return self.find_covered(raw, norm)[0]

    def find_covered(self, raw: str, norm: Normalized) -> tuple[list[Hit], bool]:
        """Also says whether an allowed term covered a denied one."""
        if self.automaton is None or not norm.data:
            return [], False
        candidates = self.automaton.find_matches_as_indexes(norm.data, overlapping=True)
        if not candidates:
            return [], False
        allowed: list[tuple[int, int]] = []
        denied: list[tuple[int, int, Entry]] = []
        for index, byte_start, _ in candidates:
            if byte_start % 2:  # straddles two UTF-16 code units: not a match of characters
                continue
            start = norm.char_index(byte_start)
            for e in self.groups[index]:
                end = start + len(e.key) - 1
                if self._counts(e, start, end, raw, norm):
                    if e.allowed:
                        allowed.append((start, end))
                    else:
                        denied.append((start, end, e))
        src = norm.src
        hits = [
            Hit(e.category, e.term, src[s], src[t] + 1)
            for s, t, e in denied
            if not any(a <= s and t <= b and b - a > t - s for a, b in allowed)
        ]
        hits.sort(key=lambda h: (h.start, h.end))
        return hits, len(hits) < len(denied)

    @staticmethod
    def _counts(e: Entry, s: int, t: int, raw: str, norm: Normalized) -> bool:
        text, src = norm.text, norm.src
        # a neighbour in the same or the adjacent original character means no word boundary
        if e.word_start and s > 0 and is_word(text[s - 1]) and src[s] - src[s - 1] <= 1:
            return False
        if e.word_end and t + 1 < len(text) and is_word(text[t + 1]) and src[t + 1] - src[t] <= 1:
            return False
        spaced = tuple(src[k + 1] - src[k] > 1 for k in range(s, t))
        if not any(spaced):
            return True
        if any(ch in HARD_BREAKS for ch in raw[src[s] : src[t] + 1]):
            return False
        return not e.latin or spaced == e.gaps or all(spaced)
