"""Prompt styles: data files (TOML) that set the voice of a description.

A style has titles, a system prompt and a user template per language, sampling defaults and
an optional LoRA adapter. Its version is a hash of its content, returned with every result,
so a stored description always says which prompt wrote it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest

LANGUAGES = ("zh", "en")
METADATA_FIELDS = ("title", "artist", "year", "medium", "dimensions", "collection")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")

_META_LABELS = {
    "zh": {
        "title": "标题",
        "artist": "作者",
        "year": "年代",
        "medium": "材质",
        "dimensions": "尺寸",
        "collection": "收藏",
    },
    "en": {
        "title": "Title",
        "artist": "Artist",
        "year": "Date",
        "medium": "Medium",
        "dimensions": "Dimensions",
        "collection": "Collection",
    },
}
_META_HEADER = {
    "zh": "馆方提供的作品信息（以此为准，不要臆造其他事实）：",
    "en": "Catalogue information from the museum (treat it as fact; invent no other facts):",
}
_NO_META = {
    "zh": "馆方没有提供作品信息：不要猜测作者、年代或标题。",
    "en": "The museum gave no catalogue information: do not guess the artist, date or title.",
}
_REQUEST_HEADER = {
    "zh": "观众的额外要求（在上面的规则与风格之内满足它）：",
    "en": "The visitor's additional request (meet it within the rules and voice above):",
}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256


@dataclass(frozen=True)
class Style:
    name: str
    title_zh: str
    title_en: str
    description: str
    prompts: dict[str, dict[str, str]]  # language -> {"system", "user"}
    sampling: Sampling = field(default_factory=Sampling)
    adapter: str = ""
    cache: bool = True
    max_chars: dict[str, int] = field(default_factory=dict)
    version: str = ""
    source: str = "builtin"

    @property
    def languages(self) -> list[str]:
        return [lang for lang in LANGUAGES if lang in self.prompts]

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": {"zh": self.title_zh, "en": self.title_en},
            "description": self.description,
            "languages": self.languages,
            "sampling": {
                "temperature": self.sampling.temperature,
                "top_p": self.sampling.top_p,
                "max_tokens": self.sampling.max_tokens,
            },
            "adapter": self.adapter or None,
            "cache": self.cache,
            "version": self.version,
            "source": self.source,
        }

    def system_prompt(self, language: str) -> str:
        return self.prompts[language]["system"].strip()

    def user_text(self, language: str, metadata: dict[str, str], request: str | None) -> str:
        """The text that follows the image: the style's instruction, grounded in the metadata."""
        labels = _META_LABELS[language]
        present = {k: str(v).strip() for k, v in metadata.items() if k in labels and str(v).strip()}
        if present:
            block = (
                _META_HEADER[language]
                + "\n"
                + "\n".join(f"- {labels[k]}: {present[k]}" for k in METADATA_FIELDS if k in present)
            )
        else:
            block = _NO_META[language]
        values = {k: present.get(k, "") for k in METADATA_FIELDS}
        values["metadata"] = block
        text = _render(self.prompts[language]["user"], values).strip()
        if "{metadata}" not in self.prompts[language]["user"]:
            text = block + "\n\n" + text
        if request and request.strip():
            text += "\n\n" + _REQUEST_HEADER[language] + "\n" + request.strip()
        return text


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _render(template: str, values: dict[str, str]) -> str:
    return template.format_map(_Blank(values))


def parse_style(raw: dict[str, Any], source: str) -> Style:
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{source}: 'name' must be lower-case letters, digits, '-' or '_'")
    prompts: dict[str, dict[str, str]] = {}
    for lang in LANGUAGES:
        section = raw.get(lang)
        if section is None:
            continue
        if not isinstance(section.get("system"), str) or not isinstance(section.get("user"), str):
            raise ValueError(f"{source}: [{lang}] needs 'system' and 'user' strings")
        try:
            _render(section["user"], {})
        except (ValueError, IndexError) as e:
            raise ValueError(f"{source}: [{lang}].user is not a valid template: {e}") from e
        prompts[lang] = {"system": section["system"], "user": section["user"]}
    if not prompts:
        raise ValueError(f"{source}: a style needs a [zh] or [en] section")
    s = raw.get("sampling", {})
    sampling = Sampling(
        temperature=float(s.get("temperature", 0.7)),
        top_p=float(s.get("top_p", 0.9)),
        max_tokens=int(s.get("max_tokens", 256)),
    )
    version = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
    return Style(
        name=name,
        title_zh=str(raw.get("title_zh", name)),
        title_en=str(raw.get("title_en", name)),
        description=str(raw.get("description", "")),
        prompts=prompts,
        sampling=sampling,
        adapter=str(raw.get("adapter", "")),
        cache=bool(raw.get("cache", True)),
        max_chars={k: int(v) for k, v in raw.get("max_chars", {}).items()},
        version=version,
        source=source,
    )


class StyleRegistry:
    def __init__(self, styles: dict[str, Style], default: str) -> None:
        if default not in styles:
            raise ValueError(f"default style {default!r} is not among {sorted(styles)}")
        self._styles = styles
        self.default = default

    @classmethod
    def load(cls, user_dir: Path | None = None, default: str = "curator") -> StyleRegistry:
        styles: dict[str, Style] = {}
        for entry in sorted(resources.files("gateway.styles").joinpath("builtin").iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".toml"):
                style = parse_style(tomllib.loads(entry.read_text(encoding="utf-8")), f"builtin/{entry.name}")
                styles[style.name] = style
        if user_dir is not None:
            if not user_dir.is_dir():
                raise ValueError(f"styles_dir {user_dir} is not a folder")
            for path in sorted(user_dir.glob("*.toml")):
                style = parse_style(tomllib.loads(path.read_text(encoding="utf-8")), str(path))
                styles[style.name] = style  # a user's file may override a shipped style
        return cls(styles, default)

    def names(self) -> list[str]:
        return sorted(self._styles)

    def all(self) -> list[Style]:
        return [self._styles[n] for n in self.names()]

    def get(self, name: str | None) -> Style:
        if name is None or name == "":
            return self._styles[self.default]
        style = self._styles.get(name)
        if style is None:
            raise InvalidRequest(
                f"Unknown style {name!r}. Valid styles: {', '.join(self.names())}.",
                param="style",
                code="unknown_style",
            )
        return style

    def __contains__(self, name: object) -> bool:
        return name in self._styles
