"""What the upstream simulator says and how it counts: deterministic text and prompt-token estimates.

Counting follows Qwen3-VL closely enough for limits to bite where vLLM's would: an image costs one
token per 32x32 pixels after the processor's resize, text about one token per CJK character or per
four other characters.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any

_CJK = "\u2e80-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# every character falls in one branch, so joining the pieces gives the text back unchanged
_PIECE = re.compile(f"[{_CJK}]|\\s*[^\\s{_CJK}]+|\\s+")

# one string each reads better than a column of forty quoted words
ZH_WORDS = (  # noqa: SIM905
    "画面 笔触 色彩 光影 构图 山水 留白 墨色 人物 远景 近景 线条 质感 层次 气韵 意境 "
    "花鸟 云雾 溪流 松石 亭台 衣纹 神态 设色 皴法 晕染 明暗 空间 节奏 对比 温暖 静谧 "
    "深远 细腻 灵动 浓淡 疏密 虚实 动静 呼应"
).split()
EN_WORDS = (  # noqa: SIM905
    "the brushwork light colour composition landscape figure shadow line texture depth "
    "mood foreground distance mountain river mist pigment gesture rhythm contrast quiet "
    "warm subtle layered balance space and of with in a soft bright dark calm"
).split()

IMAGE_TOKENS_UNKNOWN = 1024 + 2  # a remote URL cannot be fetched here: cost it like a 1024x1024 image
_PATCH = 32  # one visual token per 32x32 pixels (patch 16, spatial merge 2)
_MIN_PIXELS = 65_536
_MAX_PIXELS = 16_777_216
_MESSAGE_OVERHEAD = 4  # <|im_start|>role\n ... <|im_end|>\n
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ContentError(ValueError):
    """The messages are malformed; the simulator answers 400 with this text."""


def split_tokens(text: str) -> list[str]:
    """Cuts a scripted reply into stream chunks: one CJK character or one space-led word each."""
    pieces: list[str] = _PIECE.findall(text)
    return pieces


def _sequence(words: tuple[str, ...] | list[str], chinese: bool, length: int = 4096) -> list[str]:
    rng = random.Random(len(words))
    picks = rng.choices(words, k=length)
    if chinese:
        return [("，" if i % 7 == 6 else w) for i, w in enumerate(picks)]
    return [("," if i % 9 == 8 else " " + w) for i, w in enumerate(picks)]


# drawn once: a request reads a window of it, which costs a slice instead of a random draw per token
_ZH_SEQUENCE = _sequence(ZH_WORDS, True)
_EN_SEQUENCE = _sequence(EN_WORDS, False)


def generate(seed: int, n: int, chinese: bool) -> list[str]:
    """``n`` chunks of plausible description text, the same for the same seed."""
    sequence = _ZH_SEQUENCE if chinese else _EN_SEQUENCE
    start = seed % len(sequence)
    out = sequence[start : start + n]
    while len(out) < n:
        out += sequence[: n - len(out)]
    if n and out[0] in ("，", ","):
        out[0] = sequence[start + 1]  # punctuation never falls on two neighbours
    if n and not chinese:
        out[0] = out[0].strip(" ,").capitalize() or "The"
    if n > 1 or (n and chinese):
        out[-1] = "。" if chinese else "."
    return out


def smart_resize_tokens(width: int, height: int) -> int:
    """Visual tokens of an image after Qwen3-VL's resize to multiples of 32 within its pixel bounds."""
    h = max(_PATCH, round(height / _PATCH) * _PATCH)
    w = max(_PATCH, round(width / _PATCH) * _PATCH)
    if h * w > _MAX_PIXELS:
        beta = math.sqrt(height * width / _MAX_PIXELS)
        h = max(_PATCH, math.floor(height / beta / _PATCH) * _PATCH)
        w = max(_PATCH, math.floor(width / beta / _PATCH) * _PATCH)
    elif h * w < _MIN_PIXELS:
        beta = math.sqrt(_MIN_PIXELS / (height * width))
        h = math.ceil(height * beta / _PATCH) * _PATCH
        w = math.ceil(width * beta / _PATCH) * _PATCH
    return (h // _PATCH) * (w // _PATCH) + 2  # + <|vision_start|> and <|vision_end|>


def _b64_prefix(b64: str, chars: int) -> bytes:
    chunk = b64[: chars - chars % 4]
    try:
        return binascii.a2b_base64(chunk)
    except binascii.Error:
        return b""


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_SOF:
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def image_size(b64: str) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a base64 PNG, JPEG, GIF or WebP; None if unreadable."""
    head = _b64_prefix(b64, 64)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:4] in (b"GIF8",) and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if head.startswith(b"\xff\xd8"):
        # EXIF or ICC segments can precede the frame header: look a little further, then everywhere
        for chars in (2048, 65_536, len(b64)):
            size = _jpeg_size(_b64_prefix(b64, chars))
            if size or chars >= len(b64):
                return size
    return None


def image_tokens(url: str) -> int:
    if not url.startswith("data:"):
        return IMAGE_TOKENS_UNKNOWN
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ContentError("An image data URL must look like data:image/<type>;base64,<data>.")
    size = image_size(payload)
    if size is None or 0 in size:
        # unknown format: a compressed image carries roughly 4 pixels per byte
        pixels = max(_MIN_PIXELS, len(payload) * 3)
        return min(pixels, _MAX_PIXELS) // (_PATCH * _PATCH) + 2
    return smart_resize_tokens(*size)


def _text_tokens(text: str) -> tuple[int, int]:
    cjk = len(_CJK_CHAR.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4), cjk


def _sample(text: str) -> bytes:
    """The whole of a short string; an even sample of a long one (an image's base64) for the seed."""
    step = max(1, len(text) // 4096)
    return f"{len(text)}:".encode() + text[::step].encode()


def _part_tokens(part: Any, where: str, digest: Any) -> tuple[int, int, int]:
    if not isinstance(part, dict):
        raise ContentError(f"{where} must be an object with a 'type'.")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ContentError(f"{where} of type 'text' needs a string 'text'.")
        digest.update(_sample(text))
        return (*_text_tokens(text), len(text))
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise ContentError(f"{where} of type 'image_url' needs 'image_url': {{'url': ...}}.")
        digest.update(_sample(url))
        return image_tokens(url), 0, 0
    raise ContentError(f"{where} has type {kind!r}; accepted: 'text', 'image_url'.")


@dataclass
class Prompt:
    tokens: int
    chinese: bool  # mostly Chinese text: the answer is Chinese too
    seed: int  # a digest of the messages: the same messages get the same answer


def prompt_tokens(messages: Any, model: str = "") -> Prompt:
    """Estimated prompt tokens of chat messages, with the language and a seed for the answer."""
    if not isinstance(messages, list) or not messages:
        raise ContentError("'messages' must be a non-empty list of {'role', 'content'} objects.")
    digest = hashlib.blake2b(model.encode(), digest_size=8)
    total, cjk, chars = 3, 0, 0  # + the assistant turn's opening
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ContentError(f"messages[{i}] must be an object with a string 'role'.")
        content = message.get("content")
        total += _MESSAGE_OVERHEAD
        digest.update(message["role"].encode())
        if content is None:
            continue
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ContentError(f"messages[{i}].content must be a string or a list of parts.")
        for j, part in enumerate(parts):
            tokens, c, n = _part_tokens(part, f"messages[{i}].content[{j}]", digest)
            total, cjk, chars = total + tokens, cjk + c, chars + n
    # a style prompt in Chinese asks for a Chinese answer even with some Latin words in it
    return Prompt(total, cjk > 0 and cjk * 4 >= chars, int.from_bytes(digest.digest()))
