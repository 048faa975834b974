"""Reading the ``finetune`` export (and files shaped like it), with every problem found up front.

One JSON object per line: ``{"messages": [system?, user, assistant], "huayu": {...}?}``. The
user turn holds exactly one image, as the gateway sends it: an ``image_url`` part whose URL is
a ``data:image/...;base64,`` URL or a file path (relative paths are read next to the JSONL
file; ``file://`` URLs work too); ``{"type": "image", "image": PATH}`` parts are accepted as
well. The assistant turn is the approved text the model should learn to write.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from serving.finetune.errors import FinetuneError

MIN_SIDE = 16  # Qwen3-VL's resize works down to a patch; smaller is not an artwork photo
MAX_ASPECT = 200  # Qwen's smart_resize refuses images more elongated than this


@dataclass(frozen=True)
class Example:
    line: int
    system: str | None
    parts: tuple[tuple[str, str], ...]  # the user turn in order: ("image", "") or ("text", text)
    image: bytes | Path  # the encoded image, or the file that holds it
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def image_bytes(self) -> bytes:
        return self.image.read_bytes() if isinstance(self.image, Path) else self.image

    def chat(self) -> list[dict[str, Any]]:
        """The prompt turns for the chat template; the image is a placeholder the processor fills."""
        content = [
            {"type": "image"} if kind == "image" else {"type": "text", "text": text} for kind, text in self.parts
        ]
        turns: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        return [*turns, {"role": "user", "content": content}]


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    return None


def _image_ref(part: dict[str, Any]) -> str | None:
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return url if isinstance(url, str) else None
    if part.get("type") == "image":
        ref = part.get("image")
        return ref if isinstance(ref, str) else None
    return None


def _load_image(ref: str, base_dir: Path) -> tuple[bytes | Path | None, str | None]:
    """(image, problem): the bytes of a data URL or the path of a file, checked to decode."""
    image: bytes | Path
    if ref.startswith("data:"):
        head, sep, payload = ref.partition(",")
        if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
            return None, "the image data URL is not data:image/...;base64,..."
        try:
            image = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None, "the image data URL holds invalid base64"
        data = image
    elif ref.startswith(("http://", "https://")):
        return None, f"image {ref[:80]!r} is a web URL; download it and give a file path or a data URL"
    else:
        path = Path(urllib.parse.unquote(ref[7:])) if ref.startswith("file://") else Path(ref)
        image = path if path.is_absolute() else base_dir / path
        if not image.is_file():
            return None, f"image file {ref!r} does not exist (looked for {image})"
        try:
            data = image.read_bytes()
        except OSError as exc:
            return None, f"image file {ref!r} cannot be read ({exc.strerror})"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (256, 256))  # JPEG decodes at a fraction of its size: a check, not a use
            im.load()
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"the image does not decode as an image ({type(exc).__name__}: {str(exc)[:120]})"
    if min(w, h) < MIN_SIDE or max(w, h) / min(w, h) > MAX_ASPECT:
        return None, f"the image is {w}x{h}; sides must be >= {MIN_SIDE} px and at most {MAX_ASPECT}:1"
    return image, None


def parse_record(obj: Any, base_dir: Path) -> tuple[Example | None, list[str]]:
    """One record checked; ``line`` is filled in by the caller."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return None, ['a record must be a JSON object with a "messages" list']
    messages = obj["messages"]
    if not all(isinstance(m, dict) for m in messages):
        return None, ["every message must be an object with a role and content"]
    roles = [m.get("role") for m in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        return None, [f"expected the turns [system,] user, assistant; got {roles}"]
    problems: list[str] = []
    system = _text_of(messages[0]["content"]) if roles[0] == "system" else None
    if roles[0] == "system" and system is None:
        problems.append("the system turn has no text")
    user = messages[-2].get("content")
    parts: list[tuple[str, str]] = []
    refs: list[str] = []
    if isinstance(user, list):
        for p in user:
            if not isinstance(p, dict):
                continue
            ref = _image_ref(p)
            if ref is not None:
                refs.append(ref)
                parts.append(("image", ""))
            elif p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(("text", p["text"]))
    elif isinstance(user, str):
        parts.append(("text", user))
    if not refs:
        problems.append("the user turn has no image (an image_url part with a data URL or a file path)")
    elif len(refs) > 1:
        problems.append(f"the user turn has {len(refs)} images; the model is served with one image per prompt")
    answer = _text_of(messages[-1].get("content"))
    if answer is None or not answer.strip():
        problems.append("the assistant turn (the text to learn) is missing or empty")
    image: bytes | Path | None = None
    if len(refs) == 1:
        image, problem = _load_image(refs[0], base_dir)
        if problem:
            problems.append(problem)
    if problems or image is None or answer is None:
        return None, problems
    meta: dict[str, Any] = obj["huayu"] if isinstance(obj.get("huayu"), dict) else {}
    return Example(0, system, tuple(parts), image, answer.strip(), meta), []


def read_examples(path: Path) -> list[Example]:
    """Every record of ``path``; FinetuneError with one line per problem (``line N: ...``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FinetuneError.of([f"data {path}: no such file"], param="data") from None
    except IsADirectoryError:
        raise FinetuneError.of([f"data {path}: is a folder; give the JSONL file"], param="data") from None
    except OSError as exc:
        raise FinetuneError.of([f"data {path}: cannot be read ({exc.strerror})"], param="data") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FinetuneError.of([f"data {path}: not UTF-8 text (byte {exc.start})"], param="data") from None
    examples: list[Example] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        ex, found = parse_record(obj, path.parent)
        problems += [f"line {n}: {p}" for p in found]
        if ex is not None:
            examples.append(Example(n, ex.system, ex.parts, ex.image, ex.answer, ex.meta))
    if not examples and not problems:
        problems.append(f"data {path}: no records (the file is empty); export some with GET /v1/export?format=finetune")
    if problems:
        raise FinetuneError.of(problems, param="data")
    return examples


def split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval): a seeded shuffle; at least one of each when there are two records or more."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * fraction) if fraction > 0 else 0
    if fraction > 0 and len(order) >= 2:
        n_eval = min(max(n_eval, 1), len(order) - 1)
    n_eval = min(n_eval, len(order) - 1)
    return order[n_eval:], order[:n_eval]


def summary(examples: Sequence[Example]) -> dict[str, Any]:
    styles = Counter(str(e.meta.get("style") or "-") for e in examples)
    languages = Counter(str(e.meta.get("language") or "-") for e in examples)
    chars = [len(e.answer) for e in examples]
    return {
        "records": len(examples),
        "styles": dict(styles.most_common()),
        "languages": dict(languages.most_common()),
        "edited": sum(1 for e in examples if e.meta.get("edited")),
        "answer_chars": {"min": min(chars), "mean": round(sum(chars) / len(chars), 1), "max": max(chars)},
    }
