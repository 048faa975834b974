"""The optional second stage: a guard model (Qwen3Guard-Gen) behind an OpenAI-compatible API.

It judges the pair (prompt, generated text) and answers lines such as::

    Safety: Unsafe
    Categories: Sexual Content or Sexual Acts
    Refusal: No

Whatever goes wrong (timeout, refused connection, an error status, an answer that is not in
that shape) becomes a verdict, never an exception: ``fail_open`` decides whether such a text
is published or withheld.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from gateway.safety.verdict import Verdict

GuardLabel = Literal["Safe", "Unsafe", "Controversial"]
GUARD_CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
_SAFETY = re.compile(r"^\W*safety\W*:\s*\**\s*(safe|unsafe|controversial)\b", re.IGNORECASE | re.MULTILINE)
_CATEGORIES = re.compile(r"^\W*categor(?:y|ies)\W*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_REFUSAL = re.compile(r"^\W*refusal\W*:\s*\**\s*(yes|no)\b", re.IGNORECASE | re.MULTILINE)
_CANON = {c.lower(): c for c in GUARD_CATEGORIES}
_LABELS: dict[str, GuardLabel] = {"safe": "Safe", "unsafe": "Unsafe", "controversial": "Controversial"}


@dataclass
class GuardVerdict:
    action: Literal["allow", "block"]
    label: GuardLabel | None = None
    categories: list[str] = field(default_factory=list)
    refusal: bool | None = None
    error: str = ""  # "" when the guard answered in shape; else the failure, a metric label
    latency_s: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def public(self) -> dict[str, Any]:
        return {"action": self.action, "label": self.label, "categories": list(self.categories), "error": self.error}


def _on_failure(error: str, fail_open: bool, latency_s: float = 0.0) -> GuardVerdict:
    return GuardVerdict("allow" if fail_open else "block", error=error, latency_s=latency_s)


def parse_guard_output(text: str, *, fail_open: bool = False, block_controversial: bool = False) -> GuardVerdict:
    """Unsafe blocks; Controversial blocks only when asked (a Titian nude is often Controversial)."""
    found = _SAFETY.search(text or "")
    if found is None:
        return _on_failure("unparseable", fail_open)
    label = _LABELS[found.group(1).lower()]
    categories: list[str] = []
    cats = _CATEGORIES.search(text)
    if cats:
        for part in re.split(r"[,;，、]", cats.group(1)):
            name = part.strip(" *.`'\"")
            if name and name.lower() != "none":
                categories.append(_CANON.get(name.lower(), name))
    refusal_m = _REFUSAL.search(text)
    refusal = None if refusal_m is None else refusal_m.group(1).lower() == "yes"
    blocks = label == "Unsafe" or (label == "Controversial" and block_controversial)
    return GuardVerdict("block" if blocks else "allow", label, categories, refusal)


class GuardClient:
    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float,
        fail_open: bool,
        client: httpx.AsyncClient | None = None,
        *,
        block_controversial: bool = False,
        api_key: str = "",
    ) -> None:
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.fail_open = fail_open
        self.block_controversial = block_controversial
        self._owns_client = client is None
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def judge(self, prompt: str, response: str) -> GuardVerdict:
        """Never raises (but lets cancellation through)."""
        started = time.perf_counter()
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            "temperature": 0.0,
            "max_tokens": 64,
        }
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self.client.post(self.endpoint, json=body)
        except (TimeoutError, httpx.TimeoutException):
            return _on_failure("timeout", self.fail_open, time.perf_counter() - started)
        except httpx.HTTPError:
            return _on_failure("unavailable", self.fail_open, time.perf_counter() - started)
        latency = time.perf_counter() - started
        if reply.status_code != 200:
            return _on_failure(f"http_{reply.status_code}", self.fail_open, latency)
        try:
            content = reply.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            return _on_failure("bad_response", self.fail_open, latency)
        verdict = parse_guard_output(
            content if isinstance(content, str) else "",
            fail_open=self.fail_open,
            block_controversial=self.block_controversial,
        )
        verdict.latency_s = latency
        return verdict


def apply_guard(verdict: Verdict, guard: GuardVerdict, language: str = "zh") -> Verdict:
    """The word filter's verdict, withheld when the guard blocks; guard categories get a prefix."""
    if guard.action != "block" or verdict.withheld:
        return verdict
    categories = verdict.categories + ([f"guard:{c}" for c in guard.categories] or ["guard"])
    zh = language.lower().startswith("zh")
    if guard.failed:
        reason = (
            f"已拦截：安全审核模型未能给出结论（{guard.error}）。"
            if zh
            else f"Withheld: the guard model gave no usable verdict ({guard.error})."
        )
    else:
        names = ", ".join(guard.categories) or "-"
        reason = (
            f"已拦截：安全审核模型判定为不宜公开（{guard.label}；{names}）。"
            if zh
            else f"Withheld: the guard model judged the text {guard.label} ({names})."
        )
    return Verdict("block", categories, list(verdict.terms), "", reason)
