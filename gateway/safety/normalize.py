"""What the matcher sees: one normalized form of a text, with a map back to the original.

Every character is normalized on its own (compatibility decomposition, marks dropped, case
folded, traditional to simplified Chinese), and spaces, punctuation, symbols and invisible
characters are dropped, so "傻 逼", "ＦＵＣＫ" and "f.u.c.k" meet the same term. Because the
rule is per character, terms and texts normalize identically and every normalized character
comes from exactly one original character: masking can replace the right original span.

Per-character conversion loses OpenCC's phrase context; that is harmless here since the word
lists go through the same conversion.
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache

import numpy as np
import numpy.typing as npt
import opencc

MASK = "＊"
# Clause punctuation ends a match: "颜色，情绪" must not read as 色情. Evasions rarely use it.
HARD_BREAKS = frozenset("。，、；：！？,;:!?\n\r\u2028\u2029")

# the fast path looks every UTF-16 code unit up in one table; these two values are never the
# result of a real character (U+0000 and the noncharacter U+FFFF are dropped themselves)
_DROPPED = 0
# several characters out, or half of a surrogate pair: the loop. The largest value, so that
# one max() finds it.
_COMPLEX = 0xFFFF
_BMP = 0x10000
_HANGUL = range(0xAC00, 0xD7A4)  # syllables stay whole: decomposing them into jamo gains nothing


def _dropped(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "ZPSCM"


@cache
def _converter() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


@cache
def _t2s_bmp() -> dict[str, str]:
    """Single-character t2s for the whole BMP in one OpenCC call (about 30 ms, once)."""
    chars = [chr(i) for i in range(_BMP) if unicodedata.category(chr(i))[0] in "LN"]
    converted = _converter().convert("\n".join(chars)).split("\n")
    if len(converted) != len(chars):  # never seen; keeps the table right if OpenCC changes
        converted = [_converter().convert(c) for c in chars]
    return {a: b for a, b in zip(chars, converted, strict=True) if a != b}


def _t2s(ch: str) -> str:
    if ord(ch) < _BMP:
        return _t2s_bmp().get(ch, ch)
    return str(_converter().convert(ch))


def _norm_char_uncached(ch: str) -> str:
    if ch == MASK:
        return MASK  # a mask is a barrier, so a masked text never matches again across it
    decomposed = ch if ord(ch) in _HANGUL else unicodedata.normalize("NFKD", ch)
    out = []
    for part in decomposed:
        for folded in part.casefold():
            if not _dropped(folded):
                out.append(_t2s(folded))
    return "".join(out)


@lru_cache(maxsize=65536)
def norm_char(ch: str) -> str:
    return _norm_char_uncached(ch)


@cache
def _lut() -> npt.NDArray[np.uint16]:
    lut = np.full(_BMP, _COMPLEX, dtype=np.uint16)
    for i in range(_BMP):
        if not 0xD800 <= i < 0xE000:
            n = _norm_char_uncached(chr(i))
            lut[i] = _DROPPED if not n else ord(n) if len(n) == 1 and ord(n) < _BMP else _COMPLEX
    lut.setflags(write=False)
    return lut


@cache
def _lut_str() -> list[str | None]:
    """The same table for the loop: the character's form, or None where it has several."""
    return [None if v == _COMPLEX else "" if v == _DROPPED else chr(v) for v in _lut().tolist()]


def warm_up() -> None:
    """Build the tables now (about 0.3 s) rather than on the first text."""
    _lut_str()
    _table()


