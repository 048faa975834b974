"""Output safety: a Chinese-aware word filter (also on streams), a canary, and a guard model.

The pipeline's use, top to bottom::

    safety = SafetyFilter.from_settings(settings)            # once, at start-up
    system_prompt += safety.canary_instruction(language)     # every request
    verdict = safety.check(text, language)                   # or safety.stream(language) per stream
    if verdict.action == "regenerate":                       # once, then it blocks
        text = generate(extra_system=safety.strict_instruction(language))
        verdict = safety.check(text, language, retried=True)
    if guard: verdict = apply_guard(verdict, await guard.judge(prompt, verdict.text), language)
    publish verdict.text, or safety.fallback_text(language) with verdict.reason when withheld
"""

from gateway.safety.cli import filter_main
from gateway.safety.filter import SafetyFilter
from gateway.safety.guard import GUARD_CATEGORIES, GuardClient, GuardVerdict, apply_guard, parse_guard_output
from gateway.safety.metrics import SafetyMetrics
from gateway.safety.normalize import MASK, normalize
from gateway.safety.stream import StreamFilter
from gateway.safety.verdict import PROMPT_LEAK, PROMPT_LEAK_REASON, Verdict
from gateway.safety.wordlists import ACTIONS, Action, WordListError, WordLists, load_wordlists

__all__ = [
    "ACTIONS",
    "GUARD_CATEGORIES",
    "MASK",
    "PROMPT_LEAK",
    "PROMPT_LEAK_REASON",
    "Action",
    "GuardClient",
    "GuardVerdict",
    "SafetyFilter",
    "SafetyMetrics",
    "StreamFilter",
    "Verdict",
    "WordListError",
    "WordLists",
    "apply_guard",
    "filter_main",
    "load_wordlists",
    "normalize",
    "parse_guard_output",
]
