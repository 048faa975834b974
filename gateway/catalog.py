"""Which model names a client may ask for: the base model, its LoRA adapters, and style aliases.

A client that can only set ``model`` picks a style with ``<model>:<style>``; adapters are whatever
the model server lists besides the base model (read from its /v1/models, briefly cached). ``qwen-vl``,
the name the documentation and the GPU presets use, always means the base model, whatever the model
server calls it: a client written against production also runs against ``make run``'s tiny model.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.errors import HuayuError, NotFound
from gateway.styles import StyleRegistry
from gateway.upstream import Upstream

DOCUMENTED_NAME = "qwen-vl"


class ModelCatalog:
    def __init__(self, upstream: Upstream, base: str, styles: StyleRegistry, ttl_s: float = 10.0) -> None:
        self.upstream = upstream
        self.base = base
        self.styles = styles
        self.ttl_s = ttl_s
        self._listed: list[dict[str, Any]] = []
        self._at = 0.0
        self._missed_at = 0.0

    async def upstream_models(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._at > self.ttl_s:
            self._listed = await self.upstream.models()
            self._at = time.monotonic()
        return self._listed

    async def adapters(self) -> set[str]:
        try:
            listed = await self.upstream_models()
        except HuayuError:
            return set()
        return {str(m["id"]) for m in listed if m.get("id") != self.base}

    async def resolve(self, name: str) -> tuple[str | None, str | None]:
        """(style, adapter) that a model name asks for; NotFound naming the valid forms."""
        head, _, style = name.partition(":")
        if style and style not in self.styles:
            self.styles.get(style)  # raises the unknown-style error listing the valid ones
        if head == self.base or head == DOCUMENTED_NAME:
            return (style or None), None
        if head in await self.adapters():
            return (style or None), head
        if time.monotonic() - self._missed_at > 1.0:
            # perhaps an adapter loaded moments ago: ask the model server again (at most once a second,
            # so a stream of unknown names cannot turn into a stream of /v1/models calls)
            self._missed_at = time.monotonic()
            self._at = 0.0
            if head in await self.adapters():
                return (style or None), head
        raise NotFound(
            f"The model {name!r} does not exist. Use {self.base!r}, an adapter the model server lists, "
            f"or '<model>:<style>' with a style among: {', '.join(self.styles.names())}.",
            param="model",
            code="model_not_found",
        )

    def aliases(self) -> list[str]:
        return [f"{self.base}:{s}" for s in self.styles.names()]