class Normalized:
    """What the matcher sees, as UTF-16-LE ``data`` (the automaton's input) and as ``text``.

    ``src[i]`` is the original index of ``text[i]``. Both are built on demand where they cost
    something: only a text with a candidate hit needs them. Every path below gives the same
    result as the loop.
    """

    __slots__ = ("_mapped", "_raw", "_src", "_text", "data")

    def __init__(
        self,
        data: bytes,
        text: str | None = None,
        *,
        raw: str = "",
        mapped: npt.NDArray[np.uint16] | None = None,
        src: list[int] | None = None,
    ) -> None:
        self.data = data
        self._text = text
        self._raw = raw
        self._mapped = mapped
        self._src = src

    def __len__(self) -> int:
        return len(self._text) if self._text is not None else len(self.data) // 2  # no pairs there

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode("utf-16-le")
        return self._text

    @property
    def src(self) -> list[int]:
        if self._src is None:
            if self._mapped is not None:
                self._src = np.flatnonzero(self._mapped != _DROPPED).tolist()
            else:  # every character of ``_raw`` gave one or none
                table = _table()
                self._src = [i for i, ch in enumerate(self._raw) if table[ord(ch)]]
        return self._src

    def src_at(self, i: int) -> int:
        """``src[i]``, for ``0 <= i < len(self)``. On the table path it is found by counting kept
        characters back from the end, without the whole map: a stream's filter asks only for the
        position a window short of the end, after every chunk."""
        if self._src is None and self._mapped is None and self._raw:
            table, raw = _table(), self._raw
            k, j = len(self) - i, len(raw)  # the k-th character kept, counted from the end
            while k:
                j -= 1
                if table[ord(raw[j])]:
                    k -= 1
            return j
        return self.src[i]

    def char_index(self, byte_offset: int) -> int:
        """The index in ``text`` of the character at ``byte_offset`` in ``data``."""
        if self._raw or self._mapped is not None:  # the table paths have no surrogate pairs
            return byte_offset // 2
        return len(self.data[:byte_offset].decode("utf-16-le"))


@cache
def _ascii_table() -> dict[int, str | None]:
    return {i: _norm_char_uncached(chr(i)) or None for i in range(128)}


@cache
def _table() -> list[str]:
    """The same table for ``str.translate``: the character's one form, "" where it is dropped, and
    U+FFFF (never a form: it is dropped itself) where it has several or is half of a pair."""
    return ["\uffff" if v == _COMPLEX else "" if v == _DROPPED else chr(v) for v in _lut().tolist()]


_SHORT = 128  # below this many characters str.translate beats numpy's cost per call


def normalize(text: str) -> Normalized:
    if text.isascii():  # str.translate has a fast path for ASCII: about 4 us for 1,000 characters
        out = text.translate(_ascii_table())
        return Normalized(out.encode("utf-16-le"), out, raw=text)
    if len(text) < _SHORT:
        # a character past the BMP is past the table's end: translate leaves it as it is, and then
        # the UTF-16 is longer than two bytes a character; it, and any "several", take the loop
        out = text.translate(_table())
        if "\uffff" not in out:
            data = out.encode("utf-16-le")
            if len(data) == 2 * len(out):
                return Normalized(data, out, raw=text)
        return _normalize_loop(text)
    # a few vectorized steps instead of a Python loop: about 20 us for 1,000 characters
    mapped = _lut().take(np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype=np.uint16))
    if mapped.max() == _COMPLEX:
        return _normalize_loop(text)
    return Normalized(mapped[mapped != _DROPPED].tobytes(), mapped=mapped)


def _normalize_loop(text: str) -> Normalized:
    """Short texts, and those with emoji, ligatures or the like: one character at a time."""
    table = _lut_str()
    parts: list[str] = []
    src: list[int] = []
    for i, ch in enumerate(text):
        code = ord(ch)
        n = table[code] if code < _BMP else None
        if n is None:
            n = "" if 0xD800 <= code < 0xE000 else norm_char(ch)
        if n:
            parts.append(n)
            if len(n) == 1:
                src.append(i)
            else:
                src.extend([i] * len(n))
    out = "".join(parts)
    return Normalized(out.encode("utf-16-le"), out, src=src)


def is_word(ch: str) -> bool:
    """Letters and digits of scripts that separate words with spaces (so need word boundaries)."""
    return ord(ch) < 0x2E80 and ch.isalnum()
