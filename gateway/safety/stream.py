"""The word filter on a token stream.

Text is held back until ``window`` (the longest term, in normalized characters) more
characters have arrived: by then any term that starts in the released part is complete, its
word boundary is known, and no allowed term still to come can cover it. So a term split over
chunks is caught, and the added delay is that window and no more. Already released context
is kept (two windows) so terms that straddle the release point are masked on both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.safety.matcher import Hit
from gateway.safety.normalize import MASK, normalize
from gateway.safety.verdict import Verdict, build_verdict

if TYPE_CHECKING:
    from gateway.safety.filter import SafetyFilter


class StreamFilter:
    def __init__(self, safety: SafetyFilter, language: str = "zh", *, retried: bool = False) -> None:
        self._safety = safety
        self._language = "zh" if language.lower().startswith("zh") else "en"
        self._retried = retried
        self._raw = ""  # released context plus held text, original characters
        self._released = 0  # index in _raw of the first character not yet released
        self._found: list[Hit] = []
        self._parts: list[str] = []  # what was released
        self._stopped = False
        self._withheld = False

    @property
    def verdict(self) -> Verdict:
        """The verdict so far; once it withholds the text, the caller ends the stream."""
        text = "" if self._withheld else "".join(self._parts)
        return build_verdict(self._found, text, self._safety.action_of, self._language, self._retried)

    @property
    def held(self) -> str:
        """Text received but not yet released."""
        return self._raw[self._released :]

    @property
    def stopped(self) -> bool:
        """True once the verdict withholds the text: the caller ends the stream with the fallback."""
        return self._stopped

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that is safe to emit now (maybe "")."""
        if self._stopped or not chunk:
            return ""
        self._raw += chunk
        return self._advance(final=False)

    def finish(self) -> str:
        """The stream has ended: release (or withhold) the rest."""
        if self._stopped:
            return ""
        out = self._advance(final=True)
        self._stopped = True
        return out

    def _advance(self, final: bool) -> str:
        raw = self._raw
        norm = normalize(raw)
        n, window = len(norm), self._safety.window
        if final:
            cut = len(raw)
        elif n > window:
            cut = norm.src_at(n - window)
        else:
            return ""
        if cut <= self._released and not final:
            return ""
        # a hit starting before the cut is final; one wholly before the release point was done earlier
        hits = [h for h in self._safety.matcher.find(raw, norm) if h.start < cut and h.end > self._released]
        self._found.extend(hits)
        action_of = self._safety.action_of
        if any(action_of(h.category) in ("block", "regenerate") for h in hits):
            self._stopped = self._withheld = True
            return ""
        out = raw[self._released : cut]
        masks = [h for h in hits if action_of(h.category) == "mask"]
        if masks:
            segment = list(out)
            for h in masks:
                lo, hi = max(h.start, self._released), min(h.end, cut)
                segment[lo - self._released : hi - self._released] = MASK * (hi - lo)
            out = "".join(segment)
        self._parts.append(out)
        self._released = cut
        if not final and n > 2 * window:
            keep = norm.src_at(n - 2 * window)
            self._raw = raw[keep:]
            self._released -= keep
        return out
