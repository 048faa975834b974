"""The verdict on one text: what was found, what happens to the text, and why."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.safety.matcher import Hit
from gateway.safety.normalize import MASK
from gateway.safety.wordlists import SEVERITY, Action

PROMPT_LEAK = "prompt_leak"
CANARY_TERM = "[canary]"  # what a verdict reports instead of the canary itself
PROMPT_LEAK_REASON = "prompt leak"


@dataclass
class Verdict:
    action: Action
    categories: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    text: str = ""  # the text to publish: masked where masked; "" when withheld
    reason: str = ""  # for the caller when the text is withheld

    def public(self) -> dict[str, Any]:
        return {"action": self.action, "categories": list(self.categories), "terms": list(self.terms)}

    @property
    def withheld(self) -> bool:
        return self.action in ("block", "regenerate")


def apply_masks(text: str, hits: Iterable[Hit]) -> str:
    out: list[str] = []
    done = 0  # text before this index is in out
    for h in sorted(hits, key=lambda h: h.start):
        start = max(h.start, done)
        if h.end > start:
            out += (text[done:start], MASK * (h.end - start))
            done = h.end
    return "".join(out) + text[done:] if out else text


def _reason(action: Action, categories: list[str], language: str) -> str:
    if PROMPT_LEAK in categories:
        return PROMPT_LEAK_REASON
    names = ", ".join(c for c in categories if c != PROMPT_LEAK)
    if language == "zh":
        if action == "block":
            return f"已拦截：生成的文字含有不宜公开的词语（类别：{names}）。"
        return f"生成的文字含有不宜公开的词语（类别：{names}），需按更严格的要求重写一次。"
    if action == "block":
        return f"Withheld: the generated text contained terms that may not be published (categories: {names})."
    return (
        f"The generated text contained terms that may not be published (categories: {names}); "
        "it is to be written again once under a stricter instruction."
    )


def build_verdict(
    hits: Iterable[Hit], text: str, action_of: Callable[[str], Action], language: str, retried: bool
) -> Verdict:
    """``text`` is already masked; ``retried``: this was the one retry, so 'regenerate' blocks."""
    categories: list[str] = []
    terms: list[str] = []
    action: Action = "allow"
    for h in hits:
        if h.category not in categories:
            categories.append(h.category)
        if h.term not in terms:
            terms.append(h.term)
        a = action_of(h.category)
        if SEVERITY[a] > SEVERITY[action]:
            action = a
    if action == "regenerate" and retried:
        action = "block"
    if action in ("block", "regenerate"):
        return Verdict(action, categories, terms, "", _reason(action, categories, language))
    return Verdict(action, categories, terms, text)
